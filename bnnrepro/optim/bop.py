"""Bop and Bop2ndOrder: optimizers that flip binary weights directly (no latent weights).

The parameters they own hold +-1 values; a weight flips when an exponential moving average of its
gradient is large enough and points in the weight's own direction (a step would push it to the
other sign).

    Bop (Helwegen et al. 2019, "Latent weights do not exist"; larq.optimizers.Bop):
        m <- (1 - gamma) m + gamma g
        b <- -b  where  b * m > tau

    Bop2ndOrder (Suarez-Ramirez et al. 2021; SGDAT code, CuauSuarez/Bop2ndOrder):
        m <- m + gamma (g - m);   v <- v + sigma (g^2 - v)
        bias_correction: m /= 1 - (1 - gamma)^t,  v /= 1 - (1 - sigma)^t
        r = m / (sqrt(v) + eps)
        b <- -b  where  b * r > tau

gamma is the optimizer's `lr`, so torch's lr schedulers drive it. The first step sets the parameter
to its sign (a real-valued initial weight works too); from then on it holds exactly +-1 and is b
itself, so a step is a handful of element-wise kernels.

Options for the codes being reproduced (all off by default):
  - Bop(m_init="minus_weights"): m starts at minus the parameter's value at the first step. BinSFO
    fine-tunes pretrained nets this way (docs/binsfo.md#bop-from-pretrained-weights): b m = -|w| < 0, so the pretrained latent
    weight's magnitude acts as inertia and no weight flips until the gradients reverse m's sign.
  - Bop2ndOrder(zero_latent_first_step=True): the SGDAT code's quirk (docs/sgdat.md#bop2ndorder-first-step). Its first step
    reads b from the latent copy, all zeros then; b r = 0 never exceeds tau and sgn(0) = +1, so every
    weight is +1 after step 1. From step 2 on the latent copy holds b and the rule is the one above.

Per-epoch state: the SGDAT code rebuilds its optimizers at every epoch start, but Bop and Bop2ndOrder
keep m and v on the tensors, so nothing resets (`reset_epoch_state()` does nothing).
"""

from __future__ import annotations

import torch

from bnnrepro.nn.quantizers import sign
from bnnrepro.optim.base import PerParameterOptimizer, flip_where_

M_INITS = ("zero", "minus_weights")


class Bop(PerParameterOptimizer):
    def __init__(self, params, lr: float = 1e-4, threshold: float = 1e-8, m_init: str = "zero"):
        if not 0 < lr <= 1:
            raise ValueError(f"Invalid gamma (lr): {lr}; Bop's gamma must be in (0, 1]")
        if threshold < 0:
            raise ValueError(f"Invalid threshold: {threshold}")
        if m_init not in M_INITS:
            raise ValueError(f"Invalid m_init '{m_init}'. Valid: {M_INITS}")
        super().__init__(params, {"lr": lr, "threshold": threshold, "m_init": m_init})

    def update(self, p, state, group):
        if not state:
            state["m"] = -p.detach().clone() if group["m_init"] == "minus_weights" else torch.zeros_like(p)
            state["flips"] = torch.zeros((), dtype=torch.float32)  # float: survives load_state_dict's cast
            p.copy_(sign(p))
        m = state["m"]
        m.mul_(1 - group["lr"]).add_(p.grad, alpha=group["lr"])
        bm = torch.mul(p, m, out=self.grad_scratch(p))
        state["flips"] += torch.count_nonzero(flip_where_(p, torch.gt(bm, group["threshold"], out=bm)))

    def reset_epoch_state(self) -> None:
        """Nothing to forget: the SGDAT code keeps m on the tensor across its per-epoch rebuilds."""


class Bop2ndOrder(PerParameterOptimizer):
    def __init__(self, params, lr: float = 1e-4, sigma: float = 1e-2, threshold: float = 1e-8,
                 bias_correction: bool = False, eps: float = 1e-10, zero_latent_first_step: bool = False):
        if not 0 < lr <= 1 or not 0 < sigma <= 1:
            raise ValueError(f"Invalid gamma (lr) {lr} or sigma {sigma}: both must be in (0, 1]")
        if threshold < 0:
            raise ValueError(f"Invalid threshold: {threshold}")
        super().__init__(params, {"lr": lr, "sigma": sigma, "threshold": threshold, "bias_correction": bias_correction,
                                  "eps": eps, "zero_latent_first_step": zero_latent_first_step})

    def update(self, p, state, group):
        gamma, sigma = group["lr"], group["sigma"]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["m"], state["v"] = torch.zeros_like(p), torch.zeros_like(p)
            state["flips"] = torch.zeros((), dtype=torch.float32)
            p.copy_(sign(p))
        state["step"] += 1
        # the step count as a number only where a rule reads it: .item() waits for the GPU
        t = state["step"].item() if group["bias_correction"] or group["zero_latent_first_step"] else None
        m, v, g = state["m"], state["v"], p.grad
        m.lerp_(g, gamma)  # m + gamma (g - m)
        v.lerp_(g * g, sigma)
        if group["bias_correction"]:
            m_hat, v_hat = m / (1 - (1 - gamma) ** t), v / (1 - (1 - sigma) ** t)
        else:
            m_hat, v_hat = m, v
        if group["zero_latent_first_step"] and t == 1:
            # the SGDAT code's zero latent copy: b r = 0 flips nothing and sgn(0) = +1, so all become +1
            state["flips"] += torch.count_nonzero(p < 0)
            p.fill_(1.0)
            return
        r = v_hat.sqrt().add_(group["eps"])  # one scratch tensor for r = m_hat / (sqrt(v_hat) + eps), then b r
        r = torch.div(m_hat, r, out=r).mul_(p)
        state["flips"] += torch.count_nonzero(flip_where_(p, torch.gt(r, group["threshold"], out=r)))

    def reset_epoch_state(self) -> None:
        """Nothing to forget: the SGDAT code keeps m and v on the tensors across its per-epoch rebuilds
        (its step count restarts, but it has no bias correction to use it; ours keeps counting)."""
