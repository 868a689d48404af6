"""BinSFO's published arithmetic as config options (see docs/binsfo.md): the batch factor
sqrt(B / 96) taken from each step's own batch (optim.lr_batch_per_step), one data order reused every
epoch (data.order: fixed) and evaluation in batches of 256 under batch-statistics BatchNorm.
Every run here is BinSFO's MLP, narrowed, on a tiny synthetic MNIST whose 250 training images give
batches of 100, 100 and a short last one of 50."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from bnnrepro.config import ConfigError, load_experiment
from bnnrepro.data.batches import BatchLoader
from bnnrepro.engine.train import evaluate, fit
from bnnrepro.models import build_model
from bnnrepro.optim import TrainingOptimizers
from test_train import CPU, assert_same_state, tiny_mnist, without_timing

REPO = Path(__file__).resolve().parents[1]
MLP = REPO / "config" / "binsfo" / "mnist_mlp.yml"
RECIPES = REPO / "config" / "binsfo" / "optimizers.yml"
SMALL = {"train.epochs": 2, "data.batch_size": 100, "data.resize": 0, "model.hidden": 32, "data.eval_batch_size": 32}
LR = 0.1


def tiny():
    data = tiny_mnist()
    return dataclasses.replace(data, train_images=data.train_images[:250], train_labels=data.train_labels[:250])


def binsfo(recipe: str, **overrides):
    return load_experiment(MLP, {**SMALL, "optim.lr": LR, **overrides}, recipe=f"{RECIPES}:{recipe}")


@pytest.fixture(autouse=True)
def _restore_determinism_flag():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def record_steps(monkeypatch) -> list[dict]:
    """Each optimizer step of the runs that follow: the lr it used, and the weights and gradients around it."""
    steps = []
    step = TrainingOptimizers.step

    def recording(self):
        (regime,) = self.regimes
        params = regime.optimizer.param_groups[0]["params"]
        before = [p.detach().clone() for p in params]
        grads = [p.grad.detach().clone() for p in params]
        step(self)
        first = regime.optimizer.state.get(params[0], {})
        steps.append({"lr": regime.optimizer.param_groups[0]["lr"], "before": before, "grads": grads,
                      "after": [p.detach().clone() for p in params],
                      "sigma": first["sigma"].item() if "sigma" in first else None})
    monkeypatch.setattr(TrainingOptimizers, "step", recording)
    return steps


def test_real_sgd_scales_each_step_by_its_own_batch(monkeypatch, tmp_path):
    steps = record_steps(monkeypatch)
    fit(binsfo("real"), tiny(), CPU, tmp_path / "a.pt", progress=False)
    full, short = LR * math.sqrt(100 / 96), LR * math.sqrt(50 / 96)
    assert [s["lr"] for s in steps] == pytest.approx([full, full, short] * 2, rel=1e-12)
    last = steps[2]  # the short batch of epoch 1: w <- w - lr sqrt(50 / 96) g, by hand
    for before, grad, after in zip(last["before"], last["grads"], last["after"]):
        torch.testing.assert_close(after, before - short * grad, rtol=0, atol=1e-7)


def test_configured_batch_factor_stays_the_default(monkeypatch, tmp_path):
    steps = record_steps(monkeypatch)
    cfg = binsfo("real", **{"optim.lr_batch_per_step": False})
    result = fit(cfg, tiny(), CPU, tmp_path / "a.pt", progress=False)
    assert [s["lr"] for s in steps] == pytest.approx([LR * math.sqrt(100 / 96)] * 6, rel=1e-12)
    assert result.history[0]["lr"] == pytest.approx(LR * math.sqrt(100 / 96))


def test_flip_temperature_uses_the_short_batch_factor(monkeypatch, tmp_path):
    """BinSFO's scaled-gaussian scheduler advances sigma^2 += (pi / 2) (eta s / sigma)^2 with the eta of
    the step's own batch; checked by hand on the short batch."""
    steps = record_steps(monkeypatch)
    fit(binsfo("binary", **{"train.epochs": 1}), tiny(), CPU, tmp_path / "a.pt", progress=False)
    assert [s["lr"] for s in steps] == pytest.approx([LR * math.sqrt(100 / 96)] * 2 + [LR * math.sqrt(50 / 96)])
    sigma = steps[1]["sigma"]  # the first tensor's sigma before the short step, then that step by hand
    s = steps[2]["grads"][0].std().item()
    eta = LR * math.sqrt(50 / 96)
    assert steps[2]["sigma"] == pytest.approx(math.sqrt(sigma ** 2 + math.pi / 2 * (eta * s / sigma) ** 2), rel=1e-6)
    full = LR * math.sqrt(100 / 96)
    assert steps[2]["sigma"] != pytest.approx(math.sqrt(sigma ** 2 + math.pi / 2 * (full * s / sigma) ** 2), rel=1e-6)


