"""Training regimes: one optimizer for the quantized weights (`optim`), another for the full-precision
parameters (`optim_fp`), optimizer arguments checked against the constructor, the lr schedule factors,
the per-epoch state reset and the zero latent init of the SGDAT code (docs/sgdat.md#reproduction-decisions)."""

from __future__ import annotations

import math

import pytest
import torch

from bnnrepro.config import ConfigError
from bnnrepro.engine.train import fit
from bnnrepro.models import build_model
from bnnrepro.nn.layers import ZERO_LATENT, clip_latent_weights_, init_latent_weights_, quantized_layers
from bnnrepro.optim import build_optimizers, split_parameters
from bnnrepro.optim.bop import Bop
from test_train import CPU, assert_same_state, config, tiny_mnist, without_timing

BOP = {"optim.name": "bop", "optim.lr": 1e-3, "optim.momentum": 0.0, "optim.args": {"threshold": 1e-6},
       "optim_fp.name": "adam", "optim_fp.lr": 1e-2}


def test_split_puts_quantized_weights_in_the_binary_regime():
    cfg = config(**BOP)
    model = build_model(cfg.model, 1, 10, 28)
    optimizers = build_optimizers(cfg, model)
    binary, fp = optimizers.regimes
    assert (binary.name, type(binary.optimizer), fp.name, type(fp.optimizer)) == ("binary", Bop, "fp", torch.optim.Adam)
    quantized, full_precision = split_parameters(model)
    assert [id(p) for p in binary.optimizer.param_groups[0]["params"]] == [id(layer.weight) for layer in quantized_layers(model)]
    assert {id(p) for p in fp.optimizer.param_groups[0]["params"]} == {id(p) for p in full_precision}
    assert len(quantized) + len(full_precision) == len(list(model.parameters()))


def test_without_optim_fp_one_optimizer_trains_everything():
    cfg = config()
    optimizers = build_optimizers(cfg, build_model(cfg.model, 1, 10, 28))
    (regime,) = optimizers.regimes
    assert regime.name == "all" and isinstance(regime.optimizer, torch.optim.SGD)


def test_a_binary_weight_optimizer_needs_an_fp_regime_for_batchnorm():
    cfg = config(**{k: v for k, v in BOP.items() if not k.startswith("optim_fp")})
    with pytest.raises(ValueError, match="optim_fp"):
        build_optimizers(cfg, build_model(cfg.model, 1, 10, 28))


def test_binary_weight_optimizer_refuses_a_float_model():
    cfg = config(**BOP, **{"model.weights": "fp", "model.activations": "relu"})
    with pytest.raises(ValueError, match="has none"):
        build_optimizers(cfg, build_model(cfg.model, 1, 10, 28))


@pytest.mark.parametrize("overrides, match", [
    ({"optim.args": {"treshold": 1e-6}}, r"args\.treshold is not an argument of 'bop'"),
    ({"optim.args": {"threshold": "small"}}, r"args\.threshold = 'small'"),
    ({"optim.momentum": 0.9}, "'momentum' does not apply to optimizer 'bop'"),
    ({"optim.args": {"momentum": 0.9}, "optim.name": "sgd"}, "give it as the key 'momentum'"),
    ({"optim_fp.name": "adamw"}, r"optim_fp\.name = 'adamw' is not one of"),
    ({"optim_fp.lr": -1.0}, r"optim_fp\.lr must be > 0"),
    ({"optim_fp.nesterov": True}, r"optim_fp: unknown key\(s\) \['nesterov'\]"),
    ({"optim.reset_each_epoch": "yes"}, r"reset_each_epoch: expected bool"),
    ({"train.latent_init": "gaussian"}, r"train\.latent_init = 'gaussian' is not one of"),
])
def test_bad_optimizer_settings_name_the_file_and_key(overrides, match):
    with pytest.raises(ConfigError, match=match) as error:
        config(**{**BOP, **overrides})
    assert "binary_mnist.yml" in str(error.value)


