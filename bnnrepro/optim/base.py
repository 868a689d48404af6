"""The loop every per-weight optimizer shares (closure, then one update per parameter with a gradient),
the same update made for one parameter inside backward (`updates_in_backward`), and the in-place sign
flip of the optimizers that own binary weights."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch.optim import Optimizer


class PerParameterOptimizer(Optimizer):
    """Subclasses implement `update(p, state, group)`: the rule for one parameter, in place.

    The rule may read only p, its gradient, its own state and its group: nothing computed over other
    parameters. That is what lets `step_parameter` update each parameter on its own, as soon as its
    gradient exists, with the same result as `step()` after the whole backward pass."""

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

    @torch.no_grad()
    def step_parameter(self, p: torch.Tensor, free_grad: bool = False) -> None:
        """The update step() makes of `p`, alone (p.grad must be set). With `free_grad` the gradient is
        dropped afterwards, so the rule may write its scratch values into it (`grad_scratch`)."""
        self._grad_is_scratch = free_grad
        try:
            self.update(p, self.state[p], self.group_of(p))
        finally:
            self._grad_is_scratch = False
        if free_grad:
            p.grad = None

    def grad_scratch(self, p: torch.Tensor) -> torch.Tensor | None:
        """The `out=` of a scratch tensor of p's shape that the rule computes once it has read p.grad for
        the last time: the gradient itself when it is dropped after this update (one tensor of p's size
        fewer at the peak of a step), else None (a new tensor: after step() the gradient stays readable)."""
        return p.grad if getattr(self, "_grad_is_scratch", False) else None

    def group_of(self, p: torch.Tensor) -> dict:
        return next(g for g in self.param_groups if any(q is p for q in g["params"]))

    def update(self, p: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError


@contextmanager
def updates_in_backward(optimizer: PerParameterOptimizer,
                        before_update: Callable[[torch.Tensor], None] | None = None,
                        after_update: Callable[[torch.Tensor], None] | None = None):
    """Within the block, backward updates every parameter of `optimizer` the moment its gradient is
    complete (torch's post-accumulate-grad hook: "optimizer step in backward") and frees that gradient at
    once, so the gradients of all layers never exist together. `before_update(p)` may edit p.grad first
    (element-wise clipping); `after_update(p)` runs once p holds its new value (packing it into bits).
    optimizer.step() then has nothing left to do for these parameters.

    The same values as step() after backward: a parameter's hook runs after every node that reads it has
    made its gradient, and the rules are per parameter (PerParameterOptimizer). Not for DDP, whose
    all-reduce of a gradient completes after this hook."""
    def hook(p: torch.Tensor) -> None:
        if before_update is not None:
            before_update(p)
        optimizer.step_parameter(p, free_grad=True)
        if after_update is not None:
            after_update(p)

    handles = [p.register_post_accumulate_grad_hook(hook) for g in optimizer.param_groups for p in g["params"]]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def flip_where_(b: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """b <- -b where flip, in place, for b holding exactly +-1. Returns flip.

    flip: 1 where b flips and 0 elsewhere, in b's dtype, best written by a comparison into a scratch
    tensor of that dtype (torch.gt(x, t, out=x)), which the CPU runs about three times faster than a
    bool comparison and its conversion; a bool mask works too. b - 2 b flip is exact for b = +-1, and
    one vectorised kernel; torch.where(flip, -b, b) is about four times slower on the CPU."""
    b.addcmul_(b, flip if flip.dtype == b.dtype else flip.to(b.dtype), value=-2)
    return flip
