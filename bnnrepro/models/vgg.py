"""VGGNet7 of the RWTH code (docs/rwth.md#vggnet7), after larq's "BinaryNet advanced CIFAR-10" example.

    conv1 3->128a 3x3 valid                  32 -> 30
    conv2 128a->128a SAME(replicate) + pool  30 -> 15
    conv3 128a->256a, conv4 256a->256a+pool  15 -> 7
    conv5 256a->512a, conv6 512a->512a+pool   7 -> 3
    fc1 512a*9 -> 1024, fc2 1024 -> 1024, fc3 1024 -> classes -> BN(affine=False)

a = width. By default every weight layer is binary, first and last included.

`model.padding: same_zeros` gives the BinaryNet network of Courbariaux et al. and Anderson & Berg
(2x128C3-MP-2x256C3-MP-2x512C3-MP-2x1024FC-10): every conv is 3x3 SAME with zero padding, so the
maps go 32 -> 16 -> 8 -> 4 and fc1 sees 512a*16 = 8192a features.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bnnrepro.models.common import (ModelConfig, activation_layers, conv_block, norm1d, norm2d, output_norm,
                                    weight_precisions, xavier_init_)
from bnnrepro.nn.layers import QuantConv2d, QuantLinear

# (out channels as multiples of 128*width, pool after the conv)
CONVS = [(1, False), (1, True), (2, False), (2, True), (4, False), (4, True)]
PADDINGS = ("rwth", "same_zeros")


def conv_padding(mode: str, index: int) -> int | str:
    """Padding of the conv at 0-based `index` (QuantConv2d's `padding` argument)."""
    if mode == "rwth":
        return 0 if index == 0 else "same_replicate"
    if mode == "same_zeros":
        return 1  # 3x3 SAME with zeros
    raise ValueError(f"model.padding must be one of {PADDINGS}, got '{mode}'")


class VGGNet7(nn.Module):
    # the ModelConfig keys it reads; build_model checks that every other one keeps its default
    OPTIONS = ("weights", "activations", "estimator", "swish_beta", "sign_rule", "layer_order", "bias", "batchnorm",
               "width", "first_layer_fp", "last_layer_fp", "ternary_weights", "ternary_acts", "padding", "bn_scale",
               "last_bn_shift")

    def __init__(self, cfg: ModelConfig, in_channels: int = 3, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        if image_size != 32:
            raise ValueError(f"VGGNet7 expects 32x32 images, got {image_size}x{image_size}")
        p = weight_precisions(cfg, 9)
        bias = [cfg.bias or prec == "fp" for prec in p]
        rule = cfg.sign_rule
        acts = activation_layers(cfg, 8)
        self.order = cfg.layer_order
        self.pool = nn.MaxPool2d(2)
        self.pool_after = [pool for _, pool in CONVS]
        channels, size = in_channels, image_size
        for i, (mult, pool) in enumerate(CONVS):
            out = int(128 * mult * cfg.width)
            padding = conv_padding(cfg.padding, i)
            setattr(self, f"conv{i + 1}", QuantConv2d(channels, out, 3, padding=padding, bias=bias[i], precision=p[i],
                                                         sign_rule=rule))
            setattr(self, f"bn{i + 1}", norm2d(cfg, out))
            setattr(self, f"act{i + 1}", acts[i])
            channels = out
            size = size - 2 if padding == 0 else size  # valid 3x3 loses a border; SAME keeps the size
            size = size // 2 if pool else size
        self.fc1 = QuantLinear(channels * size * size, 1024, bias=bias[6], precision=p[6], sign_rule=rule)
        self.bn7 = norm1d(cfg, 1024)
        self.act7 = acts[6]
        self.fc2 = QuantLinear(1024, 1024, bias=bias[7], precision=p[7], sign_rule=rule)
        self.bn8 = norm1d(cfg, 1024)
        self.act8 = acts[7]
        self.fc3 = QuantLinear(1024, num_classes, bias=bias[8], precision=p[8], sign_rule=rule)
        self.bn9 = output_norm(cfg, num_classes)
        xavier_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, pool in enumerate(self.pool_after, start=1):
            conv, bn, act = getattr(self, f"conv{i}"), getattr(self, f"bn{i}"), getattr(self, f"act{i}")
            x = conv_block(x, conv, bn, act, self.pool if pool else None, self.order)
        x = self.act7(self.bn7(self.fc1(x.flatten(1))))  # (B, 512a * 3 * 3) -> (B, 1024); 4 * 4 with same_zeros
        x = self.act8(self.bn8(self.fc2(x)))
        return self.bn9(self.fc3(x))
