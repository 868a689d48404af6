"""The loop every per-weight optimizer shares (closure, then one update per parameter with a gradient),
and the in-place sign flip of the optimizers that own binary weights."""

from __future__ import annotations

import torch
from torch.optim import Optimizer


class PerParameterOptimizer(Optimizer):
    """Subclasses implement `update(p, state, group)`: the rule for one parameter, in place."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.update(p, self.state[p], group)
        return loss

    def update(self, p: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError


def flip_where_(b: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """b <- -b where flip, in place, for b holding exactly +-1. Returns flip.

    flip: 1 where b flips and 0 elsewhere, in b's dtype, best written by a comparison into a scratch
    tensor of that dtype (torch.gt(x, t, out=x)), which the CPU runs about three times faster than a
    bool comparison and its conversion; a bool mask works too. b - 2 b flip is exact for b = +-1, and
    one vectorised kernel; torch.where(flip, -b, b) is about four times slower on the CPU."""
    b.addcmul_(b, flip if flip.dtype == b.dtype else flip.to(b.dtype), value=-2)
    return flip
