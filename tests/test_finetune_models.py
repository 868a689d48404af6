"""ReActNet-A (AdamBNN) and BCDNet for BinSFO's fine-tuning: shapes, weight scales, parameter split, and
one epoch of each algorithm through the project's training loop from an official-layout checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bnnrepro.config import load_experiment
from bnnrepro.data.prepared import Dataset
from bnnrepro.engine.train import fit
from bnnrepro.models import ModelConfig, build_model
from bnnrepro.nn.layers import QuantConv2d, quantized_layers
from bnnrepro.nn.quantizers import quantize_weight
from bnnrepro.optim import split_parameters

from standins import WIDTH, write_official

CONFIGS = Path(__file__).resolve().parents[1] / "config" / "binsfo"
RECIPES = CONFIGS / "finetune_optimizers.yml"
ARCHS = ["reactnet_a", "bcdnet"]


@pytest.mark.parametrize("arch", ARCHS)
def test_full_size_logits_at_256(arch):
    """The real network (width 1, 28 M / 44 M binary weights) on 256 x 256 images, 101 classes."""
    model = build_model(ModelConfig(arch=arch), 3, 101, 256)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 256, 256)).shape == (2, 101)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", [32, 64])
def test_small_images_and_width(arch, size):
    model = build_model(ModelConfig(arch=arch, width=WIDTH), 3, 7, size)
    assert model(torch.randn(3, 3, size, size)).shape == (3, 7)
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model(ModelConfig(arch=arch, width=WIDTH), 3, 7, size + 16)


@pytest.mark.parametrize("arch", ARCHS)
def test_binary_convs_are_the_quantized_parameters(arch):
    """split_parameters (module type) picks exactly the convs BinSFO picks by the word "binary" in their names."""
    model = build_model(ModelConfig(arch=arch, width=WIDTH), 3, 5, 32)
    quantized, real = split_parameters(model)
    by_name = {n for n, p in model.named_parameters() if "binary" in n}
    assert {id(p) for p in quantized} == {id(p) for n, p in model.named_parameters() if n in by_name}
    assert len(quantized) + len(real) == len(list(model.parameters()))
    assert not any(isinstance(m, QuantConv2d) for m in (model.feature[0].conv1, model.fc[0]))
    # batch statistics in evaluation too (docs/binsfo.md#batch-statistics-batchnorm): no running statistics anywhere
    assert not any(n.endswith("running_mean") for n, _ in model.named_buffers())


@pytest.mark.parametrize("scale", ["tensor", "channel"])
def test_weight_scale_forward_and_detached_gradient(scale):
    w = torch.tensor([[0.5, -0.1], [0.2, 0.0]], requires_grad=True)
    alpha = w.detach().abs().mean() if scale == "tensor" else w.detach().abs().mean(1, keepdim=True)
    out = quantize_weight(w, "binary", scale)
    assert torch.equal(out, alpha * torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
    g = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out.backward(g)
    assert torch.equal(w.grad, g)  # not alpha * g: alpha is detached and the STE passes g unchanged
    with pytest.raises(ValueError):
        quantize_weight(w, "ternary", scale)


def tiny_dataset(name: str, classes: int = 3) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    images = lambda n: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)  # noqa: E731
    labels = lambda n: torch.arange(n) % classes  # noqa: E731
    return Dataset(name=name, num_classes=classes, max_value=255, train_images=images(16), train_labels=labels(16),
                   test_images=images(8), test_labels=labels(8), sha256="0" * 64)


@pytest.mark.parametrize("recipe", ["binary", "real", "bop", "adam"])
@pytest.mark.parametrize("model", ["adambnn", "bcdnet"])
def test_one_epoch_of_each_algorithm_from_the_official_layout(tmp_path, model, recipe):
    state = write_official(model, tmp_path)
    cfg = load_experiment(CONFIGS / f"finetune_{model}.yml", recipe=f"{RECIPES}:{recipe}", profile="paper",
                          overrides={"data.dataset": "oxford-pets", "data.batch_size": 8, "data.eval_batch_size": 8,
                                     "model.width": WIDTH, "train.epochs": 1})
    result = fit(cfg, tiny_dataset("oxford-pets"), torch.device("cpu"), tmp_path / "ckpt.pt", progress=False,
                 pretrained_dir=tmp_path)
    assert result.extra["pretrained"]["loaded"] > 0 and len(result.extra["pretrained"]["sha256"]) == 64
    row = result.history[0]
    assert math.isfinite(row["train_loss"]) and "flips" in row
    binary = {n: layer.weight for n, layer in result.model.named_modules() if layer in quantized_layers(result.model)}
    if recipe in ("binary", "bop"):  # binary-weight methods keep +-1 weights (the pretrained signs, then flips)
        assert all(set(w.unique().tolist()) <= {-1.0, 1.0} for w in binary.values())
    else:  # latent methods: fine-tuned latent weights
        assert any(not torch.equal(w, state[f"{n}.weight"].clamp(-1, 1)) for n, w in binary.items())
    if recipe != "adam":  # BinSFO: binary weights at 0.1 x lr, both scaled by sqrt(batch / 96) (docs/binsfo.md#batch-coefficient)
        assert row["lr"] == pytest.approx(1e-4 * math.sqrt(8 / 96)) and row["lr_fp"] == pytest.approx(1e-3 * math.sqrt(8 / 96))
