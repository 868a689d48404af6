"""LeNet5 of the RWTH "Efficient Binary Neural Networks" code (docs/rwth.md#lenet5), float and binary.

    conv1 1->32w 5x5 pad 2 -> [pool] -> BN -> act        28 -> 14
    conv2 32w->64w 5x5     -> [pool] -> BN -> act        14 -> 10 -> 5
    fc1   64w*25 -> 512    -> BN -> act
    fc2   512 -> classes   -> BN(affine=False)

The float preset is CBAP with ReLU, biases and fp weights; the binary preset CPBA with sign
activations (hardtanh STE), no biases and binary weights in all four layers.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bnnrepro.models.common import (ModelConfig, activation_layers, conv_block, norm1d, norm2d, output_norm,
                                    weight_precisions, xavier_init_)
from bnnrepro.nn.layers import QuantConv2d, QuantLinear


class LeNet5(nn.Module):
    # the ModelConfig keys it reads; build_model checks that every other one keeps its default
    OPTIONS = ("weights", "activations", "estimator", "swish_beta", "sign_rule", "layer_order", "bias", "batchnorm",
               "width", "first_layer_fp", "last_layer_fp", "ternary_weights", "ternary_acts", "padding", "bn_scale",
               "last_bn_shift")

    def __init__(self, cfg: ModelConfig, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        if image_size != 28:
            raise ValueError(f"LeNet5 expects 28x28 images, got {image_size}x{image_size}")
        if cfg.padding != "rwth":
            raise ValueError(f"model.padding '{cfg.padding}' is a VGGNet7 option: LeNet5 only has 'rwth'")
        c1, c2 = int(32 * cfg.width), int(64 * cfg.width)
        p = weight_precisions(cfg, 4)
        bias = [cfg.bias or prec == "fp" for prec in p]
        rule = cfg.sign_rule
        self.order = cfg.layer_order
        self.conv1 = QuantConv2d(in_channels, c1, 5, padding=2, bias=bias[0], precision=p[0], sign_rule=rule)
        self.bn1 = norm2d(cfg, c1)
        self.conv2 = QuantConv2d(c1, c2, 5, bias=bias[1], precision=p[1], sign_rule=rule)
        self.bn2 = norm2d(cfg, c2)
        self.fc1 = QuantLinear(c2 * 5 * 5, 512, bias=bias[2], precision=p[2], sign_rule=rule)
        self.bn3 = norm1d(cfg, 512)
        self.fc2 = QuantLinear(512, num_classes, bias=bias[3], precision=p[3], sign_rule=rule)
        self.bn4 = output_norm(cfg, num_classes)
        self.act1, self.act2, self.act3 = activation_layers(cfg, 3)
        self.pool = nn.MaxPool2d(2)
        xavier_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = conv_block(x, self.conv1, self.bn1, self.act1, self.pool, self.order)  # (B, 32w, 14, 14)
        x = conv_block(x, self.conv2, self.bn2, self.act2, self.pool, self.order)  # (B, 64w, 5, 5)
        x = self.act3(self.bn3(self.fc1(x.flatten(1))))
        return self.bn4(self.fc2(x))
