"""train.memory_efficient (docs/memory.md): binary weights updated inside backward, each as soon as its
gradient is complete, which is then freed, and sign activations saved for backward as bits. The same
runs as the plain mode, byte for byte: weights, optimizer state, flip counts, metrics and history, for
flip, Bop and SGDAT on an MLP and a conv net; the same gradients with 1-bit saved activations."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bnnrepro.analysis.training_state import METHODS, measure_training_memory, method_config
from bnnrepro.config import ConfigError, load_experiment
from bnnrepro.engine.distributed import Ranks
from bnnrepro.engine.train import fit
from bnnrepro.models import build_model
from bnnrepro.nn.layers import compact_saved_activations, quantized_layers
from bnnrepro.nn.saved_bits import conv2d_freeing_input, torch_layers_saving_less
from bnnrepro.optim import build_optimizers
from bnnrepro.optim.base import PerParameterOptimizer
from bnnrepro.optim.flip import FlipOptimizer
from test_published_options import binsfo, tiny
from test_train import CPU, assert_same_state, config, tiny_mnist, without_timing

REPO = Path(__file__).resolve().parents[1]

# the binary-weight methods on BinSFO's MLP (narrowed; no full-precision parameter, one regime) ...
MLP_METHODS = {
    "flip": {"optim.name": "flip", "optim.args": {"mask": "ewm", "scheduler": "scaled_gaussian", "sigma0": 0.01,
                                                  "seed": 1}},
    "bop": {"optim.name": "bop", "optim.args": {"threshold": 1e-6}},
    "sgdat": {"optim.name": "sgdat", "optim.lr": 1e-2, "optim.momentum": 0.9, "optim.args": {"threshold": 1e-7}},
}
# ... and on binary LeNet5, whose BatchNorm and biases Adam trains after backward (a second regime)
FP = {"optim.momentum": 0.0, "optim_fp.name": "adam", "optim_fp.lr": 1e-3}
CONV_METHODS = {
    "flip": {**FP, "optim.name": "flip", "optim.lr": 0.05, "optim.args": {"mask": "emp", "scheduler": "const",
                                                                          "seed": 1}},
    "bop": {**FP, "optim.name": "bop", "optim.lr": 1e-3, "optim.args": {"threshold": 1e-6}, "optim.grad_clip": 0.01},
    "sgdat": {**FP, "optim.name": "sgdat", "optim.lr": 1e-2, "optim.args": {"threshold": 1e-7},
              "optim.reset_each_epoch": True},
}


def assert_same_nested(a, b, where="state"):
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_nested(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_nested(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    else:
        assert a == b, where


def assert_same_runs(plain_cfg, dataset, tmp_path: Path):
    efficient_cfg = dataclasses.replace(plain_cfg, train=dataclasses.replace(plain_cfg.train, memory_efficient=True))
    plain = fit(plain_cfg, dataset, CPU, tmp_path / "plain.pt", progress=False)
    efficient = fit(efficient_cfg, dataset, CPU, tmp_path / "efficient.pt", progress=False)
    assert_same_state(plain.model.state_dict(), efficient.model.state_dict())
    assert without_timing(plain.history) == without_timing(efficient.history)
    assert (plain.test, plain.best_epoch, plain.best_val_top1) == (efficient.test, efficient.best_epoch,
                                                                    efficient.best_val_top1)
    last = [torch.load(tmp_path / f"{mode}.pt", weights_only=True) for mode in ("plain", "efficient")]
    assert_same_nested(last[0]["optimizer"], last[1]["optimizer"])
    assert_same_state(last[0]["model"], last[1]["model"])  # after the last epoch, not only the best one
    return efficient


@pytest.mark.parametrize("method", sorted(MLP_METHODS))
@pytest.mark.parametrize("pack", [False, True])
def test_mlp_trains_byte_for_byte_as_the_plain_mode(method, pack, tmp_path):
    cfg = binsfo("binary", **MLP_METHODS[method], **{"train.pack_weights": pack})
    run = assert_same_runs(cfg, tiny(), tmp_path)
    assert all(row["flips"] > 0 for row in run.history)


@pytest.mark.parametrize("method", sorted(CONV_METHODS))
@pytest.mark.parametrize("pack", [False, True])
def test_conv_net_trains_byte_for_byte_as_the_plain_mode(method, pack, tmp_path):
    cfg = config(**CONV_METHODS[method], **{"train.epochs": 1, "train.pack_weights": pack})
    run = assert_same_runs(cfg, tiny_mnist(), tmp_path)
    assert run.history[0]["flips"] > 0


def test_packed_weights_are_float_one_layer_at_a_time(monkeypatch, tmp_path):
    """Packed and memory-efficient: at every binary layer's forward and every update inside backward, the
    weight in use is the only binary weight held as floats."""
    cfg = config(**CONV_METHODS["flip"], **{"train.epochs": 1, "train.max_steps": 2, "train.memory_efficient": True,
                                            "train.pack_weights": True})
    unpacked, updated = [], []
    weights = []

    def count(*_):
        unpacked.append(sum(w.numel() > 0 for w in weights))

    step_parameter = PerParameterOptimizer.step_parameter

    def counting(self, p, free_grad=False):
        assert p.numel() > 0
        count()
        updated.append(id(p))
        step_parameter(self, p, free_grad)

    monkeypatch.setattr(PerParameterOptimizer, "step_parameter", counting)
    build = build_optimizers

    def building(cfg, model):  # the model's binary weights, and a hook after every training forward of theirs
        for layer in quantized_layers(model):
            weights.append(layer.weight)
            layer.register_forward_hook(lambda module, args, out: count() if module.training else None)
        return build(cfg, model)

    monkeypatch.setattr("bnnrepro.engine.train.build_optimizers", building)
    fit(cfg, tiny_mnist(), CPU, tmp_path / "a.pt", progress=False)
    n = len(weights)
    assert n >= 3 and len(updated) == 2 * n and set(unpacked) == {1}


def test_gradients_of_binary_weights_never_coexist(monkeypatch, tmp_path):
    cfg = config(**CONV_METHODS["flip"], **{"train.epochs": 1, "train.max_steps": 2, "train.memory_efficient": True})
    alive, updated = [], []
    step_parameter = PerParameterOptimizer.step_parameter

    def counting(self, p, free_grad=False):
        alive.append(sum(q.grad is not None for g in self.param_groups for q in g["params"]))
        updated.append(id(p))
        step_parameter(self, p, free_grad)
        assert free_grad and p.grad is None

    monkeypatch.setattr(PerParameterOptimizer, "step_parameter", counting)
    stepped = []
    monkeypatch.setattr(FlipOptimizer, "step", lambda self, closure=None: stepped.append(1))
    run = fit(cfg, tiny_mnist(), CPU, tmp_path / "a.pt", progress=False)
    assert alive and set(alive) == {1}  # the weight being updated holds the only binary gradient
    # every binary weight once per step (2 steps), and nothing left for step() after backward
    assert sorted(updated) == sorted(2 * [id(layer.weight) for layer in quantized_layers(run.model)]) and not stepped


def test_memory_efficient_needs_a_binary_weight_optimizer_and_one_process(tmp_path):
    cfg = config(**{"train.memory_efficient": True})  # latent SGD
    with pytest.raises(ValueError, match="memory_efficient"):
        build_optimizers(cfg, build_model(cfg.model, 1, 10, 28))
    cfg = config(**CONV_METHODS["bop"], **{"train.memory_efficient": True})
    with pytest.raises(ConfigError, match="memory_efficient"):
        fit(cfg, tiny_mnist(), CPU, tmp_path / "a.pt", progress=False, ranks=Ranks(rank=0, world=2))


def test_digest_counts_memory_efficient_only_when_set():
    plain = config(**CONV_METHODS["bop"])
    explicit = config(**CONV_METHODS["bop"], **{"train.memory_efficient": False})
    efficient = config(**CONV_METHODS["bop"], **{"train.memory_efficient": True})
    assert plain.digest() == explicit.digest() != efficient.digest()


def gradients(model, x, bits: bool) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with compact_saved_activations(model) if bits else contextlib.nullcontext():
        loss = model(x).square().mean()
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ["binarynet", "lenet5"])
def test_compact_saved_activations_give_the_same_gradients(arch):
    # BinaryNet (narrowed): Hardtanh, then the hardtanh STE, before every binary layer; LeNet5: round_half_even
    if arch == "binarynet":
        cfg = load_experiment(REPO / "config" / "sgdat" / "binarynet_cifar10.yml", {"model.width": 0.0625})
        shape = (3, 8, 8)
    else:
        cfg, shape = config(), (1, 28, 28)
    torch.manual_seed(0)
    model = build_model(cfg.model, shape[0], 10, shape[1]).to(memory_format=torch.channels_last).train()
    x = torch.randn(6, *shape).to(memory_format=torch.channels_last)
    plain, bits = gradients(model, x, False), gradients(model, x, True)
    assert_same_state(plain, bits)
    assert not any(getattr(m, "save_bits", False) for m in model.modules())  # switched off again


def test_memory_efficient_step_holds_fewer_activations_and_gradients():
    cfg = config()
    flip = METHODS["flip (BWS/BinSFO), packed weights"]
    peaks = {}
    for efficient in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg.model, 1, 10, 28)
        method = dataclasses.replace(flip, memory_efficient=efficient)
        peaks[efficient] = measure_training_memory(model, method_config(cfg, method, True), (1, 28, 28), 50)
    plain, efficient = (peaks[k]["peak_step_components"] for k in (False, True))
    assert sum(plain.values()) == peaks[False]["peak_step"] and sum(efficient.values()) == peaks[True]["peak_step"]
    assert efficient["activations"] < plain["activations"] and peaks[True]["peak_step"] < peaks[False]["peak_step"]


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
                                  nn.MaxPool2d((2, 3), stride=1)])
def test_max_pooling_saving_offsets_matches_torch(pool):
    x = torch.randint(-3, 4, (2, 3, 7, 9)).float()  # many ties: the first maximum must win, as in torch
    x[0, 0, 0, 0] = float("nan")
    for layout in (torch.contiguous_format, torch.channels_last):
        grads = []
        for compact in (False, True):
            leaf = x.clone().to(memory_format=layout).requires_grad_()
            with torch_layers_saving_less(pool) if compact else contextlib.nullcontext():
                out = pool(leaf)
            out.backward(torch.arange(out.numel(), dtype=torch.float32).reshape(out.shape))
            grads.append((out, leaf.grad))
        (out, grad), (compact_out, compact_grad) = grads
        assert torch.equal(out.nan_to_num(), compact_out.nan_to_num()) and torch.equal(grad, compact_grad)
        assert grad.stride() == compact_grad.stride()
    assert "forward" not in vars(pool)  # restored


def test_hardtanh_saving_window_matches_torch():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 1.0, 3.0, float("nan")])
    grads = []
    for compact in (False, True):
        leaf = x.clone().requires_grad_()
        act = nn.Hardtanh()
        with torch_layers_saving_less(act) if compact else contextlib.nullcontext():
            out = act(leaf)
        out.backward(-torch.ones_like(out))
        grads.append((out, leaf.grad))
    assert torch.equal(grads[0][0].nan_to_num(), grads[1][0].nan_to_num())
    assert torch.equal(grads[0][1], grads[1][1]) and not grads[1][1].signbit()[[0, 1, 4, 5]].any()  # +0.0


@pytest.mark.parametrize("kernel, stride, padding, bias", [(3, 1, 1, False), (3, 2, 1, True), (1, 1, 0, False),
                                                        (1, 2, 0, True)])
@pytest.mark.parametrize("layout, weight_layout", [(torch.contiguous_format,) * 2, (torch.channels_last,) * 2,
                                                   (torch.channels_last, torch.contiguous_format)])
def test_conv_freeing_its_input_matches_torch(kernel, stride, padding, bias, layout, weight_layout):
    """The same output and the same three gradients, bit for bit and in the same memory layout, as F.conv2d:
    with +-1 inputs and weights (the binary layers') and with float ones; a contiguous 1x1 weight (whose
    strides fit both layouts, as unpacked ones have) under a channels_last input included."""
    gen = torch.Generator().manual_seed(0)
    for signs in (True, False):
        x = torch.randn(4, 8, 9, 9, generator=gen)
        w = torch.randn(16, 8, kernel, kernel, generator=gen)
        x, w = (x.sign(), w.sign()) if signs else (x, w)
        b = torch.randn(16, generator=gen) if bias else None
        side = (9 + 2 * padding - kernel) // stride + 1
        grad_out = torch.randn(4, 16, side, side, generator=gen).to(memory_format=layout)
        results = []
        for conv in (F.conv2d, conv2d_freeing_input):
            leaves = [x.clone().to(memory_format=layout), w.clone().to(memory_format=weight_layout)]
            leaves = [t.requires_grad_() for t in leaves + ([b.clone()] if bias else [])]
            out = conv(*leaves[:2], leaves[2] if bias else None, (stride, stride), (padding, padding), (1, 1), 1)
            out.backward(grad_out)
            results.append([out] + [leaf.grad for leaf in leaves])
        for ours, torchs in zip(results[1], results[0]):
            assert torch.equal(ours, torchs) and ours.stride() == torchs.stride()


def test_a_binary_conv_with_a_padding_layer_gives_the_plain_gradients():
    """padding_mode other than zeros pads in a layer of its own: torch's conv backward, the same gradients."""
    from bnnrepro.nn.layers import QuantConv2d

    conv = QuantConv2d(2, 3, 3, padding=1, bias=False).to(torch.float64)
    conv.padding_mode = "circular"
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).sign()
    grads = []
    for compact in (False, True):
        conv.weight.grad = None
        leaf = x.clone().requires_grad_()
        with compact_saved_activations(conv) if compact else contextlib.nullcontext():
            conv(leaf).square().sum().backward()
        grads.append((leaf.grad, conv.weight.grad))
    assert all(torch.equal(a, b) for a, b in zip(*grads))


