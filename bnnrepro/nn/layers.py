"""Quantized layers: one Linear and one Conv2d whose weight precision is a constructor argument.

The parameter `weight` holds the latent (real-valued) weight; every forward quantizes it. The
optimizer updates the latent weight with the STE gradient and the training loop clips it to
[-1, 1] afterwards (`clip_latent_weights_`), which is what the RWTH and BinaryNet codes do with
their `weight.org` copies, without the copies.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from bnnrepro.nn.quantizers import (TERNARY_ACT_K, WEIGHT_SCALES, binarize, get_estimator, get_sign_rule,
                                    quantize_weight, sign, ternarize_ste)
from bnnrepro.nn.saved_bits import ESTIMATORS as BIT_SAVING_ESTIMATORS
from bnnrepro.nn.saved_bits import (binarize_saving_bits, conv2d_freeing_input, mark_signs, signs_saved_as_bits,
                                    torch_layers_saving_less)
from bnnrepro.nn.recompute import recomputed_blocks

PRECISIONS = ("fp", "binary", "ternary")


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown weight precision '{precision}'. Valid: {PRECISIONS}")
    return precision


def _check_sign_rule(rule: str) -> str:
    get_sign_rule(rule)  # one clear error for an unknown name
    return rule


def _rule_repr(rule: str) -> str:
    return f", sign_rule={rule}" if rule != "zero_positive" else ""


class QuantLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, precision: str = "binary",
                 sign_rule: str = "zero_positive"):
        super().__init__(in_features, out_features, bias=bias)
        self.precision = _check_precision(precision)
        self.sign_rule = _check_sign_rule(sign_rule)  # of binary weights (see quantizers.SIGN_RULES)
        self.save_bits = False  # set by compact_saved_activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = quantize_weight(self.weight, self.precision, rule=self.sign_rule)
        return F.linear(x, mark_signs(weight) if self.save_bits else weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, precision={self.precision}{_rule_repr(self.sign_rule)}"


class QuantConv2d(nn.Conv2d):
    """Conv2d with quantized weights. padding="same_replicate" is TensorFlow's SAME padding filled
    with edge values (RWTH VGGNet7's conv2-6: an odd total puts the extra row/column bottom/right)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | str = 0, bias: bool = True, precision: str = "binary", scale: str = "none",
                 sign_rule: str = "zero_positive"):
        self.same_replicate = padding == "same_replicate"
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=0 if self.same_replicate else padding, bias=bias)
        self.precision = _check_precision(precision)
        if scale not in WEIGHT_SCALES or (scale != "none" and precision != "binary"):
            raise ValueError(f"weight scale '{scale}' is not valid for {precision} weights. Valid for binary "
                             f"weights: {WEIGHT_SCALES}; other precisions: 'none'")
        self.scale = scale  # XNOR-Net's alpha = mean|W| per tensor or per output channel (see quantizers)
        self.sign_rule = _check_sign_rule(sign_rule)  # of binary weights (see quantizers.SIGN_RULES)
        self.save_bits = False  # set by compact_saved_activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_replicate:
            x = replicate_pad(x, *same_padding(x.shape[-2:], self.kernel_size, self.stride))
        weight = quantize_weight(self.weight, self.precision, self.scale, self.sign_rule)
        if self.save_bits:
            weight = mark_signs(weight)
            if self.padding_mode == "zeros" and isinstance(self.padding, tuple):  # numeric padding, no padding layer
                return conv2d_freeing_input(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self._conv_forward(x, weight, self.bias)

    def extra_repr(self) -> str:
        pad = ", padding=same_replicate" if self.same_replicate else ""
        scale = f", scale={self.scale}" if self.scale != "none" else ""
        return f"{super().extra_repr()}{pad}, precision={self.precision}{scale}{_rule_repr(self.sign_rule)}"


def same_padding(size, kernel, stride) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) of TF-style SAME padding: the output has ceil(size / stride) positions; an odd
    total puts the extra pixel at the end."""
    pads = []
    for n, k, s in zip(size, kernel, stride):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return (left, right, top, bottom)


def replicate_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Edge padding from slices and concatenation: the same values as F.pad(mode="replicate"), but its
    backward is deterministic on CUDA too (ReplicationPad2d's backward is not)."""
    rows = [x[..., :1, :].expand(*x.shape[:-2], top, x.shape[-1]), x,
            x[..., -1:, :].expand(*x.shape[:-2], bottom, x.shape[-1])]
    x = torch.cat(rows, dim=-2)
    cols = [x[..., :1].expand(*x.shape[:-1], left), x, x[..., -1:].expand(*x.shape[:-1], right)]
    return torch.cat(cols, dim=-1)


