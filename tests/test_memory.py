"""Memory accounting: per-layer profile, live training state, shipped checkpoint sizes."""

import dataclasses
from pathlib import Path

import torch

from bnnrepro.analysis.profile import profile_model, value_bits
from bnnrepro.analysis.training_state import METHODS, measure_training_memory, method_config
from bnnrepro.config import load_experiment
from bnnrepro.models import build_model
from bnnrepro.nn.layers import quantized_layers
from bnnrepro.report.memory import checkpoint_sizes, model_table
from bnnrepro.export import save_model

CONFIGS = Path(__file__).resolve().parents[1] / "config" / "rwth"


def lenet(name="binary_mnist", **changes):
    cfg = load_experiment(CONFIGS / f"{name}.yml")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changes))
    return build_model(cfg.model, 1, 10, 28), cfg


def test_value_bits():
    assert value_bits(torch.tensor([1.0, -1.0])) == 1
    assert value_bits(torch.tensor([1.0, 0.0, -1.0])) == 2
    assert value_bits(torch.tensor([1.0, 0.5])) == 32


def test_binary_lenet5_profile():
    model, _ = lenet()
    layers = {p.name: p for p in profile_model(model, (1, 28, 28))}
    assert sum(p.params_1bit for p in layers.values()) == 876_320
    # conv1 sees the real-valued image: its MACs are not binary, every later weight layer's are
    assert layers["conv1"].input_bits == 32 and layers["conv1"].macs_binary == 0
    assert layers["conv1"].macs_fp == 28 * 28 * 32 * 25
    assert layers["conv2"].input_bits == 1 and layers["conv2"].macs_binary == 10 * 10 * 64 * 32 * 25
    assert layers["fc2"].macs_binary == 512 * 10
    # bn4 has no affine parameters, only running mean and var (num_batches_tracked is not counted)
    assert layers["bn4"].params_32bit == 20
    bn = sum(p.params_32bit for p in layers.values())
    assert sum(p.bits for p in layers.values()) == 876_320 + 32 * bn


def test_float_and_ternary_profiles():
    model, _ = lenet("float_mnist")
    assert all(p.params_1bit == 0 and p.macs_binary == 0 for p in profile_model(model, (1, 28, 28)))
    model, _ = lenet(ternary_weights="0100")
    conv2 = {p.name: p for p in profile_model(model, (1, 28, 28))}["conv2"]
    assert conv2.weight_bits == 2 and conv2.params_2bit == 51_200 and conv2.macs_binary == 0


def test_model_table_total_and_ratio():
    _, cfg = lenet()
    table = model_table("binary_mnist", cfg)
    total = table[table["layer"] == "total"].iloc[0]
    assert total["params_1bit"] == 876_320
    assert total["ratio"] == total["kib_at_fp32"] / total["kib_at_real_precision"] > 20


# bytes per binary weight each method keeps, as implemented: float +-1 (or latent) weight + per-weight state
PER_WEIGHT_BYTES = {"latent SGD": 4, "latent SGD+momentum": 8, "latent Adam": 12, "Bop": 8, "Bop2ndOrder": 12,
                    "SGDT": 8, "SGDAT": 12, "flip (BWS/BinSFO), float +-1 weights": 4}


def test_live_training_state_matches_the_methods():
    binary_weights, tensors = 876_320, 4  # LeNet5: conv1, conv2, fc1, fc2
    cfg = load_experiment(CONFIGS / "binary_mnist.yml")
    for label, method in METHODS.items():
        model, _ = lenet()
        state = measure_training_memory(model, method_config(cfg, method, has_fp_params=True), (1, 28, 28), 4)
        if method.pack_weights:  # sign bits, 8 per byte, per tensor (+ Bop's fp32 momentum)
            expected = sum(-(-layer.weight.numel() // 8) for layer in quantized_layers(model))
            expected += 4 * binary_weights if label.startswith("Bop") else 0
        else:
            expected = PER_WEIGHT_BYTES[label] * binary_weights
        # on top: a few per-tensor scalars (step counts, temperatures, flip totals)
        assert 0 <= state["binary"] - expected <= 32 * tensors, label


def test_packed_flip_state_is_about_one_bit_per_weight():
    cfg = load_experiment(CONFIGS / "binary_mnist.yml")
    model, _ = lenet()
    packed = METHODS["flip (BWS/BinSFO), packed weights"]
    state = measure_training_memory(model, method_config(cfg, packed, has_fp_params=True), (1, 28, 28), 4)
    assert 8 * state["binary"] / 876_320 < 1.01


def test_meta_device_counts_the_bytes_of_a_cpu_step():
    """The memory report runs its steps on the meta device (no arithmetic): every count must be the CPU's."""
    cfg = load_experiment(CONFIGS / "binary_mnist.yml")
    for label, method in METHODS.items():
        counts = []
        for device in ("cpu", "meta"):
            torch.manual_seed(0)
            model, _ = lenet()
            counts.append(measure_training_memory(model.to(device), method_config(cfg, method, has_fp_params=True),
                                                  (1, 28, 28), 8))
        assert counts[0] == counts[1], label


def test_memory_efficient_flip_has_the_smallest_peak():
    cfg = load_experiment(CONFIGS / "binary_mnist.yml")
    peaks = {}
    for label in ("flip (BWS/BinSFO), packed weights", "flip (BWS/BinSFO), packed, memory-efficient"):
        model, _ = lenet()
        peaks[label] = measure_training_memory(model.to("meta"), method_config(cfg, METHODS[label], True),
                                               (1, 28, 28), 50)["peak_step_components"]
    plain, efficient = peaks.values()
    # (at its peak, during the update of the largest layer, that layer's gradient is alive: more
    # gradient bytes than at the plain mode's peak, which falls elsewhere)
    assert efficient["activations"] < plain["activations"] and sum(efficient.values()) < sum(plain.values())


def test_checkpoint_sizes_are_measured(tmp_path):
    model, cfg = lenet()
    save_model(model, tmp_path / "m", cfg, {"channels": 1, "image_size": 28, "num_classes": 10}, fmt="packed")
    sizes = checkpoint_sizes(tmp_path).iloc[0]
    assert sizes["shipped_bytes"] == (tmp_path / "m" / "model.safetensors").stat().st_size
    assert sizes["ratio"] > 20
