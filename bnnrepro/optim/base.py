"""The loop every per-weight optimizer shares: closure, then one update per parameter with a gradient."""

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
