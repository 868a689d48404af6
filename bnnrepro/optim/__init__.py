"""Optimizers and learning-rate schedules for latent-weight training.

Latent weights are ordinary parameters here: torch's SGD and Adam update them with the STE
gradient, and the training loop clips them afterwards. Methods with their own update rule
(Bop and Bop2ndOrder in bop.py, SGDAT in sgdat.py, later the flip optimizers) live in sibling
modules in the style of torch.optim. They are tested against hand-computed steps but not yet wired
into configs: that needs the binary / full-precision parameter split of the SGDAT paper (issue 4).
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
    if not 0 < cfg.lr_exp_decay <= 1:
        raise ValueError(f"optim.lr_exp_decay must be in (0, 1], got {cfg.lr_exp_decay}")
    if cfg.grad_clip < 0:
        raise ValueError(f"optim.grad_clip must be >= 0 (0: no clipping), got {cfg.grad_clip}")
    # coupled L2 goes into the optimizer; the `bin` regularizer is added to the loss instead
    weight_decay = cfg.weight_decay if cfg.regularization == "l2" else 0.0
    if cfg.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=weight_decay)
    raise ValueError(f"Unknown optimizer '{cfg.name}'. Valid optimizers: {OPTIMIZERS}")


def lr_at_epoch(cfg: OptimConfig, epoch: int) -> float:
    """lr of the 1-based `epoch`. RWTH schedule: at the start of each milestone epoch, lr is multiplied
    by its decay. Exponential decay (BinaryNet, Anderson & Berg): times lr_exp_decay ** (epoch - 1).
    (With the default lr_exp_decay 1.0 the product is exactly the milestone schedule.)"""
    step = cfg.lr * math.prod(d for m, d in zip(cfg.lr_milestones, cfg.lr_decay) if epoch >= m)
    return step * cfg.lr_exp_decay ** (epoch - 1)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
