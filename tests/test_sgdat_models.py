"""BinaryNet and the binary "ResNet-18" of the SGDAT code (docs/sgdat.md#binarynet, docs/sgdat.md#resnet-18)."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bnnrepro.models import build_model
from bnnrepro.models.common import ModelConfig
from bnnrepro.nn.layers import QuantAct, QuantConv2d, QuantLinear, quantized_layers
from bnnrepro.nn.quantizers import sign

# (num_classes, image_size): CIFAR-10, CIFAR-100, Tiny ImageNet 64x64
DATASETS = [(10, 32), (100, 32), (200, 64)]


def sgdat_cfg(arch: str, **changes) -> ModelConfig:
    """The SGDAT code's setting: first and last layers in full precision."""
    return ModelConfig(arch=arch, first_layer_fp=True, last_layer_fp=True, **changes)


def build(arch: str, classes: int = 10, size: int = 32, **changes) -> nn.Module:
    torch.manual_seed(0)
    return build_model(sgdat_cfg(arch, **changes), 3, classes, size)


@contextmanager
def record_io(model: nn.Module, names: list[str]):
    """Yields name -> (input, output) of the named submodules' last call; removes its hooks afterwards."""
    io = {}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda m, inp, out, name=name: io.__setitem__(name, (inp[0].detach(), out.detach()))) for name in names]
    try:
        yield io
    finally:
        for h in handles:
            h.remove()


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}


def is_pm_one(t: torch.Tensor) -> bool:
    return bool(((t == 1) | (t == -1)).all())


@pytest.fixture(scope="module")
def binarynets():
    return {(c, s): build("binarynet", c, s) for c, s in DATASETS}


@pytest.fixture(scope="module")
def resnets():
    return {(c, s): build("resnet_sgdat", c, s) for c, s in DATASETS}


# ------------------------------------------------------------------ the input binarization rule (C.18)

def test_hardtanh_then_bnn_sign_is_the_public_codes_data_swap():
    """Public code: Hardtanh, then the next layer overwrites input.data with sign (invisible to autograd).
    Ours: Hardtanh, then QuantAct("binary", "bnn"). Same forward, same gradient, boundaries included;
    and the same as sign with the hardtanh STE applied to the BN output directly."""
    x = torch.tensor([-2.0, -1.0, -0.999, -0.3, 0.0, 0.3, 0.999, 1.0, 2.0])
    w = torch.arange(1.0, 10.0)

    def grad_and_value(binarize_after_hardtanh):
        xx = x.clone().requires_grad_(True)
        y = binarize_after_hardtanh(F.hardtanh(xx))
        (w * y).sum().backward()
        return y.detach(), xx.grad

    def data_swap(h):
        h.data = sign(h.data)
        return h

    public = grad_and_value(data_swap)
    ours = grad_and_value(QuantAct("binary", "bnn"))
    identity_ste = grad_and_value(QuantAct("binary", "vanilla"))
    assert torch.equal(public[0], torch.tensor([-1.0, -1, -1, -1, 1, 1, 1, 1, 1]))  # sgn(0) = +1
    assert torch.equal(public[1], w * torch.tensor([0.0, 0, 1, 1, 1, 1, 1, 0, 0]))  # 1[-1 < x < 1], strict
    for other in (ours, identity_ste):
        assert torch.equal(other[0], public[0]) and torch.equal(other[1], public[1])
    xx = x.clone().requires_grad_(True)
    (w * QuantAct("binary", "bnn")(xx)).sum().backward()
    assert torch.equal(xx.grad, public[1])


