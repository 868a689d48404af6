"""FlipOptimizer: binary weights trained without latent weights by random flips (BWS and BinSFO).

Two papers share one rule (docs/bws.md, docs/binsfo.md): "Training Binary Neural Networks in a Binary Weight
Space" (BWS, ICLR'24 submission) and "Binary Stochastic Flip Optimization" (BinSFO, ICASSP'25). The
parameter holds b in {-1, +1}. Model the unseen latent weight as w ~ N(0, sigma^2) with b = sign(w);
one SGD step w' = w - eta g changes its sign with probability

    P(sign(w') != b | b) = erf(tau |g|) [b g > 0],   tau = eta / (sqrt(2) sigma)   (the "temperature")

Each step, for every tensor with gradient g (s = std(g), unbiased, over the whole tensor):

    tau = temperature of the scheduler (the value before this step's update)
    p   = hypermask(g, b, tau)
    M   = U < p,  U ~ Uniform[0, 1) drawn fresh
    b[M] = sign(-g)[M]                  set to the descent sign, not toggled (matters for `rand`)

Hypermasks (BinSFO's names in brackets):
    emp  [ewm]  p = erf(tau |g|) [b g > 0]                  expectation matching: E[b'] follows latent SGD
    mmp  [wpm]  p = [|g| >= erfinv(1/2) / tau] [b g > 0]    deterministic: flip when erf(tau |g|) >= 1/2
    rand        p = clip(tau, 0, 1)                         every weight alike, whatever g

Temperature schedulers (t = the tensor's step count, eta = the group's current lr):
    const            tau = eta
    cosine           tau = tau_min + (eta - tau_min) (1 + cos(pi min(t, T) / T)) / 2,  T = total_steps
    gaussian_bws     tau_0 = lr / (sqrt(2) sigma0);     tau <- tau / (1 + 2 tau^2 s^2)
    gaussian         tau = eta / (sqrt(2) sigma);       sigma^2 <- sigma^2 + (eta s)^2
    scaled_gaussian  tau = eta sqrt(pi) / (2 sigma^2);  sigma^2 <- sigma^2 + (pi/2) (eta s / sigma)^2

gaussian_bws is the BWS code as released: lr enters only through tau_0 (the lr at construction), and
the update lacks the square root of the exact 1/tau'^2 = 1/tau^2 + 2 s^2 (docs/bws.md#temperature-schedulers).
gaussian is BinSFO's exact variance bookkeeping of the latent weight; scaled_gaussian is the same for
XNOR-scaled weights. sigma0 is the std of the initialisation (0.01 for the MLPs) or, with
`sigma0_from_weights`, of each latent tensor as given to the constructor (pretrained nets, BinSFO).

State per tensor: the step count and one scalar (tau or sigma); nothing per weight. The uniform draws
come from a generator seeded by hash(seed, tensor index, step), so the masks depend on nothing else:
a resumed run draws the same masks as an uninterrupted one, and every DDP rank (identical, all-reduced
gradients) draws identical masks without any generator state to save or broadcast.
"""

from __future__ import annotations

import hashlib
import math

import torch

from bnnrepro.nn.quantizers import sign
from bnnrepro.optim.base import PerParameterOptimizer, flip_where_

MASKS = ("emp", "mmp", "rand")
MASK_ALIASES = {"ewm": "emp", "wpm": "mmp"}  # BinSFO's names for the same formulas (docs/binsfo.md#hypermasks)
SCHEDULERS = ("const", "cosine", "gaussian_bws", "gaussian", "scaled_gaussian")
ERFINV_HALF = 0.4769362762044699  # erfinv(1/2): tau |g| at which the EMP flip probability is 1/2


