"""VGGNet7 of the RWTH code (spec A.5), after larq's "BinaryNet advanced CIFAR-10" example.

    conv1 3->128a 3x3 valid                  32 -> 30
    conv2 128a->128a SAME(replicate) + pool  30 -> 15
    conv3 128a->256a, conv4 256a->256a+pool  15 -> 7
    conv5 256a->512a, conv6 512a->512a+pool   7 -> 3
    fc1 512a*9 -> 1024, fc2 1024 -> 1024, fc3 1024 -> classes -> BN(affine=False)

a = width. By default every weight layer is binary, first and last included.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bnnrepro.models.common import (ModelConfig, activation_layers, conv_block, norm1d, norm2d,
                                    weight_precisions, xavier_init_)
from bnnrepro.nn.layers import QuantConv2d, QuantLinear

# (out channels as multiples of 128*width, pool after the conv)
CONVS = [(1, False), (1, True), (2, False), (2, True), (4, False), (4, True)]


class VGGNet7(nn.Module):
    def __init__(self, cfg: ModelConfig, in_channels: int = 3, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        if image_size != 32:
            raise ValueError(f"VGGNet7 expects 32x32 images, got {image_size}x{image_size}")
        p = weight_precisions(cfg, 9)
        bias = [cfg.bias or prec == "fp" for prec in p]
        acts = activation_layers(cfg, 8)
        self.order = cfg.layer_order
        self.pool = nn.MaxPool2d(2)
        self.pool_after = [pool for _, pool in CONVS]
        channels = in_channels
        for i, (mult, _) in enumerate(CONVS):
            out = int(128 * mult * cfg.width)
            padding = 0 if i == 0 else "same_replicate"
            setattr(self, f"conv{i + 1}", QuantConv2d(channels, out, 3, padding=padding, bias=bias[i], precision=p[i]))
            setattr(self, f"bn{i + 1}", norm2d(cfg, out))
            setattr(self, f"act{i + 1}", acts[i])
            channels = out
        self.fc1 = QuantLinear(channels * 3 * 3, 1024, bias=bias[6], precision=p[6])
        self.bn7 = norm1d(cfg, 1024)
        self.act7 = acts[6]
        self.fc2 = QuantLinear(1024, 1024, bias=bias[7], precision=p[7])
        self.bn8 = norm1d(cfg, 1024)
        self.act8 = acts[7]
        self.fc3 = QuantLinear(1024, num_classes, bias=bias[8], precision=p[8])
        self.bn9 = norm1d(cfg, num_classes, affine=False)
        xavier_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, pool in enumerate(self.pool_after, start=1):
            conv, bn, act = getattr(self, f"conv{i}"), getattr(self, f"bn{i}"), getattr(self, f"act{i}")
            x = conv_block(x, conv, bn, act, self.pool if pool else None, self.order)
        x = self.act7(self.bn7(self.fc1(x.flatten(1))))  # (B, 512a * 3 * 3) -> (B, 1024)
        x = self.act8(self.bn8(self.fc2(x)))
        return self.bn9(self.fc3(x))
