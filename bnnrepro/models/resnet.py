"""The binary "ResNet-18" of the SGDAT code (docs/sgdat.md#resnet-18; gushan/SGDAT models/resnet_binary.py).

Not torchvision's ResNet-18: a CIFAR-style ResNet of 3 stages x 2 BasicBlocks (the public code's depth
18 gives (18 - 2) // 6 = 2 blocks per stage), 80/160/320 channels (16, 32, 64 times inflate 5).

    conv1   3->80 3x3, fp, no bias -> BN -> Hardtanh                         H
    layer1  2 blocks,  80 channels                                           H
    layer2  2 blocks, 160 channels, the first with stride 2                  H/2
    layer3  2 blocks, 320 channels, the first with stride 2; the last block  H/4
            ends without BN and Hardtanh
    head    AvgPool2d(8) -> flatten -> BN1d -> Hardtanh -> fc, fp with bias -> BN1d(classes) (affine)

    BasicBlock(x), x a real-valued Hardtanh output:
        h   = hardtanh(bn1(conv1(sgn(x))))                 conv1 3x3 with the block's stride
        out = conv2(sgn(h)) + shortcut(x)                  no BN between conv2 and the add
        shortcut(x) = x (real-valued), or bn(conv1x1(sgn(x))) with the block's stride when the shape changes
        return hardtanh(bn2(out)), or out for the last block of layer3

Block convs and shortcut convs have binary weights and binarized inputs (`input_binarizer`); the
residual adds the real value. CIFAR 32x32: layer3 gives 8x8 maps, pooled to 1x1, so fc sees 320
features; Tiny ImageNet 64x64: 16x16 pooled to 2x2, 1280 features. 4.33 M binary weights.
Initialisation: block and shortcut conv weights N(0, 2 / (k^2 out)), BatchNorm weight 1 and bias 0,
PyTorch's default for conv1 and fc. The public LogSoftmax is dropped (docs/sgdat.md#logsoftmax): the model returns logits.

The SGDAT code keeps conv1 and fc in full precision: set model.first_layer_fp and model.last_layer_fp
(docs/sgdat.md#first-and-last-layers); without them they get binary weights (conv1 still sees the real image). model.width
multiplies all channel counts.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn as nn

from bnnrepro.models.common import ModelConfig, input_binarizer, weight_precisions
from bnnrepro.nn.layers import QuantConv2d, QuantLinear

STAGES = [(80, 1), (160, 2), (320, 2)]  # (out channels at width 1, stride of the first block)
BLOCKS_PER_STAGE = 2


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, precision: str, bias: bool,
                 bn_hardtanh: bool = True):
        super().__init__()
        self.binarize1 = input_binarizer(precision, sees_image=False)
        self.conv1 = QuantConv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias, precision=precision)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.binarize2 = input_binarizer(precision, sees_image=False)
        self.conv2 = QuantConv2d(out_channels, out_channels, 3, padding=1, bias=bias, precision=precision)
        self.hardtanh = nn.Hardtanh()
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(OrderedDict(
                binarize=input_binarizer(precision, sees_image=False),
                conv=QuantConv2d(in_channels, out_channels, 1, stride=stride, bias=bias, precision=precision),
                bn=nn.BatchNorm2d(out_channels)))
        # the public code builds bn2 in the last block too but never uses it: left out here
        self.bn2 = nn.BatchNorm2d(out_channels) if bn_hardtanh else nn.Identity()
        self.out_hardtanh = nn.Hardtanh() if bn_hardtanh else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        h = self.hardtanh(self.bn1(self.conv1(self.binarize1(x))))
        out = self.conv2(self.binarize2(h)) + shortcut
        return self.out_hardtanh(self.bn2(out))


class ResNetSGDAT(nn.Module):
    # the ModelConfig keys it reads; build_model checks that every other one keeps its default
    OPTIONS = ("weights", "first_layer_fp", "last_layer_fp", "bias", "width")

    def __init__(self, cfg: ModelConfig, in_channels: int = 3, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        if image_size % 32:
            raise ValueError(f"ResNetSGDAT pools 8x8 windows of its H/4 maps: the image size must be a multiple "
                             f"of 32, got {image_size}x{image_size}")
        stem, body, head = weight_precisions(cfg, 3)  # conv1, every block and shortcut conv, fc
        channels = int(STAGES[0][0] * cfg.width)
        self.conv1 = QuantConv2d(in_channels, channels, 3, padding=1, bias=cfg.bias, precision=stem)
        self.bn1 = nn.BatchNorm2d(channels)
        self.hardtanh = nn.Hardtanh()
        for s, (width, stride) in enumerate(STAGES):
            out = int(width * cfg.width)
            blocks = []
            for b in range(BLOCKS_PER_STAGE):
                very_last = s == len(STAGES) - 1 and b == BLOCKS_PER_STAGE - 1  # ends without BN and Hardtanh
                blocks.append(BasicBlock(channels, out, stride if b == 0 else 1, body, cfg.bias,
                                         bn_hardtanh=not very_last))
                channels = out
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AvgPool2d(8)
        features = channels * (image_size // 32) ** 2
        self.bn2 = nn.BatchNorm1d(features)
        self.binarize_fc = input_binarizer(head, sees_image=False)
        self.fc = QuantLinear(features, num_classes, bias=cfg.bias or head == "fp", precision=head)
        self.bn3 = nn.BatchNorm1d(num_classes)
        self._init_block_convs()

    def _init_block_convs(self) -> None:
        """He-normal on the convs the public code binarizes (its init_model skips the fp conv1 and fc)."""
        for m in self.modules():
            if isinstance(m, QuantConv2d) and m is not self.conv1:
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hardtanh(self.bn1(self.conv1(x)))  # (B, 80, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 320, H/4, W/4), real-valued
        x = self.avgpool(x).flatten(1)  # (B, 320 (H/32)^2)
        x = self.hardtanh(self.bn2(x))
        return self.bn3(self.fc(self.binarize_fc(x)))
