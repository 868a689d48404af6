"""High-dimensional geometry of binarization (Anderson & Berg, arXiv 1705.07199; docs/hd-geometry.md):
the issue's acceptance numbers, the building blocks, and the stage on a tiny LeNet5 (latent and packed)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnnrepro.analysis import geometry as g
from bnnrepro.analysis import geometry_theory as theory
from bnnrepro.analysis.geometry_report import HDParams, analyse_model
from bnnrepro.config import load_experiment
from bnnrepro.data.prepared import write_prepared
from bnnrepro.export import load_model, save_model
from bnnrepro.models import build_model
from bnnrepro.nn.layers import QuantConv2d, QuantLinear
from bnnrepro.nn.quantizers import sign
from test_train import synthetic_split

REPO = Path(__file__).resolve().parents[1]
LIMIT_DEG = math.degrees(math.acos(math.sqrt(2 / math.pi)))
LENET_INPUT = {"channels": 1, "image_size": 28, "num_classes": 10}


# ---------------------------------------------------------------------- acceptance (the issue)

def test_limit_angle_is_37_07_degrees():
    assert theory.degrees(theory.BINARY_LIMIT_RAD) == pytest.approx(37.0714, abs=1e-4)
    assert theory.SPREAD_CONSTANT_RAD == pytest.approx(0.352, abs=1e-3)


@pytest.fixture(scope="module")
def mc_4608() -> theory.AngleSamples:
    return theory.sign_angle_mc(4608, 4000, theory.generator(0, "test", 4608))


def test_mc_mean_at_d4608_is_within_0_1_degree_of_37_07(mc_4608):
    assert abs(mc_4608.summary()["mean_deg"] - 37.07) < 0.1


def test_mc_spread_times_sqrt_d_is_0_352(mc_4608):
    assert 0.33 <= mc_4608.summary()["sd_sqrt_d_rad"] <= 0.37


def test_ternary_angle_at_t_0_111_is_33_8_degrees():
    assert theory.degrees(theory.ternary_angle_rad(0.111)) == pytest.approx(33.8, abs=0.2)
    mc = theory.ternary_angle_mc(1000, 2000, [0.111], theory.generator(0, "test-ternary"))[0.111]
    assert theory.degrees(np.median(mc)) == pytest.approx(33.8, abs=0.2)


def test_gaussian_weights_isotropic_inputs_correlation_is_0_80():
    iso = theory.isotropic_dot_products(1000, 5000, theory.generator(0, "test-isotropic"))
    assert iso["r"] == pytest.approx(0.80, abs=0.02)
    assert iso["r"] == pytest.approx(iso["cos_angle"], abs=0.02)  # the property itself
    assert iso["slope"] == pytest.approx(iso["mean_abs_w"], rel=0.05)  # slope = mean|w|


# ------------------------------------------------------------------------------- building blocks

def test_angle_of_a_vector_with_itself_is_zero_and_batched():
    v = torch.randn(7, 50, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(theory.angle(v, v), torch.zeros(7, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(theory.angle(v, 3 * v), torch.zeros(7, dtype=torch.float64), atol=1e-6)  # scale-free
    assert torch.allclose(theory.angle(v, -v), torch.full((7,), math.pi, dtype=torch.float64))
    e = torch.eye(3)
    assert theory.angle(e[0], e[1]).item() == pytest.approx(math.pi / 2)
    assert torch.isnan(theory.angle(torch.zeros(4), torch.ones(4)))  # an all-zero ternary filter has no angle


def test_small_d_is_biased_low_and_random_pairs_are_orthogonal():
    s = theory.sign_angle_mc(9, 4000, theory.generator(0, "test", 9)).summary()
    assert 33.5 < s["mean_deg"] < 35.0  # 34.35 deg at d = 9 (1e6 draws)
    assert s["random_pair_mean_deg"] == pytest.approx(90, abs=1.5)
    assert s["random_pair_sd_sqrt_d_rad"] == pytest.approx(1.0, abs=0.1)


def test_ternary_closed_form_matches_monte_carlo():
    thresholds = [0.0, 0.2, 0.5, 1.0]
    mc = theory.ternary_angle_mc(2000, 500, thresholds, theory.generator(0, "test-ternary-curve"))
    for t in thresholds:
        assert theory.degrees(np.mean(mc[t])) == pytest.approx(theory.degrees(theory.ternary_angle_rad(t)), abs=0.3), t
    assert theory.degrees(theory.ternary_angle_rad(0.0)) == pytest.approx(LIMIT_DEG)  # t = 0 is binarization
    assert theory.ternary_zero_fraction(0.111) == pytest.approx(0.0884, abs=1e-3)
    t_opt, angle_opt = theory.ternary_optimum()
    assert t_opt == pytest.approx(0.612, abs=2e-3) and theory.degrees(angle_opt) == pytest.approx(25.85, abs=0.02)


def test_random_rotation_restores_37_degrees_for_correlated_inputs():
    d = 200
    rot = theory.haar_rotation(d, theory.generator(0, "test-rotation"))
    assert torch.allclose(rot @ rot.T, torch.eye(d, dtype=torch.float64), atol=1e-10)
    plain = theory.anisotropic_sign_angle_mc(d, 500, 0.1, theory.generator(0, "test-anisotropic"))
    rotated = theory.anisotropic_sign_angle_mc(d, 500, 0.1, theory.generator(0, "test-anisotropic"), rot)
    assert theory.degrees(plain.mean()) > 60  # a few huge coordinates dominate: sign() loses the direction
    assert theory.degrees(rotated.mean()) == pytest.approx(LIMIT_DEG, abs=0.5)


def test_generators_are_reproducible_and_independent():
    a = theory.sign_angle_mc(27, 100, theory.generator(3, "x", 27)).binarized
    assert np.array_equal(a, theory.sign_angle_mc(27, 100, theory.generator(3, "x", 27)).binarized)
    assert not np.array_equal(a, theory.sign_angle_mc(27, 100, theory.generator(3, "y", 27)).binarized)


@pytest.mark.parametrize("padding, stride", [(0, 1), (2, 1), (1, 2), ("same_replicate", 1), ("same_replicate", 2)])
def test_sampled_outputs_are_the_layer_outputs(padding, stride):
    torch.manual_seed(0)
    conv = QuantConv2d(3, 5, 3, stride=stride, padding=padding, bias=False, precision="binary")
    x = torch.randn(4, 3, 9, 9)
    at = g.sample_outputs(conv, g.padded_input(conv, x).shape, 300, theory.generator(0, "test"))
    (got,) = g.sampled_outputs(conv, x, at, g.quantized_weight(conv))
    expected = conv(x).detach()[at.image, at.channel, at.row, at.col].double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    linear = QuantLinear(20, 6, bias=False, precision="binary")
    x = torch.randn(8, 20)
    at = g.sample_outputs(linear, x.shape, 100, theory.generator(0, "test-linear"))
    (got,) = g.sampled_outputs(linear, x, at, g.quantized_weight(linear))
    np.testing.assert_allclose(got, linear(x).detach()[at.image, at.channel].double().numpy(), atol=1e-5)


def test_pearson_and_slope():
    x = np.arange(10.0)
    assert theory.pearson_and_slope(x, 3 * x + 1) == pytest.approx((1.0, 3.0))
    assert theory.pearson_and_slope(x, -x) == pytest.approx((-1.0, -1.0))
    assert all(math.isnan(v) for v in theory.pearson_and_slope(x, np.ones(10)))


# ------------------------------------------------------------------------------ trained networks

def tiny_lenet(seed: int = 0):
    cfg = load_experiment(REPO / "config" / "rwth" / "binary_mnist.yml", {"model.width": 0.25})
    torch.manual_seed(seed)
    return build_model(cfg.model, 1, 10, 28).eval(), cfg


def test_per_layer_weight_analysis_gives_fan_in_and_gaussian_angles():
    model, _ = tiny_lenet()
    layers = dict(g.weight_layers(model))
    summary = {name: g.layer_weight_summary(m) for name, m in layers.items()}
    assert [s["d"] for s in summary.values()] == [25, 8 * 25, 16 * 25, 512]  # fan-in: cin * kh * kw
    assert [s["filters"] for s in summary.values()] == [8, 16, 512, 10]
    # xavier-normal latent weights are Gaussian: fc1 (512 filters, d = 400) sits at the theory's angle
    assert summary["fc1"]["angle_mean_deg"] == pytest.approx(37.0, abs=0.5)
    assert summary["fc1"]["sd_sqrt_d_rad"] == pytest.approx(0.352, abs=0.05)
    assert summary["fc1"]["distribution_limit_deg"] == pytest.approx(LIMIT_DEG, abs=0.5)
    assert g.has_latent_weights(model)


def test_packed_model_is_flagged(tmp_path):
    model, cfg = tiny_lenet()
    save_model(model, tmp_path / "packed", cfg, LENET_INPUT, fmt="packed")
    packed, _, _ = load_model(tmp_path / "packed")
    assert not g.has_latent_weights(packed)
    summary = g.layer_weight_summary(packed.fc1, latent=False)
    assert summary["d"] == 400 and "angle_mean_deg" not in summary


def test_layer_inputs_pair_each_quantizer_with_the_layer_it_feeds():
    model, _ = tiny_lenet()
    images = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    traced = g.layer_inputs(model, images, batch_size=4)
    assert traced.fed_by == {"conv2": "act1", "fc1": "act2", "fc2": "act3"}  # conv1 sees the image
    torch.testing.assert_close(traced.inputs["conv1"], images)
    torch.testing.assert_close(traced.logits, model(images).detach())
    for layer in ("conv2", "fc1", "fc2"):
        a_b, a_c = traced.inputs[layer], traced.continuous[layer]
        assert set(a_b.unique().tolist()) == {-1.0, 1.0}
        # A^b = sign(A^c), with the config's sign rule (exact zeros in A^c give -1 under round_half_even)
        assert not torch.equal(a_c, a_b) and torch.equal(sign(a_c, model.act1.sign_rule), a_b)
    # CPBA: conv2's A^c is BN(pool(conv1 x)), the input of act1
    expected = model.bn1(F.max_pool2d(model.conv1(images), 2)).detach()
    torch.testing.assert_close(traced.continuous["conv2"], expected)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A prepared tiny MNIST, and the tiny LeNet5 saved latent and packed."""
    root = tmp_path_factory.mktemp("hd")
    gen = torch.Generator().manual_seed(0)
    train_images, train_labels = synthetic_split(60, gen)
    test_images, test_labels = synthetic_split(40, gen)
    write_prepared("mnist", {"train_images": train_images, "train_labels": train_labels,
                             "test_images": test_images, "test_labels": test_labels}, root / "prepared" / "mnist")
    model, cfg = tiny_lenet()
    save_model(model, root / "tiny_latent", cfg, LENET_INPUT, fmt="latent")
    save_model(model, root / "tiny_packed", cfg, LENET_INPUT, fmt="packed")
    return root