def test_torch_optimizer_arguments_pass_through_args():
    cfg = config(**{"optim.name": "sgd", "optim.momentum": 0.9, "optim.args": {"nesterov": True}})
    (regime,) = build_optimizers(cfg, build_model(cfg.model, 1, 10, 28)).regimes
    assert regime.optimizer.param_groups[0]["nesterov"] is True and regime.optimizer.param_groups[0]["momentum"] == 0.9





def test_reset_each_epoch_forgets_torch_optimizer_state():
    cfg = config(**{"optim.momentum": 0.9, "optim.reset_each_epoch": True})
    model = build_model(cfg.model, 1, 10, 28)
    optimizers = build_optimizers(cfg, model)
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    optimizers.step()
    assert len(optimizers.regimes[0].optimizer.state) > 0
    optimizers.start_epoch(2)
    assert len(optimizers.regimes[0].optimizer.state) == 0


def test_two_regime_training_is_deterministic_and_resumes(tmp_path):
    data = tiny_mnist()
    whole = fit(config(**BOP), data, CPU, tmp_path / "a.pt", progress=False)
    again = fit(config(**BOP), data, CPU, tmp_path / "b.pt", progress=False)
    fit(config(**BOP, **{"train.epochs": 1}), data, CPU, tmp_path / "c.pt", progress=False)
    resumed = fit(config(**BOP), data, CPU, tmp_path / "c.pt", progress=False)
    assert resumed.resumed_from_epoch == 1
    for other in (again, resumed):
        assert_same_state(whole.model.state_dict(), other.model.state_dict())
        assert without_timing(whole.history) == without_timing(other.history)
    row = whole.history[-1]
    assert row["lr"] == 1e-3 and row["lr_fp"] == 1e-2
    assert row["flips"] > 0  # Bop flipped some weights
    weights = [layer.weight for layer in quantized_layers(whole.model)]
    assert all(set(w.unique().tolist()) <= {-1.0, 1.0} for w in weights)


def test_flip_count_of_latent_training_counts_sign_changes(tmp_path):
    result = fit(config(**{"train.epochs": 1}), tiny_mnist(), CPU, tmp_path / "a.pt", progress=False)
    assert result.history[0]["flips"] > 0
    float_run = fit(config(**{"train.epochs": 1, "model.weights": "fp", "model.activations": "relu"}), tiny_mnist(),
                    CPU, tmp_path / "b.pt", progress=False)
    assert "flips" not in float_run.history[0]


def test_zero_latent_init_takes_the_first_step_from_zero():
    """SGDAT code (docs/sgdat.md#zero-latent-init): latents start at 0, so after the first SGD step w = clip(-lr g)."""
    cfg = config(**{"train.latent_init": "zero", "optim.momentum": 0.0, "optim.lr": 0.5})
    model = build_model(cfg.model, 1, 10, 28)
    weights = [layer.weight for layer in quantized_layers(model)]
    initial_signs = [w.detach().sign() for w in weights]
    init_latent_weights_(model, cfg.train.latent_init)
    for w, s in zip(weights, initial_signs):  # zero for the optimizer, the init's signs for the first forward
        assert torch.equal(w, ZERO_LATENT * s)
    optimizers = build_optimizers(cfg, model)
    model(torch.rand(8, 1, 28, 28)).square().sum().backward()
    grads = [w.grad.clone() for w in weights]
    optimizers.step()
    clip_latent_weights_(model, cfg.train.clip_latent)
    for g, w in zip(grads, weights):
        assert torch.allclose(w, (-0.5 * g).clamp(-1, 1), rtol=0, atol=1e-19)


def test_cosine_lr_reaches_the_history(tmp_path):
    result = fit(config(**{"optim.lr_cosine_epochs": 2}), tiny_mnist(), CPU, tmp_path / "a.pt", progress=False)
    assert [row["lr"] for row in result.history] == pytest.approx([0.01 * (1 + math.cos(math.pi / 2)) / 2, 0.0])
