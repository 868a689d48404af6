"""SGDAT: SGD with adaptive thresholds (Gu et al., Neurocomputing 555:126431, 2023; gushan/SGDAT).

Each binary weight b keeps an accumulator m (never clipped) and counts its flips k. The weight takes
the sign of m only when |m| clears a threshold that grows with how often it has already flipped:

    d = g (+ weight_decay * b)
    momentum:  u <- mu u + (1 - dampening) g;  d <- u   (nesterov: d <- d + mu u)
    m <- m - lr d
    b <- sgn(m)  where |m| > tau * k   (k = 0: any nonzero m sets the sign), else b stays
    k <- k + [b changed]

sgn(0) = +1. As in the public code, the momentum buffer is built from the raw gradient (without
weight decay). `m` starts at zero; whether k and the momentum reset every epoch (the public code
rebuilds its optimizers each epoch) is the caller's choice: `reset_epoch_state()`.
"""

from __future__ import annotations

import torch

from bnnrepro.nn.quantizers import sign
from bnnrepro.optim.base import PerParameterOptimizer


class SGDAT(PerParameterOptimizer):
    def __init__(self, params, lr: float = 1e-4, threshold: float = 1e-6, momentum: float = 0.0,
                 dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        if lr <= 0 or threshold < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"Invalid SGDAT hyperparameters: lr={lr}, threshold={threshold}, "
                             f"momentum={momentum}, weight_decay={weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, {"lr": lr, "threshold": threshold, "momentum": momentum, "dampening": dampening,
                                  "nesterov": nesterov, "weight_decay": weight_decay})

    def update(self, p, state, group):
        if not state:
            state["m"] = torch.zeros_like(p)
            state["flip_count"] = torch.zeros_like(p)  # float: survives load_state_dict's dtype cast
        g = p.grad
        d = g + group["weight_decay"] * p if group["weight_decay"] else g
        if group["momentum"]:
            u = state.setdefault("momentum_buffer", torch.zeros_like(p))
            u.mul_(group["momentum"]).add_(g, alpha=1 - group["dampening"])
            d = d + group["momentum"] * u if group["nesterov"] else u
        m, k = state["m"], state["flip_count"]
        m.add_(d, alpha=-group["lr"])
        new = torch.where(m.abs() > group["threshold"] * k, sign(m), p)
        k.add_((new != p).to(k.dtype))
        p.copy_(new)

    def reset_epoch_state(self) -> None:
        """Forget flip counts and momentum, keep the accumulators (the public code's per-epoch rebuild)."""
        for state in self.state.values():
            state.get("flip_count", torch.zeros(())).zero_()
            state.pop("momentum_buffer", None)