PARAMS = HDParams(n_images=30, n_mc=300, n_dots=2000, dims=(3, 27, 400), ternary_d=200, thresholds=(0.111, 0.5),
                  rotation_dims=(10, 100), dot_d=200)


def test_dot_product_analysis_is_deterministic_and_complete(tiny_models):
    a = analyse_model(tiny_models / "tiny_latent", tiny_models, PARAMS)
    b = analyse_model(tiny_models / "tiny_latent", tiny_models, PARAMS)
    assert a.rows == b.rows
    rows = {r["layer"]: r for r in a.rows}
    assert set(rows["conv1"]) >= {"r_weight", "r_weight_perm"} and "r_activation" not in rows["conv1"]
    for layer in ("conv2", "fc1", "fc2"):
        assert {"r_weight", "slope_weight", "r_weight_perm", "r_activation", "r_activation_perm"} <= set(rows[layer])
        assert 0.5 < rows[layer]["r_weight"] <= 1.0 and rows[layer]["slope_weight"] > 0
    assert a.metrics["latent_weights"] is True and a.metrics["n_images"] == 30


def test_skipped_and_float_models_are_reported_not_analysed(tiny_models, tmp_path):
    skipped = tmp_path / "cifar_run"
    skipped.mkdir()
    (skipped / "metadata.json").write_text(json.dumps({"status": "skipped", "reason": "needs a GPU"}))
    result = analyse_model(skipped, tiny_models, PARAMS)
    assert result.metrics["status"] == "skipped" and result.metrics["reason"] == "needs a GPU" and not result.rows
    cfg = load_experiment(REPO / "config" / "rwth" / "float_mnist.yml", {"model.width": 0.25})
    torch.manual_seed(0)
    save_model(build_model(cfg.model, 1, 10, 28), tmp_path / "float", cfg, LENET_INPUT)
    result = analyse_model(tmp_path / "float", tiny_models, PARAMS)
    assert result.metrics["status"].startswith("no binary or ternary layers") and not result.rows


