"""LeNet5 and VGGNet7 of the RWTH code (docs/rwth.md#lenet5, docs/rwth.md#vggnet7, docs/rwth.md#same-padding)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bnnrepro.config import load_experiment
from bnnrepro.models import MODELS, ModelConfig, build_model
from bnnrepro.models.common import check_options
from bnnrepro.nn.layers import QuantAct, QuantConv2d, QuantLinear, quantized_layers
from bnnrepro.nn.quantizers import quantize_weight

CONFIGS = Path(__file__).resolve().parents[1] / "config" / "rwth"


def model_cfg(name: str, **changes):
    cfg = load_experiment(CONFIGS / f"{name}.yml").model
    return dataclasses.replace(cfg, **changes)


def lenet(name: str = "binary_mnist", **changes) -> nn.Module:
    torch.manual_seed(0)
    return build_model(model_cfg(name, **changes), 1, 10, 28)


def vgg(name: str = "binary_cifar10", **changes) -> nn.Module:
    torch.manual_seed(0)
    return build_model(model_cfg(name, **changes), 3, 10, 32)


def weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def record(model: nn.Module, names: list[str]):
    """Run-order log of (module name, input shape, output shape) for the named submodules."""
    calls = []
    handles = []
    for name in names:
        module = model.get_submodule(name)
        handles.append(module.register_forward_hook(
            lambda m, inp, out, name=name: calls.append((name, tuple(inp[0].shape), tuple(out.shape), out.detach()))))
    return calls, handles



# ------------------------------------------------------------------------------------------ LeNet5

@pytest.mark.parametrize("name", ["binary_mnist", "float_mnist"])
def test_lenet5_shapes(name):
    model = lenet(name)
    calls, _ = record(model, ["conv1", "conv2", "pool", "fc1", "fc2"])
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    shapes = {}
    for n, inp, o, _ in calls:
        shapes.setdefault(n, []).append((inp, o))
    assert shapes["conv1"] == [((3, 1, 28, 28), (3, 32, 28, 28))]
    assert shapes["pool"] == [((3, 32, 28, 28), (3, 32, 14, 14)), ((3, 64, 10, 10), (3, 64, 5, 5))]
    assert shapes["conv2"] == [((3, 32, 14, 14), (3, 64, 10, 10))]
    assert shapes["fc1"] == [((3, 1600), (3, 512))]
    assert shapes["fc2"] == [((3, 512), (3, 10))]
    assert model.fc1.in_features == 1600


@pytest.mark.parametrize("name", ["binary_mnist", "float_mnist"])
def test_lenet5_weight_count(name):
    counts = [m.weight.numel() for m in weight_layers(lenet(name))]
    assert counts == [800, 51_200, 819_200, 5_120]
    assert sum(counts) == 876_320


def test_lenet5_binary_has_no_biases_and_binary_weights():
    model = lenet("binary_mnist")
    layers = weight_layers(model)
    assert [type(m) for m in layers] == [QuantConv2d, QuantConv2d, QuantLinear, QuantLinear]
    assert [m.precision for m in layers] == ["binary"] * 4  # first and last layers included
    assert all(m.bias is None for m in layers)
    assert quantized_layers(model) == layers
    assert all(isinstance(getattr(model, f"act{i}"), QuantAct) for i in (1, 2, 3))
    assert model.act1.estimator == "bnn"


def test_lenet5_float_has_biases_fp_weights_and_relu():
    model = lenet("float_mnist")
    layers = weight_layers(model)
    assert [m.precision for m in layers] == ["fp"] * 4
    assert all(m.bias is not None for m in layers)
    assert quantized_layers(model) == []
    assert all(isinstance(getattr(model, f"act{i}"), nn.ReLU) for i in (1, 2, 3))


@pytest.mark.parametrize("name", ["binary_mnist", "float_mnist"])
def test_lenet5_last_bn_is_not_affine(name):
    model = lenet(name)
    assert isinstance(model.bn4, nn.BatchNorm1d) and model.bn4.num_features == 10
    assert model.bn4.affine is False and model.bn4.weight is None and model.bn4.bias is None
    assert set(model.bn4.state_dict()) == {"running_mean", "running_var", "num_batches_tracked"}
    assert model.bn1.affine and model.bn2.affine and model.bn3.affine


@pytest.mark.parametrize("name, order", [
    ("binary_mnist", ["conv1", "pool", "bn1", "act1", "conv2", "pool", "bn2", "act2", "fc1", "bn3", "act3", "fc2", "bn4"]),
    ("float_mnist", ["conv1", "bn1", "act1", "pool", "conv2", "bn2", "act2", "pool", "fc1", "bn3", "act3", "fc2", "bn4"]),
])
def test_lenet5_layer_order(name, order):
    """Binary preset CPBA pools the real-valued conv output before BN; the float preset is CBAP."""
    model = lenet(name)
    calls, _ = record(model, sorted(set(order)))
    model(torch.randn(2, 1, 28, 28))
    assert [c[0] for c in calls] == order


def test_lenet5_state_dict_keys_follow_rwth_names():
    keys = set(lenet("binary_mnist").state_dict())
    assert {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "bn1.weight", "bn1.running_var",
            "bn4.running_mean"} <= keys
    assert not any("bias" in k and not k.startswith("bn") for k in keys)


def test_lenet5_rejects_other_image_sizes():
    with pytest.raises(ValueError, match="28x28"):
        build_model(model_cfg("binary_mnist"), 1, 10, 32)


# ----------------------------------------------------------------------------------------- VGGNet7

@pytest.fixture(scope="module")
def vgg_binary():
    return vgg("binary_cifar10")


@pytest.fixture(scope="module")
def vgg_float():
    return vgg("float_cifar10")


@pytest.mark.parametrize("which", ["vgg_binary", "vgg_float"])
def test_vggnet7_shapes(which, request):
    model = request.getfixturevalue(which)
    names = [f"conv{i}" for i in range(1, 7)] + ["pool", "fc1", "fc2", "fc3"]
    calls, handles = record(model, names)
    try:
        with torch.no_grad():
            out = model.train()(torch.randn(2, 3, 32, 32))
    finally:
        for h in handles:
            h.remove()
    assert out.shape == (2, 10)
    outs = {}
    for n, inp, o, _ in calls:
        outs.setdefault(n, []).append(o)
    assert outs["conv1"] == [(2, 128, 30, 30)]  # valid padding
    assert outs["conv2"] == [(2, 128, 30, 30)]  # SAME
    assert outs["conv3"] == [(2, 256, 15, 15)]
    assert outs["conv4"] == [(2, 256, 15, 15)]
    assert outs["conv5"] == [(2, 512, 7, 7)]
    assert outs["conv6"] == [(2, 512, 7, 7)]
    assert outs["pool"] == [(2, 128, 15, 15), (2, 256, 7, 7), (2, 512, 3, 3)]
    assert outs["fc1"] == [(2, 1024)] and outs["fc3"] == [(2, 10)]
    assert model.fc1.in_features == 512 * 9


@pytest.mark.parametrize("which", ["vgg_binary", "vgg_float"])
def test_vggnet7_weight_count_and_padding(which, request):
    model = request.getfixturevalue(which)
    assert sum(m.weight.numel() for m in weight_layers(model)) == 10_352_000
    assert model.conv1.same_replicate is False and model.conv1.padding == (0, 0)
    assert all(getattr(model, f"conv{i}").same_replicate for i in range(2, 7))
    assert model.bn9.affine is False


def test_vggnet7_binary_vs_float_layers(vgg_binary, vgg_float):
    bl, fl = weight_layers(vgg_binary), weight_layers(vgg_float)
    assert [m.precision for m in bl] == ["binary"] * 9 and all(m.bias is None for m in bl)
    assert [m.precision for m in fl] == ["fp"] * 9 and all(m.bias is not None for m in fl)


@pytest.mark.parametrize("kernel, stride, size, pads", [
    (3, 1, 5, (1, 1, 1, 1)),
    (3, 1, 7, (1, 1, 1, 1)),
    (2, 1, 5, (0, 1, 0, 1)),  # odd total: the extra row/column goes bottom/right
    (3, 2, 6, (0, 1, 0, 1)),
    (4, 1, 4, (1, 2, 1, 2)),
])
def test_same_replicate_padding_is_edge_padding(kernel, stride, size, pads):
    torch.manual_seed(0)
    conv = QuantConv2d(2, 3, kernel, stride=stride, padding="same_replicate", bias=False, precision="fp")
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.randn(1, 2, size, size) + 3.0  # far from 0: zero padding would give visibly different borders
    out = conv(x)
    expected = F.conv2d(F.pad(x, pads, mode="replicate"), torch.ones(3, 2, kernel, kernel), stride=stride)
    torch.testing.assert_close(out, expected)
    assert out.shape[-1] == -(-size // stride)  # SAME: ceil(n / s)
    zero_padded = F.conv2d(F.pad(x, pads), torch.ones(3, 2, kernel, kernel), stride=stride)
    assert not torch.allclose(out, zero_padded)


def test_same_replicate_in_binary_conv_uses_sign_weights():
    torch.manual_seed(0)
    conv = QuantConv2d(2, 4, 3, padding="same_replicate", bias=False, precision="binary")
    x = torch.randn(1, 2, 6, 6)
    expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), torch.where(conv.weight >= 0, 1.0, -1.0))
    torch.testing.assert_close(conv(x), expected)


def test_vggnet7_rejects_other_image_sizes():
    with pytest.raises(ValueError, match="32x32"):
        build_model(model_cfg("binary_cifar10", width=0.125), 3, 10, 28)


# --------------------------------------------------------------------------- fp / ternary switches

def test_first_and_last_layer_fp_lenet5():
    model = lenet(first_layer_fp=True, last_layer_fp=True)
    layers = weight_layers(model)
    assert [m.precision for m in layers] == ["fp", "binary", "binary", "fp"]
    assert [m.bias is not None for m in layers] == [True, False, False, True]
    assert quantized_layers(model) == [model.conv2, model.fc1]
    only_first = weight_layers(lenet(first_layer_fp=True))
    assert [m.precision for m in only_first] == ["fp", "binary", "binary", "binary"]
    only_last = weight_layers(lenet(last_layer_fp=True))
    assert [m.precision for m in only_last] == ["binary", "binary", "binary", "fp"]


def test_first_and_last_layer_fp_vggnet7():
    model = vgg(first_layer_fp=True, last_layer_fp=True, width=0.125)
    layers = weight_layers(model)
    assert [m.precision for m in layers] == ["fp"] + ["binary"] * 7 + ["fp"]
    assert [m.bias is not None for m in layers] == [True] + [False] * 7 + [True]


def test_ternary_weights_digits():
    model = lenet(ternary_weights="1001")
    assert [m.precision for m in weight_layers(model)] == ["ternary", "binary", "binary", "ternary"]
    assert len(quantized_layers(model)) == 4
    w = quantize_weight(model.conv1.weight, model.conv1.precision)
    assert set(w.unique().tolist()) == {-1.0, 0.0, 1.0}
    # fp wins over ternary for the first/last layer
    model = lenet(ternary_weights="1001", first_layer_fp=True)
    assert [m.precision for m in weight_layers(model)] == ["fp", "binary", "binary", "ternary"]
    model = vgg(ternary_weights="100000001", width=0.125)
    assert [m.precision for m in weight_layers(model)] == ["ternary"] + ["binary"] * 7 + ["ternary"]


def test_ternary_acts_digits():
    model = lenet(ternary_acts="101")
    assert [getattr(model, f"act{i}").precision for i in (1, 2, 3)] == ["ternary", "binary", "ternary"]
    calls, _ = record(model, ["act1", "act2", "act3"])
    model(torch.randn(4, 1, 28, 28))
    values = {n: set(out.unique().tolist()) for n, _, _, out in calls}
    assert values["act2"] == {-1.0, 1.0}
    assert values["act1"] <= {-1.0, 0.0, 1.0} and 0.0 in values["act1"]
    assert values["act3"] <= {-1.0, 0.0, 1.0} and 0.0 in values["act3"]
    model = vgg(ternary_acts="10000001", width=0.125)
    assert [getattr(model, f"act{i}").precision for i in range(1, 9)] == ["ternary"] + ["binary"] * 6 + ["ternary"]


@pytest.mark.parametrize("changes, key", [
    ({"ternary_weights": "100"}, "ternary_weights"),
    ({"ternary_weights": "10010"}, "ternary_weights"),
    ({"ternary_weights": "10a1"}, "ternary_weights"),
    ({"ternary_acts": "10"}, "ternary_acts"),
    ({"ternary_acts": "1011"}, "ternary_acts"),
])
def test_wrong_digit_strings_raise_naming_the_key(changes, key):
    with pytest.raises(ValueError, match=f"model.{key}"):
        lenet(**changes)


def test_wrong_digit_strings_vggnet7():
    with pytest.raises(ValueError, match="model.ternary_weights must be 9 digits"):
        vgg(ternary_weights="1001", width=0.125)
    with pytest.raises(ValueError, match="model.ternary_acts must be 8 digits"):
        vgg(ternary_acts="101", width=0.125)


# ------------------------------------------------------------------------------- binary forward

def test_binary_lenet5_activations_and_weights_are_pm1():
    model = lenet("binary_mnist")
    calls, _ = record(model, ["act1", "act2", "act3", "conv1", "fc2"])
    x = torch.randn(4, 1, 28, 28)
    model(x)
    by_name = {n: (inp, out) for n, inp, _, out in calls}
    for name in ("act1", "act2", "act3"):
        assert set(by_name[name][1].unique().tolist()) == {-1.0, 1.0}, name
    for layer in quantized_layers(model):
        assert set(quantize_weight(layer.weight, layer.precision).unique().tolist()) == {-1.0, 1.0}
    # the forward really uses sign(w): conv1 on the real-valued image with +-1 weights, no bias
    sign_w = torch.where(model.conv1.weight >= 0, 1.0, -1.0)
    torch.testing.assert_close(by_name["conv1"][1], F.conv2d(x, sign_w, padding=2))
    # fc2 sees binary inputs and binary weights: its outputs are integers of the parity of 512
    fc2_out = by_name["fc2"][1]
    assert torch.equal(fc2_out, fc2_out.round())
    assert torch.all(fc2_out.remainder(2) == 0)


def test_binary_vggnet7_activations_are_pm1():
    model = vgg("binary_cifar10", width=0.125)
    names = [f"act{i}" for i in range(1, 9)]
    calls, _ = record(model, names)
    model(torch.randn(2, 3, 32, 32))
    assert [c[0] for c in calls] == names
    for name, _, _, out in calls:
        assert set(out.unique().tolist()) == {-1.0, 1.0}, name


@pytest.mark.parametrize("estimator", ["vanilla", "bireal", "swish"])
def test_estimator_reaches_activation_layers(estimator):
    model = lenet(estimator=estimator, swish_beta=5.0)
    assert {getattr(model, f"act{i}").estimator for i in (1, 2, 3)} == {estimator}
    assert model.act1.beta == 5.0


# --------------------------------------------------------------------------- the registry's option check

EVERY_CONFIG = sorted((Path(__file__).resolve().parents[1] / "config").rglob("*.yml"))


@pytest.mark.parametrize("path", [p for p in EVERY_CONFIG if "\nmodel:" in p.read_text()], ids=lambda p: p.stem)
def test_every_shipped_config_sets_only_options_its_model_reads(path):
    model = load_experiment(path).model
    check_options(model, MODELS[model.arch].OPTIONS)


@pytest.mark.parametrize("arch, key, value", [("lenet5", "hidden", 256), ("vggnet7", "xnor_scale", "tensor"),
                                              ("mlp", "layer_order", "CBAP"), ("binarynet", "estimator", "swish")])
def test_a_key_the_model_does_not_read_is_one_clear_error(arch, key, value):
    cfg = ModelConfig(arch=arch, **{key: value})
    with pytest.raises(ValueError, match=f"model.{key} = {value!r} is not an option of model '{arch}'"):
        build_model(cfg, in_channels=3, num_classes=10, image_size=32)
