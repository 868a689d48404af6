"""Optimizers, their learning-rate schedules, and the split of a model into training regimes.

Two kinds of optimizer train binary networks here:
  - latent-weight optimizers (torch's SGD and Adam): the parameter is a real latent weight, every
    forward binarizes it, the STE gradient updates it and the training loop clips it afterwards;
  - binary-weight optimizers (Bop, Bop2ndOrder, SGDAT, ... in the sibling modules, in the style of
    torch.optim): the parameter holds the binary weight itself (+-1) and the optimizer decides when
    it flips, from state of its own.

A config names one optimizer for the quantized weights (`optim`) and optionally another for the
full-precision parameters (`optim_fp`: BatchNorm, biases, full-precision first/last layers), as the
SGDAT code's bin_regime / fp_regime; without `optim_fp` one optimizer trains every parameter (the
paper's `*` rows). `TrainingOptimizers` holds the regimes and drives their schedules.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from bnnrepro.config import ExperimentConfig, OptimConfig
from bnnrepro.nn.layers import quantized_layers
from bnnrepro.optim.base import PerParameterOptimizer, updates_in_backward
from bnnrepro.optim.bop import Bop, Bop2ndOrder
from bnnrepro.optim.flip import FlipOptimizer
from bnnrepro.optim.sgdat import SGDAT, SGDT

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD, "adam": torch.optim.Adam, "bop": Bop, "bop2ndorder": Bop2ndOrder, "sgdt": SGDT,
    "sgdat": SGDAT, "flip": FlipOptimizer,
}
# Optimizers whose parameters are binary weights: they cannot train BatchNorm or full-precision layers.
BINARY_WEIGHT_OPTIMIZERS = {"bop", "bop2ndorder", "sgdt", "sgdat", "flip"}
REGULARIZATIONS = ("l2", "bin")
# OptimConfig keys that are also constructor arguments of torch's optimizers
SHARED_ARGS = ("momentum", "betas", "weight_decay")


def constructor_args(cls: type) -> dict[str, object]:
    """The keyword arguments `cls(params, lr, ...)` accepts, with their defaults."""
    skip = {"self", "params", "lr", "maximize", "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay"}
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _same_kind(value: object, default: object) -> bool:
    """YAML gives bool, int, float or str: a value must be of its default's kind (ints pass as floats)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    return not isinstance(default, str) or isinstance(value, str)


def optimizer_kwargs(cfg: OptimConfig) -> dict[str, object]:
    """Constructor arguments of cfg's optimizer: the shared keys it accepts, then `args`. A shared key
    the optimizer has no use for must keep its default; an `args` key must be one of its arguments."""
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{cfg.name}'. Valid optimizers: {sorted(OPTIMIZERS)}")
    accepted = constructor_args(OPTIMIZERS[cfg.name])
    kwargs = {}
    for key in SHARED_ARGS:
        value = getattr(cfg, key)
        if key == "weight_decay" and cfg.regularization == "bin":
            continue  # the `bin` regularizer goes into the loss, not the optimizer
        if key in accepted:
            kwargs[key] = tuple(value) if key == "betas" else value
        elif value != ([0.9, 0.999] if key == "betas" else 0.0):
            raise ValueError(f"'{key}' does not apply to optimizer '{cfg.name}'")
    for key, value in cfg.args.items():
        if key in SHARED_ARGS:
            raise ValueError(f"args.{key}: give it as the key '{key}' of the section, not in args")
        if key not in accepted:
            raise ValueError(f"args.{key} is not an argument of '{cfg.name}'. Valid: {sorted(set(accepted) - set(SHARED_ARGS))}")
        if not _same_kind(value, accepted[key]):
            raise ValueError(f"args.{key} = {value!r}: expected a {type(accepted[key]).__name__} "
                             f"like its default {accepted[key]!r}")
        kwargs[key] = value
    return kwargs


def check_optimizer_args(cfg: OptimConfig) -> None:
    """Config-time check (called by the config loader): raises ValueError naming the bad key."""
    optimizer_kwargs(cfg)
    if cfg.reset_each_epoch and cfg.name == "flip":
        raise ValueError("reset_each_epoch does not apply to 'flip': its per-tensor temperature is the whole method")
    if len(cfg.lr_milestones) != len(cfg.lr_decay):
        raise ValueError(f"lr_milestones ({cfg.lr_milestones}) and lr_decay ({cfg.lr_decay}) must have the same length")
    if not 0 < cfg.lr_exp_decay <= 1:
        raise ValueError(f"lr_exp_decay must be in (0, 1], got {cfg.lr_exp_decay}")
    if cfg.grad_clip < 0:
        raise ValueError(f"grad_clip must be >= 0 (0: no clipping), got {cfg.grad_clip}")
    if cfg.lr_batch_per_step and not cfg.lr_batch_reference:
        raise ValueError("lr_batch_per_step scales lr by sqrt(batch / lr_batch_reference): set lr_batch_reference too")