def test_stage_writes_metrics_tables_and_figures(tiny_models, tmp_path, capsys):
    sys.path.insert(0, str(REPO / "stages"))
    try:
        import analyze_geometry
    finally:
        sys.path.pop(0)
    args = ["--models", str(tiny_models / "tiny_latent"), str(tiny_models / "tiny_packed"),
            "--data-root", str(tiny_models), "--out", str(tmp_path)]
    for f in dataclasses.fields(PARAMS):
        value = getattr(PARAMS, f.name)
        args += [f"--{f.name}", *map(str, value)] if isinstance(value, tuple) else [f"--{f.name}", str(value)]
    assert analyze_geometry.main(args) == 0
    theory = json.loads((tmp_path / "theory.json").read_text())
    assert theory["sign_angle"]["d=400"]["mean_deg"] == pytest.approx(37.0, abs=0.5)
    assert theory["ternary"]["thresholds"]["t=0.111"]["closed_form_deg"] == pytest.approx(33.85, abs=0.01)

    latent = json.loads((tmp_path / "tiny_latent.json").read_text())
    assert [layer["d"] for layer in latent["layers"].values()] == [25, 200, 400, 512]
    assert latent["latent_weights"] is True and "angle_mean_deg" in latent["layers"]["fc1"]
    packed = json.loads((tmp_path / "tiny_packed.json").read_text())
    assert packed["latent_weights"] is False and "no latent weights" in packed["note"]
    assert all(layer["weight_angles"] == "no latent weights" for layer in packed["layers"].values())
    assert "r_activation" in packed["layers"]["fc1"] and "r_weight" not in packed["layers"]["fc1"]
    assert (tmp_path / "tiny_packed_layers.csv").read_text().startswith("layer,")

    figures = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert {"theory_angle_distributions.png", "theory_spread_vs_d.png", "theory_ternary_angle_vs_threshold.png",
            "theory_rotation.png", "tiny_latent_angles.png", "tiny_latent_angle_spread.png",
            "tiny_latent_weights.png", "tiny_latent_dots_weight.png", "tiny_latent_dots_weight_perm.png",
            "tiny_latent_dots_activation.png", "tiny_packed_dots_activation.png"} <= figures
    assert "tiny_packed_angles.png" not in figures and "tiny_packed_dots_weight.png" not in figures
    assert "no latent weights" in capsys.readouterr().out