class QuantAct(nn.Module):
    """Activation quantizer: sign (precision "binary", with `sign_rule`) or ternary, with the chosen STE."""

    def __init__(self, precision: str = "binary", estimator: str = "bnn", beta: float = 10.0,
                 sign_rule: str = "zero_positive"):
        super().__init__()
        if precision not in ("binary", "ternary"):
            raise ValueError(f"Unknown activation precision '{precision}'. Valid: ('binary', 'ternary')")
        self.precision, self.beta = precision, beta
        self.estimator = get_estimator(estimator).name  # one clear error for an unknown name
        self.sign_rule = _check_sign_rule(sign_rule)
        self.save_bits = False  # set by compact_saved_activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.save_bits:
            return binarize_saving_bits(x, self.estimator, self.sign_rule)
        if self.precision == "binary":
            return binarize(x, self.estimator, self.beta, self.sign_rule)
        return ternarize_ste(x, TERNARY_ACT_K, self.estimator, self.beta)

    def extra_repr(self) -> str:
        return f"precision={self.precision}, estimator={self.estimator}{_rule_repr(self.sign_rule)}"


def is_quantized(module: nn.Module) -> bool:
    """A layer whose `weight` is a latent weight (binary or ternary)."""
    return isinstance(module, (QuantLinear, QuantConv2d)) and module.precision != "fp"


@contextmanager
def compact_saved_activations(model: nn.Module):
    """Within: the binary activations of `model` whose STE allows it, and the +-1 weights of its binary
    layers (XNOR-scaled ones are not +-1), save 1 bit per value for backward, and so do the layers they
    feed; Hardtanh and max pooling save less too (nn/saved_bits.py). The same values, forward and backward."""
    switched = [m for m in model.modules() if isinstance(m, QuantAct) and m.precision == "binary"
                and m.estimator in BIT_SAVING_ESTIMATORS]
    switched += [layer for layer in quantized_layers(model)
                 if layer.precision == "binary" and getattr(layer, "scale", "none") == "none"]
    for m in switched:
        m.save_bits = True
    try:
        with signs_saved_as_bits(), torch_layers_saving_less(model):
            yield
    finally:
        for m in switched:
            m.save_bits = False


@contextmanager
def memory_efficient_activations(model: nn.Module):
    """What train.memory_efficient saves for backward (docs/memory.md): compact saved activations, and the
    blocks the model names run again in backward instead of keeping their insides. Used by the training
    loop and by the memory report, so both measure the same step."""
    with compact_saved_activations(model), recomputed_blocks(model):
        yield


def quantized_layers(model: nn.Module):
    """The layers whose `weight` is a latent weight (binary or ternary)."""
    return [m for m in model.modules() if is_quantized(m)]


@torch.no_grad()
def clip_latent_weights_(model: nn.Module, bound: float = 1.0) -> None:
    for layer in quantized_layers(model):
        layer.weight.clamp_(-bound, bound)


# The "zero" latent init: small enough that the first SGD or Adam step overwrites it exactly (in fp32,
# 1e-20 - lr g rounds to -lr g whenever |lr g| > ~1e-13), large enough to keep the initial signs.
ZERO_LATENT = 1e-20


@torch.no_grad()
def init_latent_weights_(model: nn.Module, mode: str) -> None:
    """`model`: keep the layers' own initialisation. `zero`: the SGDAT code's latent weights start at 0
    while its first forward still uses the signs of the random init (docs/sgdat.md#zero-latent-init). Exact zeros would
    make every weight +1 in that first forward: identical units whose symmetry training never breaks.
    So each latent becomes ZERO_LATENT * sign(init), zero for the optimizer, the init's sign for the forward."""
    if mode == "zero":
        for layer in quantized_layers(model):
            layer.weight.copy_(ZERO_LATENT * sign(layer.weight))
    elif mode != "model":
        raise ValueError(f"Unknown latent init '{mode}'. Valid: ('model', 'zero')")
