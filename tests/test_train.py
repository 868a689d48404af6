"""The training loop: clipping, determinism, resume, refusal of foreign checkpoints, losses, lr schedule
(docs/rwth.md#training-loop). Every run is a binary LeNet5 on a tiny synthetic MNIST-shaped dataset."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import bnnrepro.engine.train as train_mod
from bnnrepro.config import ConfigError, OptimConfig, load_experiment
from bnnrepro.data.prepared import Dataset
from bnnrepro.engine.checkpoint import SCHEMA_VERSION, load_checkpoint, save_checkpoint
from bnnrepro.engine.losses import bin_regularizer, squared_hinge
from bnnrepro.engine.train import fit
from bnnrepro.errors import BadFileError
from bnnrepro.models import build_model
from bnnrepro.nn.layers import clip_latent_weights_, quantized_layers
from bnnrepro.optim import build_optimizer

CONFIG = Path(__file__).resolve().parents[1] / "config" / "rwth" / "binary_mnist.yml"
BASE = {"train.epochs": 2, "data.val_size": 100, "data.batch_size": 50, "data.eval_batch_size": 100}
CPU = torch.device("cpu")
TIMING_KEYS = {"epoch_seconds", "train_images_per_s"}


def synthetic_split(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with a bright horizontal band whose height encodes the label: learnable."""
    labels = torch.randint(0, 10, (n,), generator=gen)
    images = torch.randint(0, 60, (n, 1, 28, 28), generator=gen, dtype=torch.uint8)
    rows = torch.arange(28)
    band = (rows[None] >= 2 + 2 * labels[:, None]) & (rows[None] < 5 + 2 * labels[:, None])  # n x 28
    images[band[:, None, :, None].expand(-1, 1, -1, 28)] = 255
    return images, labels


def tiny_mnist() -> Dataset:
    gen = torch.Generator().manual_seed(0)
    train_images, train_labels = synthetic_split(300, gen)
    test_images, test_labels = synthetic_split(100, gen)
    return Dataset(name="mnist", num_classes=10, max_value=255, train_images=train_images, train_labels=train_labels,
                   test_images=test_images, test_labels=test_labels, sha256="x")


def config(**overrides):
    return load_experiment(CONFIG, {**BASE, **overrides})