FINETUNE = REPO / "config" / "binsfo"


@pytest.mark.parametrize("model", ["adambnn", "bcdnet"])
@pytest.mark.parametrize("recipe", ["binary", "bop"])
def test_recomputed_blocks_train_byte_for_byte_as_the_plain_mode(model, recipe, tmp_path):
    """ReActNet-A and BCDNet name their blocks: the memory-efficient step recomputes them in backward."""
    from test_finetune_models import tiny_dataset

    cfg = load_experiment(FINETUNE / f"finetune_{model}.yml", recipe=f"{FINETUNE / 'finetune_optimizers.yml'}:{recipe}",
                          profile="paper", overrides={"data.dataset": "oxford-pets", "data.batch_size": 8,
                                                      "data.eval_batch_size": 8, "model.width": 0.125,
                                                      "model.pretrained": "", "train.epochs": 1})
    run = assert_same_runs(cfg, tiny_dataset("oxford-pets"), tmp_path)
    assert run.history[0]["flips"] > 0 or recipe == "bop"  # Bop's threshold holds every sign in one tiny epoch


class Blocks(nn.Module):
    """Two conv blocks with running-statistics BatchNorm, recomputed in backward when asked."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU())
                                    for _ in range(2))
        self.calls = 0
        for block in self.blocks:  # counts the runs of each block's first layer
            block[0].register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x.mean((2, 3))

    def recompute_blocks(self):
        return list(self.blocks)


def test_recomputation_gives_the_same_gradients_and_batchnorm_statistics():
    from bnnrepro.nn.recompute import recomputed_blocks

    results = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = Blocks().train()
        x = torch.randn(4, 2, 5, 5)
        with recomputed_blocks(model) if recompute else contextlib.nullcontext():
            model(x).square().sum().backward()
        results.append((model.calls, {n: p.grad for n, p in model.named_parameters()}, model.state_dict()))
        assert all("forward" not in vars(block) for block in model.blocks)  # the class's forward again
    (plain_calls, plain_grads, plain_state), (calls, grads, state) = results
    assert (plain_calls, calls) == (2, 4)  # each block ran again in backward
    assert_same_state(plain_grads, grads)
    assert_same_state(plain_state, state)  # running statistics updated once, num_batches_tracked 1
    assert int(state["blocks.0.1.num_batches_tracked"]) == 1