def test_binarynet_layers_see_binary_inputs_except_first_and_last(binarynets):
    model = binarynets[(10, 32)]
    layers = weight_layers(model)
    image = torch.randn(2, 3, 32, 32)
    with record_io(model, list(layers)) as io:
        model(image)
    assert torch.equal(io["conv1"][0], image)  # the fp first layer sees the real image
    for name in ["conv2", "conv3", "conv4", "conv5", "conv6", "fc1", "fc2"]:
        assert is_pm_one(io[name][0]), name
    last_input = io["fc3"][0]  # the fp last layer sees the real Hardtanh output
    assert last_input.abs().max() <= 1 and not is_pm_one(last_input)
    assert isinstance(model.binarize1, nn.Identity) and isinstance(model.binarize9, nn.Identity)
    assert all(isinstance(getattr(model, f"binarize{i}"), QuantAct) for i in range(2, 9))
    assert model.binarize2.estimator == "bnn"


def test_binarynet_without_fp_flags_is_bnn_pytorch_style():
    """first/last_layer_fp off: binary weights on conv1 (real image input) and fc3 (binarized input)."""
    model = build_model(ModelConfig(arch="binarynet"), 3, 10, 32)
    assert [m.precision for m in weight_layers(model).values()] == ["binary"] * 9
    assert isinstance(model.binarize1, nn.Identity) and isinstance(model.binarize9, QuantAct)
    assert model.conv1.bias is None and model.fc3.bias is None


# ------------------------------------------------------------------------------- BinaryNet (B.4)

@pytest.mark.parametrize("classes, size", DATASETS)
def test_binarynet_shapes(binarynets, classes, size):
    model = binarynets[(classes, size)]
    with record_io(model, [*weight_layers(model), "bn9"]) as io:
        assert model(torch.randn(2, 3, size, size)).shape == (2, classes)
    s = size // 8
    expected = {  # name: (input shape, output shape)
        "conv1": ((2, 3, 8 * s, 8 * s), (2, 128, 8 * s, 8 * s)),
        "conv2": ((2, 128, 8 * s, 8 * s), (2, 128, 8 * s, 8 * s)),  # pooled after the conv
        "conv3": ((2, 128, 4 * s, 4 * s), (2, 256, 4 * s, 4 * s)),
        "conv4": ((2, 256, 4 * s, 4 * s), (2, 256, 4 * s, 4 * s)),
        "conv5": ((2, 256, 2 * s, 2 * s), (2, 512, 2 * s, 2 * s)),
        "conv6": ((2, 512, 2 * s, 2 * s), (2, 512, 2 * s, 2 * s)),
        "fc1": ((2, 512 * s * s), (2, 1024)),
        "fc2": ((2, 1024), (2, 1024)),
        "fc3": ((2, 1024), (2, classes)),
        "bn9": ((2, classes), (2, classes)),
    }
    assert {name: (tuple(i.shape), tuple(o.shape)) for name, (i, o) in io.items()} == expected
    assert model.fc1.in_features == {32: 8192, 64: 32768}[size]


def test_binarynet_pools_before_bn():
    """conv -> pool -> BN -> Hardtanh after conv2, conv4, conv6 (BN sees the pooled map)."""
    model = build("binarynet")
    calls = []
    for name in ["conv2", "pool", "bn2", "conv3", "bn3"]:
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    model(torch.randn(2, 3, 32, 32))
    assert calls[:5] == ["conv2", "pool", "bn2", "conv3", "bn3"]
    assert calls.count("pool") == 3


@pytest.mark.parametrize("classes, size, binary_weights", [(10, 32, 14_008_320), (100, 32, 14_008_320),
                                                           (200, 64, 39_174_144)])