def without_timing(history):
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(autouse=True)
def _restore_determinism_flag():
    """fit() switches torch's deterministic-algorithms mode on; give other test modules their setting back."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return tiny_mnist()


@pytest.fixture(scope="module")
def reference_run(dataset, tmp_path_factory):
    """One uninterrupted 2-epoch run, shared by the determinism and resume tests."""
    before = torch.are_deterministic_algorithms_enabled()
    ckpt = tmp_path_factory.mktemp("reference") / "ckpt.pt"
    result = fit(config(), dataset, CPU, ckpt, progress=False)
    torch.use_deterministic_algorithms(before)
    return result, ckpt


# ---------------------------------------------------------------------------------- the loop

def test_reference_run_trains_and_reports(reference_run):
    result, ckpt = reference_run
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert result.resumed_from_epoch == 0
    assert result.test["n"] == 100
    assert 1 <= result.best_epoch <= 2
    assert result.best_val_top1 == max(row["val_top1"] for row in result.history)
    assert all(row["lr"] == 0.01 for row in result.history)
    state = load_checkpoint(ckpt, config().digest())
    assert state["epoch"] == 2 and state["schema_version"] == SCHEMA_VERSION


def test_latent_weights_are_clipped_but_batchnorm_is_not(dataset, tmp_path):
    # a large lr drives latent weights past +-1 within a few steps, and BN parameters past 1
    result = fit(config(**{"optim.lr": 1.0}), dataset, CPU, tmp_path / "ckpt.pt", progress=False)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]  # the final (not best) weights
    model = result.model
    latent = [f"{name}.weight" for name, m in model.named_modules() if m in quantized_layers(model)]
    assert latent == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
    for key in latent:
        assert state[key].abs().max() <= 1.0, key
    assert any((state[key].abs() == 1.0).any() for key in latent), "clipping was never exercised"
    bn = [k for k in state if k.startswith("bn") and (k.endswith(".weight") or k.endswith(".bias"))]
    assert max(state[k].abs().max().item() for k in bn) > 1.0


def test_clip_latent_weights_only_touches_quantized_layers():
    cfg = config(**{"model.first_layer_fp": True})
    model = build_model(cfg.model, 1, 10, 28)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3.0)
    clip_latent_weights_(model, 1.0)
    assert torch.all(model.conv1.weight == 3.0) and torch.all(model.conv1.bias == 3.0)  # fp first layer
    for layer in (model.conv2, model.fc1, model.fc2):
        assert torch.all(layer.weight == 1.0)
    assert torch.all(model.bn1.weight == 3.0) and torch.all(model.bn3.bias == 3.0)
    clip_latent_weights_(model, 0.5)
    assert torch.all(model.fc2.weight == 0.5)


def test_clip_latent_zero_disables_clipping(dataset, tmp_path):
    # the same run as in the test above, without the clip: its latent weights leave [-1, 1]
    fit(config(**{"optim.lr": 1.0, "train.clip_latent": 0.0}), dataset, CPU, tmp_path / "ckpt.pt", progress=False)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]
    assert max(state[f"{n}.weight"].abs().max().item() for n in ("conv1", "conv2", "fc1", "fc2")) > 1.0


def test_two_runs_are_bit_identical(dataset, reference_run, tmp_path):
    first, _ = reference_run
    second = fit(config(), dataset, CPU, tmp_path / "ckpt.pt", progress=False)
    assert_same_state(first.model.state_dict(), second.model.state_dict())
    assert without_timing(first.history) == without_timing(second.history)
    assert first.test == second.test and first.best_epoch == second.best_epoch
    final_a = torch.load(reference_run[1], weights_only=True)
    final_b = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert_same_state(final_a["model"], final_b["model"])


def test_packed_weights_train_and_count_flips_as_float_weights_do(dataset, tmp_path):
    # the flip optimizer on binary LeNet5 with its weights held as sign bits between steps: the same
    # weights, metrics and flips per epoch as with float +-1 weights (packed mode counts flips from the bits)
    flip = {"optim.name": "flip", "optim.lr": 0.05, "optim.momentum": 0.0, "optim.args": {"mask": "emp", "scheduler": "const", "seed": 1},
            "optim_fp.name": "adam", "optim_fp.lr": 1e-3}
    runs = [fit(config(**flip, **{"train.pack_weights": pack}), dataset, CPU, tmp_path / f"{pack}.pt", progress=False)
            for pack in (False, True)]
    assert_same_state(runs[0].model.state_dict(), runs[1].model.state_dict())
    assert without_timing(runs[0].history) == without_timing(runs[1].history)
    assert all(row["flips"] > 0 for row in runs[1].history)


def test_resume_after_interrupt_matches_uninterrupted_run(dataset, reference_run, tmp_path, monkeypatch):
    reference, _ = reference_run
    ckpt = tmp_path / "ckpt.pt"
    real = train_mod.train_one_epoch
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during epoch 2
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(config(), dataset, CPU, ckpt, progress=False)
    assert len(calls) == 2
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    monkeypatch.setattr(train_mod, "train_one_epoch", real)

    resumed = fit(config(), dataset, CPU, ckpt, progress=False)
    assert resumed.resumed_from_epoch == 1
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert without_timing(resumed.history) == without_timing(reference.history)
    assert_same_state(resumed.model.state_dict(), reference.model.state_dict())
    assert resumed.test == reference.test and resumed.best_epoch == reference.best_epoch
    final_ref = torch.load(reference_run[1], weights_only=True)
    final_res = torch.load(ckpt, weights_only=True)
    assert_same_state(final_ref["model"], final_res["model"])


def test_finished_checkpoint_resumes_without_training(dataset, reference_run, tmp_path, monkeypatch):
    reference, ckpt = reference_run
    copy = tmp_path / "ckpt.pt"
    copy.write_bytes(ckpt.read_bytes())

    def never(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(train_mod, "train_one_epoch", never)
    result = fit(config(), dataset, CPU, copy, progress=False)
    assert result.resumed_from_epoch == 2
    assert_same_state(result.model.state_dict(), reference.model.state_dict())
    assert result.test == reference.test


def test_extending_a_finished_run_matches_the_longer_run(dataset, reference_run, tmp_path):
    """A 1-epoch run's checkpoint continued to 2 epochs equals the uninterrupted 2-epoch run."""
    reference, _ = reference_run
    ckpt = tmp_path / "ckpt.pt"
    short = fit(config(**{"train.epochs": 1}), dataset, CPU, ckpt, progress=False)
    assert [row["epoch"] for row in short.history] == [1]
    longer = fit(config(), dataset, CPU, ckpt, progress=False)
    assert longer.resumed_from_epoch == 1
    assert without_timing(longer.history) == without_timing(reference.history)
    assert_same_state(longer.model.state_dict(), reference.model.state_dict())


