"""BinaryNet, the VGG-style network of the SGDAT code (docs/sgdat.md#binarynet; gushan/SGDAT models/binarynet.py), for
CIFAR-10/100 (32x32) and Tiny ImageNet (64x64).

    conv1 3->128, fp with bias         -> BN -> Hardtanh                  8S x 8S
    conv2 128->128                     -> pool -> BN -> Hardtanh          4S
    conv3 128->256                     -> BN -> Hardtanh
    conv4 256->256                     -> pool -> BN -> Hardtanh          2S
    conv5 256->512                     -> BN -> Hardtanh
    conv6 512->512                     -> pool -> BN -> Hardtanh          S
    fc1   512 S^2 -> 1024              -> BN -> Hardtanh
    fc2   1024 -> 1024                 -> BN -> Hardtanh
    fc3   1024 -> classes, fp with bias -> BN(affine=False)

All convs are 3x3 with zero padding 1; pools are 2x2 max pools placed before BatchNorm. S = image_size / 8:
4 on CIFAR (fc1 sees 8192 features), 8 on Tiny ImageNet (32768). conv2-6, fc1 and fc2 have binary
weights, no bias, and binarized inputs (the sign of the previous Hardtanh, see `input_binarizer`):
14.0 M binary weights on CIFAR, 39.2 M on Tiny ImageNet. PyTorch's default initialisation.

The public model ends in LogSoftmax before a cross-entropy loss; log-softmax of log-softmax changes
nothing, so the model returns the logits and the loss applies log-softmax once (docs/sgdat.md#logsoftmax).

The SGDAT code keeps conv1 and fc3 in full precision: set model.first_layer_fp and model.last_layer_fp
(docs/sgdat.md#first-and-last-layers). Without them both get binary weights as in BinaryNet.pytorch (conv1 still sees the real
image, fc3 then sees binarized activations). model.width multiplies the channels of conv1-5 (the public
infl_ratio, 1 in the SGDAT code); conv6 stays at 512 channels, as there.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bnnrepro.models.common import ModelConfig, input_binarizer, weight_precisions
from bnnrepro.nn.layers import QuantConv2d, QuantLinear

# (out channels at width 1, max pool after the conv)
CONVS = [(128, False), (128, True), (256, False), (256, True), (512, False), (512, True)]


class BinaryNet(nn.Module):
    # the ModelConfig keys it reads; build_model checks that every other one keeps its default
    OPTIONS = ("weights", "first_layer_fp", "last_layer_fp", "bias", "width")

    def __init__(self, cfg: ModelConfig, in_channels: int = 3, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"BinaryNet halves the image three times: its size must be a multiple of 8, "
                             f"got {image_size}x{image_size}")
        p = weight_precisions(cfg, 9)
        bias = [cfg.bias or prec == "fp" for prec in p]
        self.pool_after = [pool for _, pool in CONVS]
        channels = in_channels
        for i, (width, _) in enumerate(CONVS):
            out = width if i == len(CONVS) - 1 else int(width * cfg.width)
            setattr(self, f"binarize{i + 1}", input_binarizer(p[i], sees_image=i == 0))
            setattr(self, f"conv{i + 1}", QuantConv2d(channels, out, 3, padding=1, bias=bias[i], precision=p[i]))
            setattr(self, f"bn{i + 1}", nn.BatchNorm2d(out))
            channels = out
        size = image_size // 8
        self.binarize7 = input_binarizer(p[6], sees_image=False)
        self.fc1 = QuantLinear(channels * size * size, 1024, bias=bias[6], precision=p[6])
        self.bn7 = nn.BatchNorm1d(1024)
        self.binarize8 = input_binarizer(p[7], sees_image=False)
        self.fc2 = QuantLinear(1024, 1024, bias=bias[7], precision=p[7])
        self.bn8 = nn.BatchNorm1d(1024)
        self.binarize9 = input_binarizer(p[8], sees_image=False)
        self.fc3 = QuantLinear(1024, num_classes, bias=bias[8], precision=p[8])
        self.bn9 = nn.BatchNorm1d(num_classes, affine=False)
        self.pool = nn.MaxPool2d(2)
        self.hardtanh = nn.Hardtanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, pool in enumerate(self.pool_after, start=1):
            # two statements, so that the float input is freed before the conv runs: when backward needs only
            # its signs (train.memory_efficient), it would otherwise sit beside them and the conv's output,
            # the peak of the whole step
            x = getattr(self, f"binarize{i}")(x)
            x = getattr(self, f"conv{i}")(x)
            x = self.pool(x) if pool else x  # pool the real-valued conv output, before BN
            x = self.hardtanh(getattr(self, f"bn{i}")(x))
        x = x.flatten(1)  # (B, 512, S, S) -> (B, 512 S^2)
        x = self.hardtanh(self.bn7(self.fc1(self.binarize7(x))))
        x = self.hardtanh(self.bn8(self.fc2(self.binarize8(x))))
        return self.bn9(self.fc3(self.binarize9(x)))