def test_binarynet_binary_and_fp_parameters(binarynets, classes, size, binary_weights):
    model = binarynets[(classes, size)]
    layers = weight_layers(model)
    binary = [name for name, m in layers.items() if m.precision != "fp"]
    assert binary == ["conv2", "conv3", "conv4", "conv5", "conv6", "fc1", "fc2"]
    assert [layers[n] for n in binary] == quantized_layers(model)
    assert all(layers[n].bias is None for n in binary)
    assert sum(layers[n].weight.numel() for n in binary) == binary_weights
    assert round(binary_weights / 1e6, 1) == {32: 14.0, 64: 39.2}[size]  # docs/sgdat.md#binarynet
    # everything else is full precision: conv1 and fc3 with biases, and the BatchNorms
    assert layers["conv1"].precision == layers["fc3"].precision == "fp"
    assert layers["conv1"].bias is not None and layers["fc3"].bias is not None
    binary_ids = {id(layers[n].weight) for n in binary}
    fp_names = {name for name, p in model.named_parameters() if id(p) not in binary_ids}
    assert fp_names == {"conv1.weight", "conv1.bias", "fc3.weight", "fc3.bias",
                        *(f"bn{i}.{k}" for i in range(1, 9) for k in ("weight", "bias"))}
    assert model.bn9.affine is False  # the output BN: running statistics only


def test_binarynet_width_keeps_conv6_at_512():
    model = build("binarynet", width=2.0)
    outs = [weight_layers(model)[f"conv{i}"].out_channels for i in range(1, 7)]
    assert outs == [256, 256, 512, 512, 1024, 512]
    assert model.fc1.in_features == 512 * 16


# ---------------------------------------------------------------------------------- ResNet (B.4)