def test_checkpoint_past_the_requested_epochs_is_refused(dataset, reference_run, tmp_path):
    _, ckpt = reference_run
    copy = tmp_path / "ckpt.pt"
    copy.write_bytes(ckpt.read_bytes())
    with pytest.raises(RuntimeError, match="past the 1 epochs"):
        fit(config(**{"train.epochs": 1}), dataset, CPU, copy, progress=False)


# ------------------------------------------------------------------------- refused checkpoints

def test_checkpoint_of_another_config_is_refused(dataset, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, {"digest": "0123456789abcdef", "epoch": 1, "model": {}, "optimizer": {}, "history": [],
                           "best": {}, "train_seconds": 0.0})
    with pytest.raises(RuntimeError, match="another config"):
        fit(config(), dataset, CPU, ckpt, progress=False)
    # the digest covers everything that changes the weights after a given epoch; the epoch count is left
    # out on purpose (a run can be extended from its checkpoint)
    assert config().digest() == config().digest() == config(**{"train.epochs": 3}).digest()
    for key, value in {"optim.lr": 0.02, "train.seed": 3, "data.batch_size": 25, "model.estimator": "vanilla",
                       "train.loss": "cross_entropy", "data.val_size": 50}.items():
        assert config().digest() != config(**{key: value}).digest(), key


def test_checkpoint_of_another_run_config_is_refused(reference_run):
    _, ckpt = reference_run
    with pytest.raises(RuntimeError, match="another config"):
        load_checkpoint(ckpt, config(**{"train.seed": 7}).digest())


def test_truncated_checkpoint_is_a_clear_error(dataset, reference_run, tmp_path):
    _, ckpt = reference_run
    data = ckpt.read_bytes()
    broken = tmp_path / "ckpt.pt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="truncated") as info:
        fit(config(), dataset, CPU, broken, progress=False)
    assert type(info.value) is BadFileError  # our message, not the unpickler's
    assert str(broken) in str(info.value)
    broken.write_bytes(data[:100])
    with pytest.raises(RuntimeError, match="truncated"):
        load_checkpoint(broken, config().digest())


def test_non_checkpoint_file_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {}}, path)
    with pytest.raises(RuntimeError, match="not a bnnrepro checkpoint"):
        load_checkpoint(path, "abc")
    assert load_checkpoint(tmp_path / "missing.pt", "abc") is None


# ------------------------------------------------------------------------------------ NaN loss

def test_nan_loss_stops_training_naming_epoch_and_step(dataset, tmp_path, monkeypatch):
    real_loss = train_mod.loss_function("squared_hinge")
    calls = []

    def loss_fn(logits, labels):
        calls.append(1)
        loss = real_loss(logits, labels)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(train_mod, "loss_function", lambda name: loss_fn)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 3"):
        fit(config(), dataset, CPU, ckpt, progress=False)
    assert not ckpt.exists()  # nothing half-trained was checkpointed


def test_non_finite_weights_stop_training_though_the_loss_is_finite(dataset, tmp_path, monkeypatch):
    # an infinite step on the last batch of epoch 1: every loss of that epoch was finite, the weights are not
    # (binary layers only see sign(w), so a NaN latent weight need never show in the loss)
    steps_per_epoch = (300 - 100) // 50
    calls = []

    def clip_then_poison(model, c):
        calls.append(1)
        if len(calls) == steps_per_epoch:
            quantized_layers(model)[1].weight.data[0, 0] = float("inf")

    monkeypatch.setattr(train_mod, "clip_latent_weights_", clip_then_poison)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(train_mod.TrainingDiverged, match=r"conv2.weight not finite after epoch 1") as info:
        fit(config(), dataset, CPU, ckpt, progress=False)
    assert "lower optim.lr" in str(info.value)
    assert not ckpt.exists()  # the non-finite weights were never checkpointed


# ------------------------------------------------------------------------ losses and schedule

