"""BCDNet-A (Xing et al., ECCV 2022) with the classifier head BinSFO fine-tunes (docs/binsfo.md#pretrained-networks).

Sources: Sense-GVT/BCDNet prototype/model/a_3.py (the network of the pretrained "Step2" checkpoint) and
BinSFO's models/BCDNet.py (the port with the replaced head). ReActNet-A's stem up to 1024 channels,
then binary MLP blocks that mix pixels by shifting channel groups:

    feature.0-10   FirstConv and BasicBlocks of ReActNet-A (bnnrepro.models.reactnet), stage widths
                   32, 64, 128, 128, 256, 256, 512 x 4, 1024                          H/32
    mlp_layer.0-2  Block(1024) = mlp_layer.{0,1,2} ShiftBlock + mlp_layer.3 PointBlock
    pool1, fc      global average pool and the replaced head (as ReActNet-A; the official fc and
                   fc_dist classifiers are not loaded)

    ShiftBlock(x):  s   = sgn(move0(x))
                    out = bn1(binary_conv(s) + binary_conv1(shift(s, 1)) + binary_conv2(shift(s, 3))) + x
                    return move2(prelu(move1(out)))
    PointBlock(x):  out = bn1(binary_conv(sgn(move0(x)))) + x;  return move2(prelu(move1(out)))

All convs in the MLP blocks are 1x1 binary convs. shift(s, d) splits the channels into four groups and
rolls them (cyclically, as torch.roll) by +d rows, -d rows, +d columns and -d columns: short-range (d=1)
and long-range (d=3) context at the cost of a 1x1 conv each.

Module names are the official ones (see reactnet.py). model.xnor_scale: "tensor" reaches only the Shift and
Point blocks, as BinSFO's --xnor (its stem BasicBlocks are built without it); "channel" scales every
binary conv, as the official HardBinaryConv does.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bnnrepro.models.common import ModelConfig
from bnnrepro.models.reactnet import (LearnableBias, ReActNetA, batch_stat_bn2d, binary_activation, binary_conv,
                                      check_image_size, move_prelu_move, replaced_head, stem)

STAGE_WIDTHS = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 1024]
MLP_BLOCKS = 3
SHORT_RANGE, LONG_RANGE = 1, 3  # pixels the channel groups are rolled by (the official Shift, GlobalShift)


def shift(x: torch.Tensor, distance: int) -> torch.Tensor:
    """Roll four channel groups by +distance rows, -distance rows, +distance columns, -distance columns."""
    down, up, right, left = x.chunk(4, dim=1)
    return torch.cat([down.roll(distance, dims=2), up.roll(-distance, dims=2),
                      right.roll(distance, dims=3), left.roll(-distance, dims=3)], dim=1)


class ShiftBlock(nn.Module):
    def __init__(self, channels: int, cfg: ModelConfig, scale: str):
        super().__init__()
        self.move0 = LearnableBias(channels)
        self.binary_activation = binary_activation(cfg)
        self.binary_conv = binary_conv(channels, channels, 1, 1, scale)   # on s itself
        self.binary_conv1 = binary_conv(channels, channels, 1, 1, scale)  # on s shifted by 1 pixel
        self.binary_conv2 = binary_conv(channels, channels, 1, 1, scale)  # on s shifted by 3 pixels
        self.bn1 = batch_stat_bn2d(channels)
        self.move1, self.prelu, self.move2 = move_prelu_move(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.binary_activation(self.move0(x))
        mixed = self.binary_conv(s) + self.binary_conv1(shift(s, SHORT_RANGE)) + self.binary_conv2(shift(s, LONG_RANGE))
        return self.move2(self.prelu(self.move1(self.bn1(mixed) + x)))


class PointBlock(nn.Module):
    def __init__(self, channels: int, cfg: ModelConfig, scale: str):
        super().__init__()
        self.move0 = LearnableBias(channels)
        self.binary_activation = binary_activation(cfg)
        self.binary_conv = binary_conv(channels, channels, 1, 1, scale)
        self.bn1 = batch_stat_bn2d(channels)
        self.move1, self.prelu, self.move2 = move_prelu_move(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.binary_conv(self.binary_activation(self.move0(x)))) + x
        return self.move2(self.prelu(self.move1(out)))


class Block(nn.Module):
    """Three ShiftBlocks and a PointBlock (named mlp_layer.0-3, as the official Block)."""

    def __init__(self, channels: int, cfg: ModelConfig, scale: str):
        super().__init__()
        self.mlp_layer = nn.Sequential(*(ShiftBlock(channels, cfg, scale) for _ in range(3)),
                                       PointBlock(channels, cfg, scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp_layer(x)


class BCDNet(nn.Module):
    OPTIONS = ReActNetA.OPTIONS  # the same knobs as ReActNet-A, whose blocks it reuses

    def __init__(self, cfg: ModelConfig, in_channels: int = 3, num_classes: int = 1000, image_size: int = 224):
        super().__init__()
        check_image_size("BCDNet", image_size)
        # BinSFO's --xnor (tensor) skips the stem; the official per-channel scale is everywhere
        self.feature = stem(STAGE_WIDTHS, in_channels, cfg, "channel" if cfg.xnor_scale == "channel" else "none")
        channels = int(STAGE_WIDTHS[-1] * cfg.width)
        self.mlp_layer = nn.Sequential(*(Block(channels, cfg, cfg.xnor_scale) for _ in range(MLP_BLOCKS)))
        self.pool1 = nn.AdaptiveAvgPool2d(1)
        self.fc = replaced_head(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.feature:
            x = block(x)
        x = self.mlp_layer(x)  # (B, 1024, H/32, W/32)
        return self.fc(self.pool1(x).flatten(1))

    def recompute_blocks(self) -> list[nn.Module]:
        """Blocks the memory-efficient step runs again in backward (bnnrepro/nn/recompute.py)."""
        return [*self.feature, *self.mlp_layer]
