"""The options behind config/hd/bnn_vgg7_cifar10.yml (Anderson & Berg's BinaryNet VGG-7, docs/hd-geometry.md#binarynet-vgg-7):
model.padding, model.bn_scale, model.last_bn_shift, optim.lr_exp_decay, optim.grad_clip. Their
defaults leave every existing config unchanged, digests included."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bnnrepro.config import ConfigError, OptimConfig, load_experiment, skip_reason
from bnnrepro.data.batches import BatchLoader
from bnnrepro.data.prepared import load_dataset, write_prepared
from bnnrepro.data.sources import SOURCES
from bnnrepro.engine.train import fit, train_one_epoch
from bnnrepro.models import build_model
from bnnrepro.models.common import ShiftOnlyBatchNorm1d, ShiftOnlyBatchNorm2d
from bnnrepro.optim import build_optimizer, build_optimizers
from standins import cifar10_archive
from test_train import tiny_mnist

REPO = Path(__file__).resolve().parents[1]
HD_CONFIG = REPO / "config" / "hd" / "bnn_vgg7_cifar10.yml"
RWTH = REPO / "config" / "rwth"

def model_cfg(path: Path, **changes):
    return dataclasses.replace(load_experiment(path).model, **changes)


def vgg(**changes) -> nn.Module:
    torch.manual_seed(0)
    return build_model(model_cfg(RWTH / "binary_cifar10.yml", width=0.125, **changes), 3, 10, 32)


# ----------------------------------------------------------------------------- defaults unchanged

def test_new_keys_change_the_digest_only_when_set():
    path = RWTH / "binary_mnist.yml"
    base = load_experiment(path).digest()
    assert load_experiment(path, {"model.bn_scale": True, "optim.grad_clip": 0.0, "optim.lr_exp_decay": 1.0,
                                  "model.padding": "rwth", "model.last_bn_shift": False,
                                  "model.sign_rule": "round_half_even",
                                  "train.tie_break": "first_max"}).digest() == base
    for key, value in [("model.bn_scale", False), ("model.last_bn_shift", True), ("optim.grad_clip", 1.0),
                       ("optim.lr_exp_decay", 0.98), ("model.sign_rule", "zero_positive"), ("train.tie_break", "topk")]:
        assert load_experiment(path, {key: value}).digest() != base, key


def test_default_models_are_the_rwth_ones():
    model = vgg()
    assert isinstance(model.bn1, nn.BatchNorm2d) and model.bn1.affine and model.bn9.affine is False
    assert model.conv1.padding == (0, 0) and model.conv2.same_replicate and model.fc1.in_features == 64 * 9


# ---------------------------------------------------------------------------------------- model

def test_same_zeros_padding_gives_the_binarynet_vgg7():
    model = vgg(padding="same_zeros")
    convs = [getattr(model, f"conv{i}") for i in range(1, 7)]
    assert all(c.padding == (1, 1) and not c.same_replicate for c in convs)
    assert model.fc1.in_features == 64 * 4 * 4  # 512a * 16: 32 -> 16 -> 8 -> 4
    sizes = []
    handles = [c.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1])) for c in convs]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    for h in handles:
        h.remove()
    assert sizes == [32, 32, 16, 16, 8, 8]
    # zero padding: a conv of a constant image is smaller at the border than inside
    conv = model.conv1
    out = conv(torch.ones(1, 3, 32, 32)).detach()
    expected = F.conv2d(torch.ones(1, 3, 32, 32), torch.where(conv.weight >= 0, 1.0, -1.0), padding=1)
    torch.testing.assert_close(out, expected)


def test_full_width_binarynet_vgg7_has_8192_fc1_inputs():
    cfg = load_experiment(HD_CONFIG).model
    torch.manual_seed(0)
    model = build_model(cfg, 3, 10, 32)
    assert model.fc1.in_features == 8192
    assert [getattr(model, f"conv{i}").weight[0].numel() for i in range(1, 7)] == [27, 1152, 1152, 2304, 2304, 4608]
    assert [m.precision for m in (model.conv1, model.fc3)] == ["binary", "binary"]  # first and last binary
    assert all(getattr(model, f"conv{i}").bias is None for i in range(1, 7))


def test_unknown_padding_is_rejected_naming_the_key():
    with pytest.raises(ValueError, match="model.padding"):
        vgg(padding="reflect")
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="model.padding"):
        build_model(model_cfg(RWTH / "binary_mnist.yml", padding="same_zeros"), 1, 10, 28)


def test_bn_without_scale_has_a_shift_and_no_gamma():
    model = vgg(bn_scale=False)
    for bn in (model.bn1, model.bn6):
        assert isinstance(bn, ShiftOnlyBatchNorm2d) and bn.weight is None and isinstance(bn.bias, nn.Parameter)
    assert isinstance(model.bn7, ShiftOnlyBatchNorm1d)
    assert not any(k.endswith("weight") and k.startswith("bn") for k in model.state_dict())
    assert model.bn9.affine is False and model.bn9.bias is None  # the output BN is its own option

    bn = ShiftOnlyBatchNorm2d(3).eval()
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
    x = torch.randn(2, 3, 4, 4)
    expected = (x - bn.running_mean.view(1, 3, 1, 1)) / (bn.running_var.view(1, 3, 1, 1) + bn.eps).sqrt() \
        + bn.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(bn(x), expected)
    bn.train()(x).sum().backward()
    assert bn.bias.grad is not None


def test_last_bn_shift():
    model = vgg(last_bn_shift=True)
    assert isinstance(model.bn9, ShiftOnlyBatchNorm1d) and model.bn9.bias.shape == (10,)
    assert isinstance(model.bn7, nn.BatchNorm1d) and model.bn7.affine  # the others keep their gamma
    torch.manual_seed(0)
    lenet = build_model(model_cfg(RWTH / "binary_mnist.yml", last_bn_shift=True), 1, 10, 28)
    assert isinstance(lenet.bn4, ShiftOnlyBatchNorm1d)


def test_model_keys_are_type_checked(tmp_path):
    text = HD_CONFIG.read_text().replace("bn_scale: false", "bn_scale: no_gamma")
    (tmp_path / "bad.yml").write_text(text)
    with pytest.raises(ConfigError, match="model.bn_scale"):
        load_experiment(tmp_path / "bad.yml")


# ------------------------------------------------------------------------------------ optimizer

@pytest.mark.parametrize("changes, match", [({"lr_exp_decay": 0.0}, "lr_exp_decay"),
                                            ({"lr_exp_decay": 1.5}, "lr_exp_decay"),
                                            ({"grad_clip": -1.0}, "grad_clip")])
def test_optimizer_options_are_validated(changes, match):
    with pytest.raises(ValueError, match=match):
        build_optimizer(OptimConfig(name="adam", lr=1e-3, **changes), nn.Linear(2, 2))


def _max_grad_seen(clip: float) -> float:
    """Largest |gradient| the optimizer's step saw during one epoch of the binary LeNet5."""
    data = tiny_mnist()
    cfg = load_experiment(RWTH / "binary_mnist.yml", {"optim.grad_clip": clip, "data.val_size": 100})
    torch.manual_seed(0)
    model = build_model(cfg.model, 1, 10, 28)
    optimizer = build_optimizers(cfg, model)
    seen = []
    step = optimizer.step
    optimizer.step = lambda: (seen.append(max(p.grad.abs().max().item() for p in model.parameters()
                                              if p.grad is not None)), step())[1]
    loader = BatchLoader(data.train_images, data.train_labels, 50, max_value=255)

    class Bar:
        def update(self, n):
            pass

    train_one_epoch(model, loader, optimizer, cfg, 1, Bar())
    return max(seen)