def build_optimizer(cfg: OptimConfig, params) -> torch.optim.Optimizer:
    """One optimizer of `cfg` over `params` (a list of tensors, or a module: all its parameters)."""
    if cfg.regularization not in REGULARIZATIONS:
        raise ValueError(f"optim.regularization must be one of {REGULARIZATIONS}, got '{cfg.regularization}'")
    check_optimizer_args(cfg)
    params = list(params.parameters()) if isinstance(params, nn.Module) else list(params)
    return OPTIMIZERS[cfg.name](params, lr=cfg.lr, **optimizer_kwargs(cfg))


def lr_at_epoch(cfg: OptimConfig, epoch: int, batch_size: int | None = None) -> float:
    """lr of the 1-based `epoch`, the product of the configured factors:
      - milestones (RWTH): at the start of each milestone epoch, lr is multiplied by its decay;
      - exponential (BinaryNet, Anderson & Berg): lr_exp_decay ** (epoch - 1);
      - cosine (BinSFO's Adam): (1 + cos(pi * epoch / T)) / 2, torch's CosineAnnealingLR stepped once at
        the start of every epoch, so the first epoch already uses step 1;
      - batch scaling (BinSFO): sqrt(batch_size / reference), batch_size being the configured one or,
        with lr_batch_per_step, the step's own (TrainingOptimizers.start_step).
    With every factor at its default the lr is constant."""
    lr = cfg.lr * math.prod(d for m, d in zip(cfg.lr_milestones, cfg.lr_decay) if epoch >= m)
    lr *= cfg.lr_exp_decay ** (epoch - 1)
    if cfg.lr_cosine_epochs:
        lr *= (1 + math.cos(math.pi * min(epoch, cfg.lr_cosine_epochs) / cfg.lr_cosine_epochs)) / 2
    if cfg.lr_batch_reference:
        if batch_size is None:
            raise ValueError("lr_batch_reference needs the batch size")
        lr *= math.sqrt(batch_size / cfg.lr_batch_reference)
    return lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class Regime:
    name: str                       # "all", "binary" or "fp"
    config: OptimConfig
    optimizer: torch.optim.Optimizer


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(quantized weights, full-precision parameters): the latent or binary weights of the binary and
    ternary layers, and everything else."""
    quantized = [layer.weight for layer in quantized_layers(model)]
    ids = {id(p) for p in quantized}
    return quantized, [p for p in model.parameters() if id(p) not in ids]


class TrainingOptimizers:
    """The optimizers of one training run, one per regime, used by the loop like one optimizer."""

    def __init__(self, regimes: list[Regime], batch_size: int):
        self.regimes, self.batch_size = regimes, batch_size
        self.epoch = 1
        # regimes whose lr follows each step's batch size (lr_batch_per_step); the others keep the epoch's lr
        self.per_step = [r for r in regimes if r.config.lr_batch_per_step]
        self.in_backward: set[str] = set()  # regimes that update inside backward (updates_in_backward)

    def zero_grad(self) -> None:
        for r in self.regimes:
            r.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        for r in self.regimes:
            if r.name not in self.in_backward:
                r.optimizer.step()

    @contextlib.contextmanager
    def updates_in_backward(self, grad_clip: float = 0.0, after_update=None):
        """train.memory_efficient: within the block the binary-weight regime updates each of its weights
        inside backward, as soon as the weight's gradient is complete, and frees that gradient at once
        (base.updates_in_backward); `grad_clip` > 0 clips it element-wise first, as the loop does for the
        other parameters, and `after_update(p)` follows each update (packed weights: back into bits). The
        other regimes (torch's optimizers for the full-precision parameters) keep stepping after backward.
        The same updates as step() makes: every binary-weight rule is per tensor."""
        regimes = [r for r in self.regimes if isinstance(r.optimizer, PerParameterOptimizer)]
        clip = (lambda p: nn.utils.clip_grad_value_([p], grad_clip)) if grad_clip > 0 else None
        with contextlib.ExitStack() as stack:
            for r in regimes:
                stack.enter_context(updates_in_backward(r.optimizer, clip, after_update))
            self.in_backward = {r.name for r in regimes}
            try:
                yield
            finally:
                self.in_backward = set()

    def start_epoch(self, epoch: int) -> dict[str, float]:
        """Set each regime's lr for `epoch` and reset state where the config asks; returns the lrs."""
        self.epoch = epoch
        lrs = {}
        for r in self.regimes:
            lr = lr_at_epoch(r.config, epoch, self.batch_size)
            set_lr(r.optimizer, lr)
            if r.config.reset_each_epoch:
                reset_epoch_state(r.optimizer)
            lrs["lr" if r.name != "fp" else "lr_fp"] = lr
        return lrs

    def start_step(self, batch_size: int) -> None:
        """Before each step: the regimes with lr_batch_per_step take the lr of this batch's size (the
        global batch, before any DDP split), as BinSFO's code recomputes sqrt(B / 96) every step. The
        lrs logged per epoch stay those of a full batch."""
        for r in self.per_step:
            set_lr(r.optimizer, lr_at_epoch(r.config, self.epoch, batch_size))

    def state_dict(self) -> dict:
        if len(self.regimes) == 1:  # the layout of a plain torch optimizer, as checkpoints always had
            return self.regimes[0].optimizer.state_dict()
        return {"regimes": {r.name: r.optimizer.state_dict() for r in self.regimes}}

    def load_state_dict(self, state: dict) -> None:
        states = {self.regimes[0].name: state} if len(self.regimes) == 1 else state.get("regimes", {})
        if set(states) != {r.name for r in self.regimes}:
            raise RuntimeError(f"optimizer state has regimes {sorted(states)}, this run {[r.name for r in self.regimes]}")
        for r in self.regimes:
            r.optimizer.load_state_dict(states[r.name])


def reset_epoch_state(optimizer: torch.optim.Optimizer) -> None:
    """What rebuilding the optimizer at an epoch start does (SGDAT / BinaryNet codes): our optimizers
    say what they forget (`reset_epoch_state`), torch's lose all their state."""
    if hasattr(optimizer, "reset_epoch_state"):
        optimizer.reset_epoch_state()
    else:
        optimizer.state.clear()


def build_optimizers(cfg: ExperimentConfig, model: nn.Module) -> TrainingOptimizers:
    quantized, full_precision = split_parameters(model)
    if cfg.train.pack_weights and cfg.optim.name not in BINARY_WEIGHT_OPTIMIZERS:
        raise ValueError(f"train.pack_weights keeps binary weights as bits; '{cfg.optim.name}' trains latent "
                         "real weights, which packing would destroy")
    if cfg.train.memory_efficient and cfg.optim.name not in BINARY_WEIGHT_OPTIMIZERS:
        raise ValueError(f"train.memory_efficient updates binary weights inside backward; '{cfg.optim.name}' "
                         f"trains latent weights. It applies to {sorted(BINARY_WEIGHT_OPTIMIZERS)}")
    if cfg.optim.name in BINARY_WEIGHT_OPTIMIZERS:
        # each reads its binary weights as sign(p) and writes back +-1; some read the real initial
        # weight first (SGDT's latent_init "weights", Bop's m_init "minus_weights")
        _check_binary_method(cfg, model, full_precision)
    if cfg.optim_fp is None:
        regimes = [Regime("all", cfg.optim, build_optimizer(cfg.optim, model.parameters()))]
    else:
        regimes = [Regime("binary", cfg.optim, build_optimizer(cfg.optim, quantized))]
        if full_precision:
            regimes.append(Regime("fp", cfg.optim_fp, build_optimizer(cfg.optim_fp, full_precision)))
    return TrainingOptimizers(regimes, cfg.data.batch_size)


def _check_binary_method(cfg: ExperimentConfig, model: nn.Module, full_precision: list) -> None:
    """A binary-weight optimizer needs binary layers, an fp regime for everything else, and no latent init."""
    layers = quantized_layers(model)
    if not layers:
        raise ValueError(f"optimizer '{cfg.optim.name}' trains binary weights, but model '{cfg.model.arch}' has none")
    if any(layer.precision != "binary" for layer in layers):
        raise ValueError(f"optimizer '{cfg.optim.name}' trains binary weights only; this model has ternary layers")
    if full_precision and cfg.optim_fp is None:
        raise ValueError(f"optimizer '{cfg.optim.name}' cannot train the {len(full_precision)} full-precision "
                         "parameter tensors (BatchNorm, biases, fp layers): add an `optim_fp` section")
    if cfg.train.latent_init == "zero":
        raise ValueError(f"train.latent_init = zero is for latent-weight optimizers; '{cfg.optim.name}' keeps "
                         "binary weights (its own args say where its state starts)")
