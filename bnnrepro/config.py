"""Experiment configs: one YAML file per reproduced result, loaded into frozen dataclasses.

Every key is checked: an unknown or mistyped key, or a value of the wrong type, is an error that
names the file and the key. `overrides` ("section.key=value", values parsed as YAML) change single
keys from the command line; the quick profile applies its overrides the same way.

Configs, recipe files and override values are read by one YAML reader (plain_yaml.py): plain data only,
no anchors or aliases (a few bytes of nested aliases expand to gigabytes), floats in YAML 1.2 spelling
too (`1e-3`, which YAML 1.1 reads as a string), and every number finite.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnnrepro import PROFILES  # noqa: F401  (re-exported)
# the YAML reader's names are part of this module's interface (configs, recipes and overrides use them)
from bnnrepro.plain_yaml import MAX_CONFIG_BYTES, ConfigError, parse_yaml, read_yaml_mapping  # noqa: F401

# A field's constraint sits on the field (dataclasses.field metadata) and is checked by check_values:
# a range, a fixed set of names, or the names of a registry (resolved when checked, so that this module imports
# none of the modules that import it).
POSITIVE = {"range": "> 0"}
NON_NEGATIVE = {"range": ">= 0"}


def one_of(*names: str) -> dict[str, tuple[str, ...]]:
    return {"one_of": names}


def registry(name: str) -> dict[str, str]:
    """The field takes a name of the registry `name` (a key of _registries())."""
    return {"registry": name}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one network. Float and binary variants of a model differ only in these values."""

    # registered model name: lenet5 | vggnet7 | mlp | binarynet | resnet_sgdat | reactnet_a | bcdnet
    arch: str = field(metadata=registry("models"))
    # fp | binary: precision of every weight layer (see the *_fp and ternary_* keys)
    weights: str = field(default="binary", metadata=one_of("fp", "binary"))
    # relu | binary
    activations: str = field(default="binary", metadata=one_of("relu", "binary"))
    # STE of quantized activations: vanilla | bnn | bireal | swish
    estimator: str = field(default="bnn", metadata=registry("estimators"))
    swish_beta: float = 10.0
    # binary weights and activations, lenet5 and vggnet7 only: zero_positive (sign(0) = +1) | round_half_even (the RWTH
    # code's: -1 on [0, 2^-24])
    sign_rule: str = field(default="zero_positive", metadata=registry("sign_rules"))
    # CBAP: conv-BN-act-pool, CPBA: conv-pool-BN-act (RWTH's binary preset)
    layer_order: str = field(default="CPBA", metadata=one_of("CBAP", "CPBA"))
    bias: bool = False          # biases on quantized layers (full-precision layers always have one)
    batchnorm: bool = True
    # channel multiplier (RWTH width_infl for LeNet5, width_scale for VGGNet7)
    width: float = field(default=1.0, metadata=POSITIVE)
    first_layer_fp: bool = False
    last_layer_fp: bool = False
    ternary_weights: str = ""   # one digit per weight layer, 1 = ternary weights (RWTH tern_weights); "" = none
    ternary_acts: str = ""      # one digit per quantized activation, 1 = ternary (RWTH tern_acts); "" = none
    # VGGNet7 only. rwth: valid conv1, replicate SAME conv2-6 (32 -> 3x3 before fc1); same_zeros: every conv 3x3 SAME
    # with zeros (Courbariaux / Anderson & Berg; 32 -> 4x4)
    padding: str = field(default="rwth", metadata=one_of("rwth", "same_zeros"))
    bn_scale: bool = True       # false: BatchNorm with a learned shift beta but no scale gamma (TF's scale=False)
    last_bn_shift: bool = False # the output BatchNorm learns a shift beta (Anderson & Berg); RWTH's has neither
    depth: int = 4              # MLP only: number of Linear layers (4 = three hidden + output)
    hidden: int = 1024          # MLP only: width of the hidden layers
    bn_affine: bool = False     # MLP only: hidden BatchNorms learn scale and shift (BWS --affine)
    bn_out: bool = True         # MLP only: BatchNorm (affine=False) on the logits (BWS --batch_norm_out)
    # reactnet_a, bcdnet: binary conv weights times alpha = mean|W|: none (BinSFO's default) | tensor (BinSFO --xnor) |
    # channel (AdamBNN / BCDNet as trained)
    xnor_scale: str = field(default="none", metadata=registry("weight_scales"))
    # reactnet_a, bcdnet: official checkpoint loaded before training (a key of
    # bnnrepro.models.pretrained.OFFICIAL_CHECKPOINTS: adambnn | bcdnet); "" = none
    pretrained: str = field(default="", metadata=registry("official_checkpoints"))

    def describe(self) -> str:
        """Short name of the method for tables: 'float' or the binarization scheme."""
        if self.weights == "fp":
            return "float"
        ternary = " (ternary: w " + (self.ternary_weights or "-") + ", a " + (self.ternary_acts or "-") + ")"
        has_ternary = "1" in self.ternary_weights + self.ternary_acts
        order = f", {self.layer_order}" if self.arch in ("lenet5", "vggnet7") else ""  # the RWTH models' option
        return f"binary, STE {self.estimator}{order}{ternary if has_ternary else ''}"