def test_gradients_are_clipped_element_wise_before_the_step():
    assert _max_grad_seen(0.0) > 1e-3  # without clipping some gradient is larger than the clip below
    assert _max_grad_seen(1e-3) <= torch.tensor(1e-3).item()  # 1e-3 rounded to float32


# ---------------------------------------------------------------------------- the config itself

def test_hd_config_matches_the_paper_recipe():
    cfg = load_experiment(HD_CONFIG, profile="paper")
    assert (cfg.data.dataset, cfg.data.batch_size, cfg.data.val_size) == ("cifar10", 50, 500)
    assert not cfg.data.flip and cfg.data.crop_padding == 0  # no augmentation
    assert cfg.data.mean == [0.5] * 3 and cfg.data.std == [0.5] * 3  # x * 2/255 - 1
    m = cfg.model
    assert (m.arch, m.weights, m.activations, m.layer_order, m.bias) == ("vggnet7", "binary", "binary", "CPBA", False)
    assert (m.padding, m.bn_scale, m.last_bn_shift, m.first_layer_fp, m.last_layer_fp) == \
        ("same_zeros", False, True, False, False)
    o = cfg.optim
    assert (o.name, o.lr, o.grad_clip) == ("adam", 1e-3, 1.0) and o.lr_milestones == []
    assert (cfg.train.epochs, cfg.train.loss, cfg.train.clip_latent) == (500, "squared_hinge", 1.0)
    reason = skip_reason(HD_CONFIG, "quick")
    assert "GPU" in reason and "estimate" in reason
    assert skip_reason(HD_CONFIG, "paper") is None


def test_hd_config_trains_one_epoch_on_cifar_format_data(tmp_path):
    raw = tmp_path / "raw" / "cifar10"
    raw.mkdir(parents=True)
    cifar10_archive(raw, per_file=4)  # 20 train, 4 test images
    write_prepared("cifar10", SOURCES["cifar10"].parse(raw), tmp_path / "prepared" / "cifar10")
    torch.set_num_threads(2)
    overrides = {"train.epochs": 1, "data.batch_size": 10, "data.val_size": 5, "data.eval_batch_size": 10}
    cfg = load_experiment(HD_CONFIG, overrides, profile="paper")
    before = torch.are_deterministic_algorithms_enabled()
    try:
        result = fit(cfg, load_dataset(tmp_path / "prepared" / "cifar10"), torch.device("cpu"), tmp_path / "ckpt.pt",
                     progress=False)
    finally:
        torch.use_deterministic_algorithms(before)
    assert len(result.history) == 1 and result.test["n"] == 4
    assert result.history[0]["lr"] == 1e-3
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))
    assert result.model.fc1.in_features == 8192
    latent = [result.model.conv1.weight, result.model.fc1.weight]
    assert all(w.abs().max() <= 1.0 for w in latent)  # latent weights clipped after the step
