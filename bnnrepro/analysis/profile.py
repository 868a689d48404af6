"""Per-layer memory and compute profile of a network, in the manner of larq's model summary.

For every weight layer: how many parameters are stored at 1 bit (binary weights), 2 bits (ternary)
and 32 bits (everything else, BatchNorm statistics included); the multiply-accumulates split by
the precision of both operands (a MAC is binary only when its weight and its input are 1-bit);
and the model's size at fp32 against its size at the real precision of each tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from bnnrepro.nn.layers import QuantConv2d, QuantLinear

WEIGHT_BITS = {"fp": 32, "binary": 1, "ternary": 2}


@dataclass
class LayerProfile:
    name: str
    kind: str
    weight_bits: int
    input_bits: int
    params_1bit: int
    params_2bit: int
    params_32bit: int
    macs_binary: int  # both operands 1-bit: XNOR-popcount
    macs_fp: int      # any other MAC (a ternary MAC counts here too)

    @property
    def bits(self) -> int:
        return self.params_1bit + 2 * self.params_2bit + 32 * self.params_32bit

    @property
    def fp32_bits(self) -> int:
        return 32 * (self.params_1bit + self.params_2bit + self.params_32bit)


def value_bits(x: torch.Tensor) -> int:
    """Precision a tensor's values need: 1 for +-1 only, 2 for -1/0/+1, else 32."""
    if torch.all(x.abs() == 1):
        return 1
    if torch.all((x == 0) | (x.abs() == 1)):
        return 2
    return 32


def _layer_macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return out[0].numel() * per_output  # one image
    return module.in_features * module.out_features


def _state_counts(module: nn.Module, weight_bits: int) -> tuple[int, int, int]:
    """Parameters and buffers of one module by storage precision (num_batches_tracked left out)."""
    counts = {1: 0, 2: 0, 32: 0}
    for name, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
        if name == "num_batches_tracked":
            continue
        counts[weight_bits if name == "weight" else 32] += t.numel()
    return counts[1], counts[2], counts[32]


@torch.no_grad()
def profile_model(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerProfile]:
    """Profile every module that holds state, in forward order, from one forward pass of zeros+noise."""
    records: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: records.append((n, m, i[0], o)))
             for n, m in model.named_modules() if next(iter(m.parameters(recurse=False)), None) is not None
             or next(iter(m.buffers(recurse=False)), None) is not None]
    was_training = model.training
    model.eval()
    try:
        # two images: BatchNorm with batch statistics (the BWS / BinSFO MLPs) needs more than one
        model(torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    layers = []
    for name, module, x, out in records:
        quantized = isinstance(module, (QuantConv2d, QuantLinear))
        wbits = WEIGHT_BITS[module.precision] if quantized else 32
        p1, p2, p32 = _state_counts(module, wbits)
        is_weight_layer = isinstance(module, (nn.Conv2d, nn.Linear))
        macs = _layer_macs(module, out) if is_weight_layer else 0
        ibits = value_bits(x) if is_weight_layer else 32
        binary = macs if (wbits == 1 and ibits == 1) else 0
        layers.append(LayerProfile(name, type(module).__name__, wbits, ibits, p1, p2, p32, binary, macs - binary))
    return layers