# The budgets an experiment can run under (PROFILES, params.yaml `profile`); a config's `profiles:` keys
# and every --profile must be one of them. No profile section: the config's own values (the paper budget).


@dataclass(frozen=True)
class DataConfig:
    # prepared dataset name: digits | mnist | fashion-mnist | cifar10 | ...
    dataset: str = field(metadata=registry("datasets"))
    batch_size: int = field(metadata=POSITIVE)
    # the last N training images are held out for validation (0: none)
    val_size: int = field(default=0, metadata=NON_NEGATIVE)
    eval_batch_size: int = field(default=1000, metadata=POSITIVE)
    # per channel, applied after scaling to [0, 1]
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False                # random horizontal flip (training batches)
    # random crop after padding by this many pixels (training batches)
    crop_padding: int = field(default=0, metadata=NON_NEGATIVE)
    # constant (zeros) | replicate (edge)
    pad_mode: str = field(default="constant", metadata=one_of("constant", "replicate"))
    augment_val: bool = False         # RWTH validates on augmented images (docs/rwth.md#augmented-validation)
    # resize every image to resize x resize as its batch is drawn, bilinear (BinSFO: MNIST at 64 x 64); 0: native
    resize: int = field(default=0, metadata=NON_NEGATIVE)
    # training order: per_epoch (a new shuffle every epoch) | fixed (one shuffle, reused every epoch: BinSFO's code
    # never sets its sampler's epoch)
    order: str = field(default="per_epoch", metadata=registry("orders"))