def test_squared_hinge_hand_computed():
    logits = torch.tensor([[0.5, -2.0, 1.0], [2.0, 0.0, -0.5]])
    labels = torch.tensor([0, 2])
    # targets [1,-1,-1]: max(0, 1 - t*y)^2 = 0.25 + 0 + 4 = 4.25
    # targets [-1,-1,1]: 9 + 1 + 2.25 = 12.25 ; batch mean 8.25
    assert squared_hinge(logits, labels).item() == pytest.approx(8.25)
    assert squared_hinge(torch.tensor([[1.0, -1.0, -1.0]]), torch.tensor([0])).item() == 0.0


def test_squared_hinge_gradient():
    logits = torch.tensor([[0.5, -2.0, 1.0], [2.0, 0.0, -0.5]], requires_grad=True)
    squared_hinge(logits, torch.tensor([0, 2])).backward()
    # d/dy of max(0, 1 - t y)^2 = -2 t max(0, 1 - t y), divided by the batch size 2
    expected = torch.tensor([[-0.5, 0.0, 2.0], [3.0, 1.0, -1.5]])
    torch.testing.assert_close(logits.grad, expected)


def test_loss_function_names():
    assert train_mod.loss_function("squared_hinge") is squared_hinge
    assert train_mod.loss_function("cross_entropy") is torch.nn.functional.cross_entropy
    with pytest.raises(ValueError, match="Unknown loss"):
        train_mod.loss_function("hinge")





def test_lr_schedule_reaches_the_optimizer(dataset, tmp_path):
    result = fit(config(**{"optim.lr_milestones": [2], "optim.lr_decay": [0.5]}), dataset, CPU,
                 tmp_path / "ckpt.pt", progress=False)
    assert [row["lr"] for row in result.history] == [0.01, 0.005]


def test_mismatched_milestones_are_an_error():
    with pytest.raises(ValueError, match="same length"):  # at config load, naming the file
        config(**{"optim.lr_milestones": [2, 3], "optim.lr_decay": [0.5]})
    with pytest.raises(ValueError, match="same length"):
        build_optimizer(OptimConfig(name="sgd", lr=0.1, lr_milestones=[2, 3], lr_decay=[0.5]), nn.Linear(2, 2))


def test_bin_regularizer_sums_over_quantized_weights():
    cfg = config()
    torch.manual_seed(0)
    model = build_model(cfg.model, 1, 10, 28)
    expected = sum((1 - getattr(model, n).weight.double() ** 2).sum() for n in ("conv1", "conv2", "fc1", "fc2"))
    value = bin_regularizer(model)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    # fp layers and BN parameters do not count
    model = build_model(dataclasses.replace(cfg.model, first_layer_fp=True), 1, 10, 28)
    expected = sum((1 - getattr(model, n).weight.double() ** 2).sum() for n in ("conv2", "fc1", "fc2"))
    assert bin_regularizer(model).item() == pytest.approx(expected.item(), rel=1e-5)
    # at |w| = 1 the regularizer vanishes
    with torch.no_grad():
        for layer in quantized_layers(model):
            layer.weight.copy_(torch.where(layer.weight >= 0, 1.0, -1.0))
    assert bin_regularizer(model).item() == 0.0


def test_bin_regularizer_gradient_pushes_towards_pm1():
    cfg = config()
    model = build_model(cfg.model, 1, 10, 28)
    bin_regularizer(model).backward()
    for layer in quantized_layers(model):
        torch.testing.assert_close(layer.weight.grad, -2 * layer.weight.detach())
    assert model.bn1.weight.grad is None


def test_max_steps_shortens_every_epoch(dataset, tmp_path, monkeypatch):
    steps = []
    real = train_mod._train_step
    monkeypatch.setattr(train_mod, "_train_step", lambda *a, **k: steps.append(1) or real(*a, **k))
    result = fit(config(**{"train.max_steps": 2}), dataset, CPU, tmp_path / "ckpt.pt", progress=False)
    assert len(steps) == 2 * 2 and [row["epoch"] for row in result.history] == [1, 2]  # 2 of 4 steps, 2 epochs
    assert result.shortened_epoch == 2  # what the reports print beside the epochs
    whole = fit(config(**{"train.max_steps": 4}), dataset, CPU, tmp_path / "whole.pt", progress=False)
    assert whole.shortened_epoch is None  # 4 steps are the whole epoch
    # off by default, and then out of the digest: checkpoints written before the key existed still resume
    assert config(**{"train.max_steps": 0}).digest() == config().digest() != config(**{"train.max_steps": 2}).digest()
    with pytest.raises(ConfigError, match="train.max_steps must be >= 0"):
        config(**{"train.max_steps": -1})
