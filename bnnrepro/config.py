"""Experiment configs: one YAML file per reproduced result, loaded into frozen dataclasses.

Every key is checked: an unknown or mistyped key, or a value of the wrong type, is an error that
names the file and the key. `overrides` ("section.key=value", values parsed as YAML) change single
keys from the command line; the quick profile applies its overrides the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bnnrepro.models.common import ModelConfig


@dataclass(frozen=True)
class DataConfig:
    dataset: str                      # prepared dataset name: digits | mnist | fashion-mnist | cifar10 | ...
    batch_size: int
    val_size: int = 0                 # the last N training images are held out for validation (0: none)
    eval_batch_size: int = 1000
    mean: list[float] = field(default_factory=lambda: [0.0])  # per channel, applied after scaling to [0, 1]
    std: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False                # random horizontal flip (training batches)
    crop_padding: int = 0             # random crop after padding by this many pixels (training batches)
    pad_mode: str = "constant"        # constant (zeros) | replicate (edge)
    augment_val: bool = False         # RWTH validates on augmented images (spec C.4)


@dataclass(frozen=True)
class OptimConfig:
    name: str                         # sgd | adam
    lr: float
    momentum: float = 0.0             # sgd only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam only
    weight_decay: float = 0.0         # L2 coefficient (coupled, in the optimizer) or of the `bin` regularizer
    regularization: str = "l2"        # l2 | bin: sum over latent weights of (1 - w^2), pushes |w| -> 1
    lr_milestones: list[int] = field(default_factory=list)  # 1-based epochs at whose start lr is decayed
    lr_decay: list[float] = field(default_factory=list)     # factor applied at each milestone
    lr_exp_decay: float = 1.0         # lr multiplied by this at the start of every epoch after the first
    grad_clip: float = 0.0            # clip every gradient element to [-c, c] before the step (0: never)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    seed: int = 1
    loss: str = "cross_entropy"       # cross_entropy | squared_hinge
    clip_latent: float = 1.0          # clip latent weights to [-c, c] after each step (0: never)
    deterministic: bool = True        # deterministic kernels (cuDNN/cuBLAS) on GPU


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    paper: str
    description: str
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig
    train: TrainConfig
    reported: dict[str, float] = field(default_factory=dict)  # the paper's numbers: top1 (%), top5 (%)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-profile overrides; `skip: reason`

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Identifies a training run: everything that changes the weights after a given epoch.

        train.epochs is left out: no schedule depends on the total, so a checkpoint after epoch k
        continues any run of the same config, and a run can be extended or stopped early.
        Keys added after the first runs (DIGEST_OMITS_DEFAULT) count only when they differ from
        their default, so every config written before them keeps its digest and its checkpoints."""
        d = {k: v for k, v in self.to_dict().items() if k in ("data", "model", "optim", "train")}
        d["train"] = {k: v for k, v in d["train"].items() if k != "epochs"}
        for section, keys in DIGEST_OMITS_DEFAULT.items():
            defaults = {f.name: f.default for f in dataclasses.fields(SECTIONS[section])}
            d[section] = {k: v for k, v in d[section].items() if not (k in keys and v == defaults[k])}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(ValueError):
    pass


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    return value


def _build(cls, values: Any, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}. Valid keys: {sorted(fields)}")
    missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _check_type(v, hints[k], f"{where}.{k}") for k, v in values.items()})


SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig}

# Keys added after runs had been checkpointed: left out of the digest while they hold their default.
DIGEST_OMITS_DEFAULT = {"model": ("padding", "bn_scale", "last_bn_shift"), "optim": ("lr_exp_decay", "grad_clip")}


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    raw = json.loads(json.dumps(raw))  # deep copy of plain YAML data
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise ConfigError(f"{source}: cannot override '{key}': use section.key with section in {sorted(SECTIONS)}")
        raw.setdefault(section, {})[name] = value
    return raw


def load_experiment(path: str | os.PathLike, overrides: dict[str, Any] | None = None,
                    profile: str | None = None) -> ExperimentConfig:
    """Load and validate `path`; apply the profile's overrides, then the explicit ones."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    known = {f.name for f in dataclasses.fields(ExperimentConfig)} - {"name"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}. Valid keys: {sorted(known)}")
    if profile is not None:
        profile_overrides = dict(raw.get("profiles", {}).get(profile) or {})
        profile_overrides.pop("skip", None)
        raw = apply_overrides(raw, profile_overrides, f"{path} (profile {profile})")
    raw = apply_overrides(raw, overrides or {}, f"{path} (command line)")
    sections = {name: _build(cls, raw.get(name), f"{path}: {name}") for name, cls in SECTIONS.items()}
    _check_values(sections, path)
    top = {k: raw[k] for k in ("paper", "description", "reported", "profiles") if k in raw}
    return _build(ExperimentConfig, {"name": path.stem, **top, **sections}, str(path))


def allowed_values() -> dict[str, tuple]:
    """The names a config may use, taken from the registries themselves (imported here, not at the
    top, because those modules import this one)."""
    from bnnrepro.data.sources import SOURCES
    from bnnrepro.engine.losses import LOSSES
    from bnnrepro.models import MODELS
    from bnnrepro.nn.quantizers import ESTIMATORS
    from bnnrepro.optim import OPTIMIZERS, REGULARIZATIONS

    return {"data.dataset": tuple(sorted(SOURCES)), "data.pad_mode": ("constant", "replicate"),
            "model.arch": tuple(sorted(MODELS)), "model.weights": ("fp", "binary"),
            "model.activations": ("relu", "binary"), "model.estimator": ESTIMATORS,
            "model.layer_order": ("CBAP", "CPBA"), "model.padding": ("rwth", "same_zeros"),
            "optim.name": OPTIMIZERS, "optim.regularization": REGULARIZATIONS, "train.loss": LOSSES}


POSITIVE = ("data.batch_size", "data.eval_batch_size", "optim.lr", "train.epochs", "model.width")
NON_NEGATIVE = ("data.val_size", "data.crop_padding", "optim.momentum", "optim.weight_decay", "train.clip_latent")


def _check_values(sections: dict[str, Any], path: Path) -> None:
    """Names must be registered and sizes in range; the error names the file, the key and what is allowed."""
    def value(key):
        section, name = key.split(".")
        return getattr(sections[section], name)

    for key, allowed in allowed_values().items():
        if value(key) not in allowed:
            raise ConfigError(f"{path}: {key} = {value(key)!r} is not one of {list(allowed)}")
    for key in POSITIVE:
        if not value(key) > 0:
            raise ConfigError(f"{path}: {key} must be > 0, got {value(key)!r}")
    for key in NON_NEGATIVE:
        if value(key) < 0:
            raise ConfigError(f"{path}: {key} must be >= 0, got {value(key)!r}")


def skip_reason(config_path: str | os.PathLike, profile: str) -> str | None:
    """Why an experiment does not run in `profile` (its `profiles.<profile>.skip`), or None."""
    raw = yaml.safe_load(Path(config_path).read_text()) or {}
    return (raw.get("profiles", {}).get(profile) or {}).get("skip")