@dataclass(frozen=True)
class OptimConfig:
    """One optimizer and its learning-rate schedule. `optim` is the regime of the quantized (binary or
    ternary) weights, and of every parameter when there is no `optim_fp`; `optim_fp` is the regime of
    the full-precision parameters (BatchNorm, biases, full-precision first/last layers), as the
    SGDAT code's bin_regime / fp_regime."""

    # a key of bnnrepro.optim.OPTIMIZERS: sgd | adam | bop | bop2ndorder | sgdat | ...
    name: str = field(metadata=registry("optimizers"))
    # step size; Bop's gamma; the flip optimizer's temperature scale
    lr: float = field(metadata=POSITIVE)
    # sgd only
    momentum: float = field(default=0.0, metadata=NON_NEGATIVE)
    # adam only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # L2 coefficient (coupled, in the optimizer) or of the `bin` regularizer
    weight_decay: float = field(default=0.0, metadata=NON_NEGATIVE)
    # l2 | bin: sum over latent weights of (1 - w^2), pushes |w| -> 1
    regularization: str = field(default="l2", metadata=registry("regularizations"))
    # 1-based epochs at whose start lr is decayed
    lr_milestones: list[int] = field(default_factory=list)
    lr_decay: list[float] = field(default_factory=list)     # factor applied at each milestone
    lr_exp_decay: float = 1.0         # lr multiplied by this at the start of every epoch after the first
    grad_clip: float = 0.0            # clip every gradient element to [-c, c] before the step (0: never)
    # the optimizer's own keyword arguments (e.g. Bop's threshold), checked against its constructor
    args: dict[str, Any] = field(default_factory=dict)
    reset_each_epoch: bool = False    # forget the optimizer state at every epoch start: the SGDAT / BinaryNet
                                      # codes rebuild their optimizers each epoch (docs/sgdat.md#per-epoch-optimizer-rebuild)
    # cosine annealing to 0 over this many epochs, stepped at each epoch start as BinSFO's CosineAnnealingLR (0: off)
    lr_cosine_epochs: int = field(default=0, metadata=NON_NEGATIVE)
    # lr *= sqrt(batch_size / reference): BinSFO's rule with reference 96 (0: off)
    lr_batch_reference: int = field(default=0, metadata=NON_NEGATIVE)
    lr_batch_per_step: bool = False   # with lr_batch_reference: the factor comes from each step's actual batch, so
                                      # an epoch's short last batch gets a smaller one (BinSFO's code); false: from
                                      # data.batch_size, once per epoch


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(metadata=POSITIVE)
    seed: int = 1
    # cross_entropy | squared_hinge
    loss: str = field(default="cross_entropy", metadata=registry("losses"))
    # clip latent weights to [-c, c] after each step (0: never)
    clip_latent: float = field(default=1.0, metadata=NON_NEGATIVE)
    deterministic: bool = True        # deterministic kernels (cuDNN/cuBLAS) on GPU
    pack_weights: bool = False        # binary-weight optimizers: keep the weights as sign bits (8 per byte)
                                      # between steps, float +-1 only during forward/backward/step
    # binary-weight optimizers: update each binary weight inside backward as soon as its gradient is complete,
    # and free that gradient (docs/memory.md)
    memory_efficient: bool = False
    # model: the layers' own init | zero: every latent weight starts at 0, as the SGDAT code (docs/sgdat.md#zero-latent-
    # init)
    latent_init: str = field(default="model", metadata=one_of("model", "zero"))
    # how accuracy ranks exactly tied logits: topk (torch.topk's order) | first_max (lowest class index first:
    # torch.max(1), the RWTH code's)
    tie_break: str = field(default="topk", metadata=registry("tie_breaks"))
    # stop every epoch after this many training steps (0: the whole epoch): short checks of a recipe's speed and
    # determinism (python -m bnnrepro.gpu_check)
    max_steps: int = field(default=0, metadata=NON_NEGATIVE)


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    paper: str
    description: str
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig
    train: TrainConfig
    optim_fp: OptimConfig | None = None  # full-precision parameters' regime; None: `optim` trains everything
    recipe: str = ""                  # label of the optimizer recipe applied (load_experiment's `recipe`)
    reported: dict[str, float] = field(default_factory=dict)  # the paper's numbers: top1 (%), top5 (%)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-profile overrides; `skip: reason`

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe_optimizer(self) -> str:
        """Short name for tables: the recipe's label, else e.g. 'sgd' or 'bop + adam (fp)'."""
        if self.recipe:
            return self.recipe
        return self.optim.name + (f" + {self.optim_fp.name} (fp)" if self.optim_fp else "")

    def digest(self) -> str:
        """Identifies a training run: everything that changes the weights after a given epoch.

        train.epochs is left out: no schedule depends on the total, so a checkpoint after epoch k
        continues any run of the same config, and a run can be extended or stopped early. Every value
        equal to its field's default is left out too, so a key added later, with a default that keeps the
        old behaviour, keeps every existing digest and checkpoint."""
        d = {name: _non_default(getattr(self, name)) for name in ("data", "model", "optim", "train", "optim_fp")
             if getattr(self, name) is not None}
        d["train"].pop("epochs", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: Any, source: str) -> ExperimentConfig:
        """A config from its dict form (ExperimentConfig.to_dict(), e.g. a model's metadata.json), checked as a
        config file is: keys, types and values; `source` names it in errors."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: config: expected a mapping, got {type(d).__name__}")
        for name in SECTIONS:
            if name not in d:
                raise ConfigError(f"{source}: config: missing section '{name}' - the file is damaged")
        sections = _sections(d, source)
        check_values(sections, source)
        top = {k: d[k] for k in ("name", "paper", "description", "reported", "profiles", "recipe") if k in d}
        return _build(cls, {**top, **sections}, source)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _non_default(section: Any) -> dict[str, Any]:
    """A config section's values that differ from their defaults (a required key always counts)."""
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)
            if getattr(section, f.name) != _default(f)}


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            hint = " (write numbers unquoted: 0.001 or 1e-3)" if tp in (int, float) and isinstance(value, str) else ""
            raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {reprlib.repr(value)}{hint}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {reprlib.repr(value)} - write [a, b, ...]")
        (item,) = typing.get_args(tp)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {reprlib.repr(value)} - write {{key: value, ...}}")
        return value
    return value


