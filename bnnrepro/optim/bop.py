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

gamma is the optimizer's `lr`, so torch's lr schedulers drive it.
"""

from __future__ import annotations

import torch

from bnnrepro.optim.base import PerParameterOptimizer


def _flip_(b: torch.Tensor, flip: torch.Tensor) -> None:
    b.copy_(torch.where(flip, -b, b))


class Bop(PerParameterOptimizer):
    def __init__(self, params, lr: float = 1e-4, threshold: float = 1e-8):
        if not 0 < lr <= 1:
            raise ValueError(f"Invalid gamma (lr): {lr}; Bop's gamma must be in (0, 1]")
        if threshold < 0:
            raise ValueError(f"Invalid threshold: {threshold}")
        super().__init__(params, {"lr": lr, "threshold": threshold})

    def update(self, p, state, group):
        if not state:
            state["m"] = torch.zeros_like(p)
            state["flips"] = torch.zeros((), dtype=torch.float32)  # float: survives load_state_dict's cast
        m = state["m"]
        m.mul_(1 - group["lr"]).add_(p.grad, alpha=group["lr"])
        flip = p * m > group["threshold"]
        _flip_(p, flip)
        state["flips"] += flip.sum()


class Bop2ndOrder(PerParameterOptimizer):
    def __init__(self, params, lr: float = 1e-4, sigma: float = 1e-2, threshold: float = 1e-8,
                 bias_correction: bool = False, eps: float = 1e-10):
        if not 0 < lr <= 1 or not 0 < sigma <= 1:
            raise ValueError(f"Invalid gamma (lr) {lr} or sigma {sigma}: both must be in (0, 1]")
        if threshold < 0:
            raise ValueError(f"Invalid threshold: {threshold}")
        super().__init__(params, {"lr": lr, "sigma": sigma, "threshold": threshold,
                                  "bias_correction": bias_correction, "eps": eps})

    def update(self, p, state, group):
        gamma, sigma = group["lr"], group["sigma"]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["m"], state["v"] = torch.zeros_like(p), torch.zeros_like(p)
            state["flips"] = torch.zeros((), dtype=torch.float32)
        state["step"] += 1
        m, v, g = state["m"], state["v"], p.grad
        m.add_(g - m, alpha=gamma)
        v.add_(g * g - v, alpha=sigma)
        if group["bias_correction"]:
            t = state["step"].item()
            m_hat, v_hat = m / (1 - (1 - gamma) ** t), v / (1 - (1 - sigma) ** t)
        else:
            m_hat, v_hat = m, v
        flip = p * (m_hat / (v_hat.sqrt() + group["eps"])) > group["threshold"]
        _flip_(p, flip)
        state["flips"] += flip.sum()