class FlipOptimizer(PerParameterOptimizer):
    """Owns binary weights: on construction every parameter is set to sign(param) (sign(0) = +1)."""

    def __init__(self, params, lr: float = 1e-3, mask: str = "emp", scheduler: str = "gaussian_bws",
                 sigma0: float = 0.01, sigma0_from_weights: bool = False, total_steps: int = 0,
                 tau_min: float = 1e-5, seed: int = 0):
        self._tensors = 0  # tensors seen so far: each one's index names its stream of random draws
        super().__init__(params, {"lr": lr, "mask": mask, "scheduler": scheduler, "sigma0": sigma0,
                                  "sigma0_from_weights": sigma0_from_weights, "total_steps": total_steps,
                                  "tau_min": tau_min, "seed": seed})

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_group(group)
        for p in group["params"]:
            self.state[p] = self._initial_state(p, group)
            with torch.no_grad():
                p.copy_(sign(p))

    def _initial_state(self, p: torch.Tensor, group: dict) -> dict:
        state = {"step": 0, "index": self._tensors}
        self._tensors += 1
        if group["scheduler"] in ("gaussian_bws", "gaussian", "scaled_gaussian"):
            sigma0 = p.detach().std() if group["sigma0_from_weights"] else torch.tensor(group["sigma0"])
            if not sigma0 > 0:  # also catches nan (a one-element tensor)
                raise ValueError(f"sigma0 must be > 0; the latent tensor of shape {tuple(p.shape)} gives {sigma0}")
            # float32 on the parameter's device: load_state_dict casts floating state to the parameter's dtype,
            # so keeping that dtype from the start makes a resumed run bit-identical
            sigma0 = sigma0.to(p.device, torch.float32)
            if group["scheduler"] == "gaussian_bws":
                state["tau"] = group["lr"] / (math.sqrt(2) * sigma0)
            else:
                state["sigma"] = sigma0
        return state

    def temperature(self, p: torch.Tensor) -> float | torch.Tensor:
        """The temperature the next step of `p` will use (for logs and tests)."""
        return self._temperature(self.state[p], self.group_of(p))

    @staticmethod
    def _temperature(state: dict, group: dict) -> float | torch.Tensor:
        lr, scheduler = group["lr"], group["scheduler"]
        if scheduler == "const":
            return lr
        if scheduler == "cosine":
            total, tau_min = group["total_steps"], group["tau_min"]
            return tau_min + (lr - tau_min) * (1 + math.cos(math.pi * min(state["step"], total) / total)) / 2
        if scheduler == "gaussian_bws":
            return state["tau"]
        if scheduler == "gaussian":
            return lr / (math.sqrt(2) * state["sigma"])
        return lr * math.sqrt(math.pi) / (2 * state["sigma"] ** 2)  # scaled_gaussian

    def update(self, p, state, group):
        g = p.grad
        tau = self._temperature(state, group)
        self._advance_schedule(state, group, g)
        flip_prob = hypermask(group["mask"], g, p, tau, out=self.grad_scratch(p))
        u = torch.rand(p.shape, generator=_generator(group["seed"], state, p.device), device=p.device)
        if group["mask"] == "rand":  # any weight may be drawn: it takes the descent sign, whatever it was
            p.copy_(torch.where(u < flip_prob, sign(-g), p))
        else:  # emp and mmp give p > 0 only where the descent sign is -b, so a drawn weight flips
            flip_where_(p, torch.lt(u, flip_prob, out=u))
        state["step"] += 1

    @staticmethod
    def _advance_schedule(state: dict, group: dict, g: torch.Tensor) -> None:
        eta, scheduler = group["lr"], group["scheduler"]
        if scheduler in ("const", "cosine"):
            return
        s = g.std() if g.numel() > 1 else g.new_zeros(())  # the spread of this step's latent moves
        if scheduler == "gaussian_bws":
            tau = state["tau"]
            state["tau"] = tau / (1 + 2 * tau ** 2 * s ** 2)
        elif scheduler == "gaussian":
            state["sigma"] = (state["sigma"] ** 2 + (eta * s) ** 2).sqrt()
        elif scheduler == "scaled_gaussian":
            sigma = state["sigma"]
            state["sigma"] = (sigma ** 2 + (math.pi / 2) * (eta * s / sigma) ** 2).sqrt()


def _generator(seed: int, state: dict, device: torch.device) -> torch.Generator | None:
    """A generator seeded from (seed, tensor index, step) alone. None on the meta device, which holds shapes
    and no values (the memory report counts the bytes of a step there): there is nothing to draw."""
    if device.type == "meta":
        return None
    key = f"{seed}/{state['index']}/{state['step']}".encode()
    stream = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1  # 63 bits
    return torch.Generator(device=device).manual_seed(stream)


def hypermask(mask: str, g: torch.Tensor, b: torch.Tensor, tau: float | torch.Tensor,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Flip probability of every weight, in [0, 1], for b holding exactly +-1. `out` (g itself, when the
    caller drops the gradient after the update) takes b g instead of a new tensor.

    A step would move the latent weight towards the other sign where b g > 0, and there b g = |g|
    exactly; so relu(b g) is |g| where a flip may happen and 0 (probability erf(0) = 0) elsewhere."""
    if mask == "rand":
        return (torch.zeros_like(g) + tau).clamp_(0, 1)
    descent = torch.mul(b, g, out=out)
    if mask == "emp":
        return descent.clamp_(min=0).mul_(tau).erf_()
    return (descent >= ERFINV_HALF / tau).to(g.dtype)  # mmp: the threshold is > 0, so b g > 0 there


def _check_group(group: dict) -> None:
    group["mask"] = MASK_ALIASES.get(str(group["mask"]).lower(), str(group["mask"]).lower())
    if not isinstance(group["seed"], int):
        raise ValueError(f"seed must be an int, got {group['seed']!r}")
    if group["mask"] not in MASKS:
        raise ValueError(f"unknown mask {group['mask']!r}. Valid: {MASKS} (aliases {sorted(MASK_ALIASES)})")
    if group["scheduler"] not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {group['scheduler']!r}. Valid: {SCHEDULERS}")
    if not group["lr"] > 0:
        raise ValueError(f"lr (the temperature scale) must be > 0, got {group['lr']}")
    if not group["sigma0"] > 0:
        raise ValueError(f"sigma0 must be > 0, got {group['sigma0']}")
    if group["tau_min"] < 0:
        raise ValueError(f"tau_min must be >= 0, got {group['tau_min']}")
    if group["scheduler"] == "cosine" and not (isinstance(group["total_steps"], int) and group["total_steps"] > 0):
        raise ValueError(f"the cosine scheduler needs total_steps > 0 (epochs x steps per epoch), "
                         f"got {group['total_steps']!r}")
