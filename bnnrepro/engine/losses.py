"""Losses of the reproduced papers."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bnnrepro.nn.layers import quantized_layers

LOSSES = ("cross_entropy", "squared_hinge")


def squared_hinge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """RWTH SquareHingeLoss: one-hot targets mapped to +-1, per sample sum_c max(0, 1 - t_c y_c)^2, batch mean."""
    targets = F.one_hot(labels, logits.shape[1]).to(logits.dtype) * 2 - 1
    return F.relu(1 - targets * logits).pow(2).sum(1).mean()


def loss_function(name: str):
    if name == "cross_entropy":
        return F.cross_entropy
    if name == "squared_hinge":
        return squared_hinge
    raise ValueError(f"Unknown loss '{name}'. Valid losses: {LOSSES}")


def bin_regularizer(model: nn.Module) -> torch.Tensor:
    """RWTH `bin` regularizer: sum over latent weights of (1 - w^2), which pushes |w| towards 1."""
    return sum((1 - layer.weight.pow(2)).sum() for layer in quantized_layers(model))