@pytest.mark.parametrize("classes, size", DATASETS)
def test_resnet_shapes(resnets, classes, size):
    model = resnets[(classes, size)]
    with record_io(model, ["conv1", "layer1", "layer2", "layer3", "avgpool", "bn2", "fc", "bn3"]) as io:
        assert model(torch.randn(2, 3, size, size)).shape == (2, classes)
    h = size
    features = 320 * (size // 32) ** 2
    assert {name: tuple(o.shape) for name, (_, o) in io.items()} == {
        "conv1": (2, 80, h, h), "layer1": (2, 80, h, h), "layer2": (2, 160, h // 2, h // 2),
        "layer3": (2, 320, h // 4, h // 4), "avgpool": (2, 320, size // 32, size // 32),
        "bn2": (2, features), "fc": (2, classes), "bn3": (2, classes)}
    assert features == {32: 320, 64: 1280}[size]
    assert model.bn2.num_features == features and model.fc.in_features == features


def test_resnet_structure(resnets):
    model = resnets[(10, 32)]
    blocks = [b for layer in (model.layer1, model.layer2, model.layer3) for b in layer]
    assert len(blocks) == 6  # 3 stages x 2 BasicBlocks: not torchvision's ResNet-18
    assert [b.downsample is not None for b in blocks] == [False, False, True, False, True, False]
    assert [b.conv1.stride for b in blocks] == [(1, 1), (1, 1), (2, 2), (1, 1), (2, 2), (1, 1)]
    for b in (model.layer2[0], model.layer3[0]):
        conv = b.downsample.conv
        assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and isinstance(b.downsample.binarize, QuantAct)
    # only the last block of layer3 ends without BN and Hardtanh
    assert [isinstance(b.bn2, nn.Identity) for b in blocks] == [False] * 5 + [True]
    assert [isinstance(b.out_hardtanh, nn.Identity) for b in blocks] == [False] * 5 + [True]
    assert model.conv1.bias is None and model.conv1.precision == "fp" and model.conv1.kernel_size == (3, 3)
    assert model.fc.bias is not None and model.fc.precision == "fp" and isinstance(model.binarize_fc, nn.Identity)
    assert model.bn3.affine  # unlike BinaryNet's output BN


def test_resnet_binary_and_fp_parameters(resnets):
    model = resnets[(10, 32)]
    binary = quantized_layers(model)
    assert all(isinstance(m, QuantConv2d) and m.bias is None for m in binary)
    assert len(binary) == 12 + 2  # 2 convs per block, 2 shortcut convs
    # stage 1: 4 x 80*80*9; stage 2: 80*160*9 + 3 x 160*160*9 + 80*160; stage 3: the same with 160 -> 320
    expected = 4 * 80 * 80 * 9 + (80 * 160 * 9 + 3 * 160 * 160 * 9 + 80 * 160) + \
        (160 * 320 * 9 + 3 * 320 * 320 * 9 + 160 * 320)
    assert sum(m.weight.numel() for m in binary) == expected == 4_326_400
    binary_ids = {id(m.weight) for m in binary}
    fp = [name for name, p in model.named_parameters() if id(p) not in binary_ids]
    assert {n for n in fp if not (n.startswith("bn") or ".bn" in n)} == \
        {"conv1.weight", "fc.weight", "fc.bias"}


@torch.no_grad()
def test_resnet_block_forward_by_hand(resnets):
    """out = hardtanh(bn2(conv2(sgn(hardtanh(bn1(conv1(sgn(x)))))) + shortcut(x))), the residual real-valued."""
    model = resnets[(10, 32)].eval()  # eval: BatchNorm with running statistics is a fixed affine map
    torch.manual_seed(1)
    for block in (model.layer1[0], model.layer2[0], model.layer3[1]):
        x = torch.rand(2, block.conv1.in_channels, 8, 8) * 2 - 1  # a Hardtanh output: in [-1, 1]
        h = F.hardtanh(block.bn1(F.conv2d(sign(x), sign(block.conv1.weight), stride=block.conv1.stride, padding=1)))
        out = F.conv2d(sign(h), sign(block.conv2.weight), padding=1)
        if block.downsample is None:
            shortcut = x
        else:
            shortcut = block.downsample.bn(F.conv2d(sign(x), sign(block.downsample.conv.weight), stride=2))
        out = out + shortcut
        expected = out if block is model.layer3[1] else F.hardtanh(block.bn2(out))
        torch.testing.assert_close(block(x), expected)
    model.train()


def test_resnet_init():
    model = build("resnet_sgdat")
    for conv in (model.layer1[0].conv1, model.layer3[1].conv2, model.layer2[0].downsample.conv):
        std = math.sqrt(2 / (conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels))
        assert abs(conv.weight.std().item() / std - 1) < 0.05
        assert abs(conv.weight.mean().item()) < 0.1 * std
    # conv1 keeps PyTorch's default (kaiming-uniform, bound 1/sqrt(fan_in) = 1/sqrt(27))
    assert model.conv1.weight.abs().max() <= 1 / math.sqrt(27)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(bn.weight == 1) and torch.all(bn.bias == 0) for bn in bns)


# ---------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("arch, size", [("binarynet", 28), ("resnet_sgdat", 48)])
def test_rejects_image_sizes(arch, size):
    with pytest.raises(ValueError, match="multiple of"):
        build_model(sgdat_cfg(arch), 3, 10, size)


@pytest.mark.parametrize("arch", ["binarynet", "resnet_sgdat"])
@pytest.mark.parametrize("change", [{"layer_order": "CBAP"}, {"estimator": "vanilla"}, {"activations": "relu"},
                                    {"padding": "same_zeros"}, {"ternary_weights": "1" * 9}, {"bn_scale": False},
                                    {"batchnorm": False}, {"last_bn_shift": True}])
def test_rejects_options_the_models_do_not_have(arch, change):
    key = next(iter(change))
    with pytest.raises(ValueError, match=f"model.{key} .* is not an option of model '{arch}'"):
        build_model(sgdat_cfg(arch, **change), 3, 10, 32)


# ----------------------------------------------------------------------------------- smoke (C.22)

@pytest.mark.parametrize("arch", ["binarynet", "resnet_sgdat"])
@pytest.mark.parametrize("classes, size", DATASETS)
def test_one_training_step_is_finite(binarynets, resnets, arch, classes, size):
    model = (binarynets if arch == "binarynet" else resnets)[(classes, size)]
    model.train()
    model.zero_grad()
    logits = model(torch.randn(2, 3, size, size))
    loss = F.cross_entropy(logits, torch.tensor([0, classes - 1]))  # logits: the loss applies log-softmax
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in (m.weight for m in quantized_layers(model)))