def _build(cls, values: Any, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {reprlib.repr(values)} - see config/ for examples")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} - valid keys: {sorted(fields)}")
    missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing} - add them")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _check_type(v, hints[k], f"{where}.{k}") for k, v in values.items()})


SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig}

OPTIONAL_SECTIONS = {"optim_fp": OptimConfig}


def _sections(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """The config's sections (data, model, optim, train and, when given, optim_fp), each built and type-checked."""
    sections = {name: _build(cls, raw.get(name), f"{where}: {name}") for name, cls in SECTIONS.items()}
    sections.update({name: _build(cls, raw[name], f"{where}: {name}")
                     for name, cls in OPTIONAL_SECTIONS.items() if raw.get(name) is not None})
    return sections


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}': must look like section.key=value")
    key, value = text.split("=", 1)
    return key.strip(), parse_yaml(value, f"override '{text}'")


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in {**SECTIONS, **OPTIONAL_SECTIONS} or not name:
            raise ConfigError(f"{source}: cannot override '{key}' - use section.key with section in "
                              f"{sorted({**SECTIONS, **OPTIONAL_SECTIONS})}")
        if raw.get(section) is None:
            raw[section] = {}
        target = raw[section]
        *parents, leaf = name.split(".")  # section.key, or deeper into a mapping: optim.args.mask
        for part in (section, *parents):
            target = target.setdefault(part, {}) if part != section else target
            if not isinstance(target, dict):
                raise ConfigError(f"{source}: cannot override '{key}': '{part}' is not a mapping - override '{part}' itself")
        target[leaf] = value
    return raw


RECIPE_KEYS = ("label", "overrides", "reported")


def load_recipe(spec: str) -> dict[str, Any]:
    """A named optimizer recipe, "FILE:NAME": a label, config overrides and the paper's numbers per
    dataset. One file holds a paper's recipes, so a grid (recipes x datasets) needs no copied configs."""
    file, _, name = spec.rpartition(":")
    if not file or not name:
        raise ConfigError(f"recipe '{spec}': must look like FILE:NAME - e.g. config/sgdat/optimizers.yml:sgdm")
    recipes = read_yaml_mapping(Path(file))
    if name not in recipes:
        raise ConfigError(f"{file}: no recipe '{name}' - use one of {sorted(recipes)}")
    recipe = recipes[name]
    unknown = sorted(set(recipe) - set(RECIPE_KEYS)) if isinstance(recipe, dict) else ["(not a mapping)"]
    if unknown:
        raise ConfigError(f"{file}: recipe '{name}': unknown key(s) {unknown} - valid keys: {list(RECIPE_KEYS)}")
    return {"label": name, "overrides": {}, "reported": {}, **recipe}


def load_experiment(path: str | os.PathLike, overrides: dict[str, Any] | None = None,
                    profile: str | None = None, recipe: str | None = None,
                    check_registries: bool = True) -> ExperimentConfig:
    """Load and validate `path`; apply the recipe (FILE:NAME, see load_recipe), the profile's
    overrides, then the explicit ones.

    `check_registries=False` checks keys and types but not the registered names (models, optimizers,
    losses, ...): the registries import torch, which costs seconds per process, and a stage that only
    records why a profile skips an experiment needs its description, not its validation."""
    path = Path(path)
    raw = read_yaml_mapping(path)
    _profile_section(raw, path, profile)  # checks every profile name, used or not
    known = {f.name for f in dataclasses.fields(ExperimentConfig)} - {"name", "recipe"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown} - valid keys: {sorted(known)}")
    if recipe is not None:
        chosen = load_recipe(recipe)
        raw = apply_overrides(raw, chosen["overrides"], f"{path} (recipe {recipe})")
        raw["recipe"] = str(chosen["label"])
    if profile is not None:
        profile_overrides = dict(_profile_section(raw, path, profile))
        profile_overrides.pop("skip", None)
        raw = apply_overrides(raw, profile_overrides, f"{path} (profile {profile})")
    raw = apply_overrides(raw, overrides or {}, f"{path} (command line)")
    where = f"{path} (recipe {recipe})" if recipe is not None else str(path)  # a bad key may come from either
    sections = _sections(raw, where)
    if check_registries:
        check_values(sections, where)
    if recipe is not None:  # the paper's numbers for this recipe on this dataset (none: our own experiment)
        raw["reported"] = chosen["reported"].get(sections["data"].dataset, {})
    top = {k: raw[k] for k in ("paper", "description", "reported", "profiles", "recipe") if k in raw}
    return _build(ExperimentConfig, {"name": path.stem, **top, **sections}, str(path))


