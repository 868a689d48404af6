"""ReActNet-A as AdamBNN trained it, with the classifier head BinSFO fine-tunes (docs/binsfo.md#pretrained-networks).

Sources: liuzechun/AdamBNN step2/reactnet.py (the network of the pretrained checkpoint) and BinSFO's
models/AdamBNN.py (the port with the replaced head). A MobileNet-V1-shaped 1-bit network:

    feature.0    FirstConv: conv1 3x3 stride 2, real weights, no bias -> bn1          H/2
    feature.1-13 BasicBlock(in, out), stage widths 32, 64, 128, 128, 256, 256, 512 x 6, 1024 x 2;
                 stride 2 where the width grows (except 32 -> 64)                     H/32 after feature.12
    pool1        global average pool
    fc           the replaced head: fc.0 Linear(1024 -> classes, no bias) -> fc.1 BatchNorm1d(classes,
                 no affine), freshly initialised (the ImageNet fc.weight / fc.bias are not loaded)

    BasicBlock(x), with move = LearnableBias (a learned per-channel shift) and sgn = binary activation:
        h   = x' + bn1(binary_3x3(sgn(move11(x))))        x' = x, or avgpool2(x) when the block has stride 2
        h   = move13(prelu1(move12(h)))
        s   = sgn(move21(h))
        out = bn2(binary_pw(s)) + h                        in == out
            | cat(bn2_1(binary_pw_down1(s)) + h,
                  bn2_2(binary_pw_down2(s)) + h)           out == 2 in: two 1x1 convs, concatenated
        return move23(prelu2(move22(out)))

Module names are the official ones, so an official state_dict maps onto this model by removing the
"module." prefix that DataParallel added (bnnrepro.models.pretrained). The binary convs are
QuantConv2d(precision="binary"): the optimizers' split into binary and real parameters
(bnnrepro.optim.split_parameters) selects them by module type, as BinSFO selects them by the word
"binary" in their names. The first conv, BatchNorms, PReLUs, moves and the head are real.

Kept from the BinSFO port (docs/binsfo.md#batch-statistics-batchnorm): every BatchNorm normalises with the current batch's statistics,
in evaluation too (track_running_stats=False), since that code never calls eval(); the checkpoint's
running statistics are therefore not loaded. Weight scale (model.xnor_scale, docs/binsfo.md#xnor-scale): "none" as
BinSFO's default, "tensor" as its --xnor, "channel" as AdamBNN's HardBinaryConv; alpha is detached and
the latent weight gets the gradient of the scaled weight (see bnnrepro.nn.quantizers.binarize_scaled).
Activations: sign forward with model.estimator's STE ("bnn", BinSFO's default clipped STE; "bireal" is
AdamBNN's ApproxSign). model.width multiplies every channel count (small test networks).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bnnrepro.models.common import ModelConfig
from bnnrepro.nn.layers import QuantAct, QuantConv2d

STAGE_WIDTHS = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
DOWNSAMPLINGS = 5  # the first conv and the four widening blocks halve the maps


class LearnableBias(nn.Module):
    """ReActNet's "move": adds a learned shift per channel (the shift before sign sets its threshold)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))  # the official shape, so checkpoints load as is

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


def batch_stat_bn2d(channels: int) -> nn.BatchNorm2d:
    """Learned scale and shift, normalised with the batch's statistics in training and evaluation
    (docs/binsfo.md#batch-statistics-batchnorm)."""
    return nn.BatchNorm2d(channels, track_running_stats=False)


def binary_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, scale: str) -> QuantConv2d:
    return QuantConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False,
                       precision="binary", scale=scale)


def binary_activation(cfg: ModelConfig) -> QuantAct:
    return QuantAct("binary", cfg.estimator, cfg.swish_beta)


class FirstConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False)
        self.bn1 = batch_stat_bn2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv1(x))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, cfg: ModelConfig, scale: str):
        super().__init__()
        if out_channels not in (in_channels, 2 * in_channels):
            raise ValueError(f"a ReActNet block keeps or doubles the width, not {in_channels} -> {out_channels}")
        self.move11 = LearnableBias(in_channels)
        self.binary_activation = binary_activation(cfg)
        self.binary_3x3 = binary_conv(in_channels, in_channels, 3, stride, scale)
        self.bn1 = batch_stat_bn2d(in_channels)
        self.pooling = nn.AvgPool2d(2) if stride == 2 else nn.Identity()
        self.move12, self.prelu1, self.move13 = move_prelu_move(in_channels)
        self.move21 = LearnableBias(in_channels)
        self.doubles = out_channels == 2 * in_channels
        if self.doubles:
            self.binary_pw_down1 = binary_conv(in_channels, in_channels, 1, 1, scale)
            self.binary_pw_down2 = binary_conv(in_channels, in_channels, 1, 1, scale)
            self.bn2_1 = batch_stat_bn2d(in_channels)
            self.bn2_2 = batch_stat_bn2d(in_channels)
        else:
            self.binary_pw = binary_conv(in_channels, out_channels, 1, 1, scale)
            self.bn2 = batch_stat_bn2d(out_channels)
        self.move22, self.prelu2, self.move23 = move_prelu_move(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pooling(x) + self.bn1(self.binary_3x3(self.binary_activation(self.move11(x))))
        h = self.move13(self.prelu1(self.move12(h)))
        s = self.binary_activation(self.move21(h))
        if self.doubles:
            out = torch.cat([self.bn2_1(self.binary_pw_down1(s)) + h, self.bn2_2(self.binary_pw_down2(s)) + h], dim=1)
        else:
            out = self.bn2(self.binary_pw(s)) + h
        return self.move23(self.prelu2(self.move22(out)))


def move_prelu_move(channels: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """ReActNet's RPReLU: shift, PReLU, shift."""
    return LearnableBias(channels), nn.PReLU(channels), LearnableBias(channels)


def stem(stage_widths: list[int], in_channels: int, cfg: ModelConfig, scale: str) -> nn.ModuleList:
    """feature.0 (the real first conv) and one BasicBlock per further stage width: a block has stride 2
    where the width grows, except the 32 -> 64 block, as in the official constructor."""
    widths = scaled_widths(stage_widths, cfg.width)
    feature = nn.ModuleList([FirstConv(in_channels, widths[0])])
    for i in range(1, len(widths)):
        grows = stage_widths[i] != stage_widths[i - 1] and stage_widths[i] != 64
        feature.append(BasicBlock(widths[i - 1], widths[i], 2 if grows else 1, cfg, scale))
    return feature


def replaced_head(features: int, num_classes: int) -> nn.Sequential:
    """BinSFO's new classifier: Linear without bias, then BatchNorm of the logits (no affine, batch statistics)."""
    return nn.Sequential(nn.Linear(features, num_classes, bias=False),
                         nn.BatchNorm1d(num_classes, affine=False, track_running_stats=False))


def scaled_widths(widths: list[int], width: float) -> list[int]:
    scaled = [int(w * width) for w in widths]
    if min(scaled) < 4 or any(w % 4 for w in scaled):
        raise ValueError(f"model.width = {width} gives widths {sorted(set(scaled))}: each must be a multiple of 4 "
                         "(BCDNet shifts four channel groups)")
    return scaled


def check_image_size(name: str, image_size: int) -> None:
    if image_size % 2 ** DOWNSAMPLINGS:
        raise ValueError(f"{name} halves the image {DOWNSAMPLINGS} times: its size must be a multiple of "
                         f"{2 ** DOWNSAMPLINGS}, got {image_size}x{image_size}")


class ReActNetA(nn.Module):
    # the ModelConfig keys it reads; build_model checks that every other one keeps its default
    OPTIONS = ("estimator", "swish_beta", "width", "xnor_scale", "pretrained")

    def __init__(self, cfg: ModelConfig, in_channels: int = 3, num_classes: int = 1000, image_size: int = 224):
        super().__init__()
        check_image_size("ReActNet-A", image_size)
        self.feature = stem(STAGE_WIDTHS, in_channels, cfg, cfg.xnor_scale)
        self.pool1 = nn.AdaptiveAvgPool2d(1)
        self.fc = replaced_head(int(STAGE_WIDTHS[-1] * cfg.width), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.feature:
            x = block(x)
        return self.fc(self.pool1(x).flatten(1))  # (B, 1024, H/32, W/32) -> (B, 1024) -> (B, classes)

    def recompute_blocks(self) -> list[nn.Module]:
        """Blocks the memory-efficient step runs again in backward instead of keeping their insides
        (bnnrepro/nn/recompute.py)."""
        return list(self.feature)
