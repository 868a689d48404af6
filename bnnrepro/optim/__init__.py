"""Optimizers and learning-rate schedules for latent-weight training.

Latent weights are ordinary parameters here: torch's SGD and Adam update them with the STE
gradient, and the training loop clips them afterwards. Methods with their own update rule
(Bop, SGDAT, flip optimizers) live in sibling modules in the style of torch.optim.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from bnnrepro.config import OptimConfig

OPTIMIZERS = ("sgd", "adam")
REGULARIZATIONS = ("l2", "bin")


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.regularization not in REGULARIZATIONS:
        raise ValueError(f"optim.regularization must be one of {REGULARIZATIONS}, got '{cfg.regularization}'")
    if len(cfg.lr_milestones) != len(cfg.lr_decay):
        raise ValueError(f"optim.lr_milestones ({cfg.lr_milestones}) and optim.lr_decay ({cfg.lr_decay}) "
                         "must have the same length")
    # coupled L2 goes into the optimizer; the `bin` regularizer is added to the loss instead
    weight_decay = cfg.weight_decay if cfg.regularization == "l2" else 0.0
    if cfg.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=weight_decay)
    raise ValueError(f"Unknown optimizer '{cfg.name}'. Valid optimizers: {OPTIMIZERS}")


def lr_at_epoch(cfg: OptimConfig, epoch: int) -> float:
    """RWTH schedule: at the start of each 1-based milestone epoch, lr is multiplied by its decay."""
    return cfg.lr * math.prod(d for m, d in zip(cfg.lr_milestones, cfg.lr_decay) if epoch >= m)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
