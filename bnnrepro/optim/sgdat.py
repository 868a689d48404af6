"""SGDT and SGDAT: SGD on a real accumulator that sets binary weights through a dead zone around zero
(Gu et al., "SGDAT: An optimization method for binary neural networks", Neurocomputing 555:126431,
2023; code gushan/SGDAT).

The parameter holds the binary weight b in {-1, +1} (only its sign is read, so a real-valued initial
weight works too: the first step writes exactly +-1). g is the gradient with respect to b, the weight
the forward pass used. Each optimizer keeps a real accumulator `a` per weight and sets b from it by
one rule, hysteresis around zero:

    b <- sgn(a)  where |a| > dead zone,  else b keeps its sign            (sgn(0) = +1)

    SGDT  (the SGDAT code's plain SGD with `--binarization threshold`; docs/sgdat.md#update-rules):
        w <- clip(w - lr g, -1, 1)             latent weight: starts at 0 (SGDAT code) or at the initial weight
        b <- sgn(w)  where |w| > tau

    SGDAT (optimizers/SGDAT.py, final version; docs/sgdat.md#update-rules):
        d = g (+ weight_decay * b)
        momentum:  u <- mu u + (1 - dampening) g;  d <- u   (nesterov: d <- d + mu u)
        m <- m - lr d                          never clipped, starts at 0
        b <- sgn(m)  where |m| > tau * k;   k <- k + [b changed]           k: the weight's flip count

With k = 0 (no flip yet) any nonzero m sets the sign. As in the public code, the momentum buffer is
built from the raw gradient, without weight decay.

Per-epoch state (docs/sgdat.md#per-epoch-optimizer-rebuild): the public code builds new optimizers at every epoch start, which
forgets what lives in `optimizer.state` (SGDAT's flip counts and momentum buffer) and keeps what lives
on the tensors (SGDAT's m, the latent weight `org` of SGDT). `reset_epoch_state()` does the same here.
Both also count all flips since the start in `state["flips"]` (a statistic; no rule reads it).
"""

from __future__ import annotations

import torch

from bnnrepro.nn.quantizers import sign
from bnnrepro.optim.base import PerParameterOptimizer, flip_where_

LATENT_INITS = ("zero", "weights")


def hysteresis_sign_(b: torch.Tensor, a: torch.Tensor, dead_zone: float | torch.Tensor,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """b <- sgn(a) where |a| > dead_zone, else b keeps its sign; in place, for b holding exactly +-1.
    Returns 1 where b changed sign and 0 elsewhere, in b's dtype (in `out` when given: scratch space).

    A weight whose accumulator sits inside the dead zone keeps the sign it has, so a weight near zero
    does not flip back and forth with every small step (the boundary itself is inside: strict >).
    Since b = +-1, a b = -|a| exactly where the signs differ, so one test decides both conditions:
    flip where a b + dead_zone < 0 (IEEE subtraction keeps the sign of the exact difference)."""
    if isinstance(dead_zone, torch.Tensor):
        ab = torch.addcmul(dead_zone, a, b, out=out)
        return flip_where_(b, torch.lt(ab, 0, out=ab))
    ab = torch.mul(a, b, out=out)
    return flip_where_(b, torch.lt(ab, -dead_zone, out=ab))


class SGDT(PerParameterOptimizer):
    """Latent SGD with clipping whose binarization ignores latent weights within `threshold` of zero.

    latent_init: "zero" as the SGDAT code (its latent copy `org` starts as zeros, while the first
    forward pass used sgn(initial weight)); "weights" starts from the parameter's value at the first
    step, as BinaryNet.pytorch's `org = clone(weight)` (the value must still be the real initial weight
    then: a parameter already set to its sign starts the latent at +-1)."""

    def __init__(self, params, lr: float = 1e-4, threshold: float = 1e-8, latent_init: str = "zero"):
        if lr <= 0 or threshold < 0:
            raise ValueError(f"Invalid SGDT hyperparameters: lr={lr} must be > 0, threshold={threshold} >= 0")
        if latent_init not in LATENT_INITS:
            raise ValueError(f"Invalid latent_init '{latent_init}'. Valid: {LATENT_INITS}")
        super().__init__(params, {"lr": lr, "threshold": threshold, "latent_init": latent_init})

    def update(self, p, state, group):
        if not state:
            state["latent"] = p.detach().clone() if group["latent_init"] == "weights" else torch.zeros_like(p)
            state["flips"] = torch.zeros((), dtype=torch.float32)  # float: survives load_state_dict's cast
            p.copy_(sign(p))  # b: exactly +-1 from here on
        w = state["latent"]
        w.add_(p.grad, alpha=-group["lr"]).clamp_(-1, 1)
        state["flips"] += torch.count_nonzero(hysteresis_sign_(p, w, group["threshold"], out=self.grad_scratch(p)))

    def reset_epoch_state(self) -> None:
        """Nothing to forget: the public code rebuilds a torch SGD without momentum, which has no state,
        and its latent weight lives on the tensor (`org`)."""


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
            state["flips"] = torch.zeros((), dtype=torch.float32)
            p.copy_(sign(p))  # b: exactly +-1 from here on
        g = p.grad
        # decay pulls towards zero from the current binary weight (the public code uses its latent copy,
        # which equals b after the first step)
        d = g + group["weight_decay"] * p if group["weight_decay"] else g
        if group["momentum"]:
            u = state.setdefault("momentum_buffer", torch.zeros_like(p))
            u.mul_(group["momentum"]).add_(g, alpha=1 - group["dampening"])
            d = d + group["momentum"] * u if group["nesterov"] else u
        m, k = state["m"], state["flip_count"]
        m.add_(d, alpha=-group["lr"])
        flipped = hysteresis_sign_(p, m, k * group["threshold"], out=self.grad_scratch(p))
        k.add_(flipped)
        state["flips"] += torch.count_nonzero(flipped)

    def reset_epoch_state(self) -> None:
        """Forget flip counts and momentum, keep the accumulators m (the public code's per-epoch rebuild)."""
        for state in self.state.values():
            if "flip_count" in state:
                state["flip_count"].zero_()
            state.pop("momentum_buffer", None)