def test_per_step_factor_needs_a_reference():
    with pytest.raises(ConfigError, match="lr_batch_reference"):
        load_experiment(MLP, {"optim.lr_batch_per_step": True})
    with pytest.raises(ConfigError, match="data.order"):
        load_experiment(MLP, {"data.order": "once"})


@pytest.mark.parametrize("recipe", ["binary", "real"])
def test_published_options_are_deterministic_and_resume(recipe, tmp_path):
    data = tiny()
    whole = fit(binsfo(recipe), data, CPU, tmp_path / "a.pt", progress=False)
    again = fit(binsfo(recipe), data, CPU, tmp_path / "b.pt", progress=False)
    fit(binsfo(recipe, **{"train.epochs": 1}), data, CPU, tmp_path / "c.pt", progress=False)
    resumed = fit(binsfo(recipe), data, CPU, tmp_path / "c.pt", progress=False)
    assert resumed.resumed_from_epoch == 1
    for other in (again, resumed):
        assert_same_state(whole.model.state_dict(), other.model.state_dict())
        assert without_timing(whole.history) == without_timing(other.history)


def test_evaluation_in_batches_normalises_each_batch_by_itself():
    """With batch-statistics BatchNorm a test image's logits depend on its batch: 100 images evaluated 32
    at a time (32, 32, 32, 4) are counted as the model classifies each of those batches."""
    cfg = binsfo("binary")
    data = tiny_mnist()
    torch.manual_seed(0)
    model = build_model(cfg.model, 1, 10, 28)
    common = dict(max_value=255, mean=tuple(cfg.data.mean), std=tuple(cfg.data.std))
    batched = evaluate(model, BatchLoader(data.test_images, data.test_labels, 32, **common))
    (x, y), = list(BatchLoader(data.test_images, data.test_labels, 100, **common))
    with torch.no_grad():
        by_hand = sum((model(x[i:i + 32]).argmax(1) == y[i:i + 32]).sum().item() for i in range(0, 100, 32))
        assert not torch.allclose(model(x[96:]), model(x)[96:])  # the last 4 images see other statistics
    assert batched["top1"] == pytest.approx(100.0 * by_hand / 100) and batched["n"] == 100


def test_binsfo_configs_use_the_published_arithmetic():
    for recipe in ("binary", "real", "bop", "adam"):
        cfg = load_experiment(MLP, recipe=f"{RECIPES}:{recipe}")
        assert (cfg.data.order, cfg.data.eval_batch_size, cfg.data.batch_size) == ("fixed", 256, 256)
        assert cfg.optim.lr_batch_per_step == (recipe != "adam")
    finetune = REPO / "config" / "binsfo"
    for model in ("adambnn", "bcdnet"):
        for recipe in ("binary", "real", "bop"):
            cfg = load_experiment(finetune / f"finetune_{model}.yml",
                                  recipe=f"{finetune}/finetune_optimizers.yml:{recipe}")
            assert cfg.data.order == "fixed" and cfg.optim.lr_batch_per_step and cfg.optim_fp.lr_batch_per_step
    for name in ("digits_binary", "digits_real", "mnist_large_fcn"):  # BWS: a DataLoader reshuffling every epoch
        cfg = load_experiment(REPO / "config" / "bws" / f"{name}.yml")
        assert cfg.data.order == "per_epoch" and cfg.data.eval_batch_size == cfg.data.batch_size


def test_new_keys_leave_the_digest_alone_at_their_default():
    path = REPO / "config" / "rwth" / "binary_mnist.yml"
    base = load_experiment(path).digest()
    assert load_experiment(path, {"data.order": "per_epoch", "optim.lr_batch_per_step": False}).digest() == base
    assert load_experiment(path, {"data.order": "fixed"}).digest() != base
    assert load_experiment(path, {"optim.lr_batch_reference": 96}).digest() != \
        load_experiment(path, {"optim.lr_batch_reference": 96, "optim.lr_batch_per_step": True}).digest()