def _registries() -> dict[str, tuple]:
    """The names each registry holds, taken from the registries themselves (imported here, not at the top,
    because those modules import this one)."""
    from bnnrepro.data.batches import ORDERS
    from bnnrepro.data.sources import SOURCES
    from bnnrepro.engine.losses import LOSSES
    from bnnrepro.engine.train import TIE_BREAKS
    from bnnrepro.models import MODELS
    from bnnrepro.models.pretrained import OFFICIAL_CHECKPOINTS
    from bnnrepro.nn.quantizers import ESTIMATORS, SIGN_RULES, WEIGHT_SCALES
    from bnnrepro.optim import OPTIMIZERS, REGULARIZATIONS

    return {"datasets": tuple(sorted(SOURCES)), "orders": tuple(ORDERS), "models": tuple(sorted(MODELS)),
            "estimators": tuple(ESTIMATORS), "sign_rules": tuple(SIGN_RULES), "weight_scales": tuple(WEIGHT_SCALES),
            "official_checkpoints": ("", *sorted(OFFICIAL_CHECKPOINTS)), "optimizers": tuple(OPTIMIZERS),
            "regularizations": tuple(REGULARIZATIONS), "losses": tuple(LOSSES), "tie_breaks": tuple(TIE_BREAKS)}


def check_values(sections: dict[str, Any], path: Path | str) -> None:
    """Every field's constraint (its metadata: a range, a set of names or a registry's names) and the optimizers'
    own arguments; the error names the file, the key and what is allowed."""
    from bnnrepro.optim import check_optimizer_args

    registries = _registries()
    for section_name, section in sections.items():
        for f in dataclasses.fields(section):
            value, shown = getattr(section, f.name), f"{section_name}.{f.name}"
            names = f.metadata.get("one_of") or registries.get(f.metadata.get("registry"))
            if names is not None and value not in names:
                raise ConfigError(f"{path}: {shown} = {value!r} is not one of {list(names)} - use one of them")
            if f.metadata.get("range") == "> 0" and not value > 0:
                raise ConfigError(f"{path}: {shown} must be > 0, got {value!r} - give a positive value")
            if f.metadata.get("range") == ">= 0" and value < 0:
                raise ConfigError(f"{path}: {shown} must be >= 0, got {value!r} - give a value >= 0")
    for section in ("optim", "optim_fp"):
        if section in sections:
            try:
                check_optimizer_args(sections[section])
            except ValueError as e:
                raise ConfigError(f"{path}: {section}: {e}") from None


def check_profile(profile: str | None, where: str = "--profile") -> None:
    if profile is not None and profile not in PROFILES:
        raise ConfigError(f"{where}: unknown profile '{profile}' - use one of {list(PROFILES)}")


def _profile_section(raw: dict[str, Any], path: Path, profile: str | None) -> dict[str, Any]:
    """The config's `profiles.<profile>` mapping ({} when it has none), after checking that `profile`
    and every profile the config names exist: a misspelt one would silently run another budget."""
    check_profile(profile)
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: profiles: expected a mapping of profile names - see config/rwth/binary_mnist.yml")
    for name, section in profiles.items():
        check_profile(name, f"{path}: profiles")
        if not isinstance(section, (dict, type(None))):
            raise ConfigError(f"{path}: profiles.{name}: expected a mapping of overrides, got {section!r} - write {{section.key: value}}")
        if section and not isinstance(section.get("skip", ""), str):
            raise ConfigError(f"{path}: profiles.{name}.skip: expected the reason as text, got {section['skip']!r} - quote it")
    return (profiles.get(profile) or {}) if profile is not None else {}


def skip_reason(config_path: str | os.PathLike, profile: str) -> str | None:
    """Why an experiment does not run in `profile` (its `profiles.<profile>.skip`), or None."""
    path = Path(config_path)
    return _profile_section(read_yaml_mapping(path), path, profile).get("skip")
