"""Experiment configs: every key checked, errors name the file and the key, overrides and profiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bnnrepro.config import ConfigError, ExperimentConfig, load_experiment, parse_override, skip_reason
from bnnrepro.models import build_model

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config" / "rwth"
RWTH_CONFIGS = sorted(CONFIG_DIR.glob("*.yml"))
MNIST = CONFIG_DIR / "binary_mnist.yml"


def test_rwth_configs_exist():
    assert {p.name for p in RWTH_CONFIGS} >= {"binary_mnist.yml", "float_mnist.yml",
                                              "binary_cifar10.yml", "float_cifar10.yml"}


@pytest.mark.parametrize("path", RWTH_CONFIGS, ids=lambda p: p.name)
def test_every_rwth_config_loads(path):
    cfg = load_experiment(path)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == path.stem and cfg.paper == "rwth"
    assert cfg.train.epochs > 0 and cfg.data.batch_size > 0
    assert len(cfg.optim.lr_milestones) == len(cfg.optim.lr_decay)
    assert isinstance(cfg.optim.lr, float) and isinstance(cfg.optim.weight_decay, float)
    assert len(cfg.digest()) == 16
    for profile in ("quick", "paper"):
        load_experiment(path, profile=profile)


def variant(tmp_path: Path, change, name: str = "variant.yml") -> Path:
    """A copy of binary_mnist.yml with `change(raw)` applied."""
    raw = yaml.safe_load(MNIST.read_text())
    change(raw)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_unknown_top_level_key(tmp_path):
    path = variant(tmp_path, lambda r: r.update(optimizer={"lr": 1.0}))
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert str(path) in str(info.value) and "optimizer" in str(info.value)


def test_unknown_section_key(tmp_path):
    path = variant(tmp_path, lambda r: r["optim"].update(lrr=0.1))
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    msg = str(info.value)
    assert str(path) in msg and "optim" in msg and "lrr" in msg


def test_wrong_type(tmp_path):
    path = variant(tmp_path, lambda r: r["train"].update(epochs="ten"))
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    msg = str(info.value)
    assert str(path) in msg and "train.epochs" in msg and "ten" in msg


@pytest.mark.parametrize("section,key,value", [
    ("train", "epochs", 2.5),        # float for int
    ("train", "epochs", True),       # bool is not an int here
    ("model", "bias", "yes"),        # string for bool
    ("optim", "lr", "0.1x"),         # a string for a float
    ("data", "mean", 0.5),           # scalar for list
    ("optim", "lr_milestones", [1, "x"]),
])
def test_wrong_types_are_errors(tmp_path, section, key, value):
    path = variant(tmp_path, lambda r: r[section].update({key: value}))
    with pytest.raises(ConfigError, match=f"{section}.{key}"):
        load_experiment(path)


def test_int_is_accepted_for_float(tmp_path):
    path = variant(tmp_path, lambda r: r["optim"].update(lr=1))
    cfg = load_experiment(path)
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


def test_missing_required_key(tmp_path):
    path = variant(tmp_path, lambda r: r["train"].pop("epochs"))
    with pytest.raises(ConfigError, match="epochs") as info:
        load_experiment(path)
    assert str(path) in str(info.value)


def test_missing_section(tmp_path):
    path = variant(tmp_path, lambda r: r.pop("optim"))
    with pytest.raises(ConfigError, match="optim"):
        load_experiment(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("train: [epochs: 3\n")
    with pytest.raises(ConfigError, match="bad.yml"):
        load_experiment(bad)


def test_overrides():
    base = load_experiment(MNIST)
    cfg = load_experiment(MNIST, {"train.epochs": 3, "optim.lr": 0.5, "data.flip": True})
    assert cfg.train.epochs == 3 and cfg.optim.lr == 0.5 and cfg.data.flip is True
    assert cfg.model == base.model and cfg.train.seed == base.train.seed
    key, value = parse_override("train.epochs=7")
    assert load_experiment(MNIST, {key: value}).train.epochs == 7
    assert parse_override("data.mean=[0.5, 0.5]") == ("data.mean", [0.5, 0.5])


@pytest.mark.parametrize("overrides,word", [
    ({"train.epochz": 3}, "epochz"),
    ({"trainer.epochs": 3}, "trainer.epochs"),
    ({"train": 3}, "train"),
    ({"train.epochs": "ten"}, "train.epochs"),
])
def test_bad_overrides(overrides, word):
    with pytest.raises(ConfigError, match=word) as info:
        load_experiment(MNIST, overrides)
    assert str(MNIST) in str(info.value)


def test_override_without_equals_sign():
    with pytest.raises(ConfigError):
        parse_override("train.epochs")


def test_quick_profile_applies_its_overrides():
    assert load_experiment(MNIST).train.epochs == 500
    quick = load_experiment(MNIST, profile="quick")
    assert quick.train.epochs == yaml.safe_load(Path(MNIST).read_text())["profiles"]["quick"]["train.epochs"] != 500
    assert load_experiment(MNIST, {"train.epochs": 5}, profile="quick").train.epochs == 5  # explicit wins
    assert load_experiment(MNIST, profile="paper").train.epochs == 500  # no such profile: no change


def test_skip_reason():
    for path in RWTH_CONFIGS:
        reason = skip_reason(path, "quick")
        if "cifar" in path.stem:
            assert isinstance(reason, str) and "CIFAR-10" in reason
        else:
            assert reason is None
        assert skip_reason(path, "paper") is None


def test_digest_tracks_training_relevant_keys_only(tmp_path):
    base = load_experiment(MNIST).digest()
    assert load_experiment(MNIST).digest() == base  # stable
    assert load_experiment(MNIST, {"train.seed": 9}).digest() != base
    assert load_experiment(MNIST, {"train.loss": "cross_entropy"}).digest() != base
    assert load_experiment(MNIST, {"optim.lr": 0.02}).digest() != base
    assert load_experiment(MNIST, {"data.batch_size": 100}).digest() != base
    assert load_experiment(MNIST, {"model.width": 2.0}).digest() != base
    described = variant(tmp_path, lambda r: r.update(description="something else", reported={"top1": 1.0}))
    assert load_experiment(described).digest() == base
    # writing a default value explicitly does not change the run
    explicit = variant(tmp_path, lambda r: r["train"].update(clip_latent=1.0), name="explicit.yml")
    assert load_experiment(explicit).digest() == base


def test_every_key_counts_in_the_digest_only_away_from_its_default():
    """No hand-kept list: a key written at its default gives the same run as leaving it out (so a key added later
    keeps every checkpoint resuming), and another value gives another run."""
    import dataclasses

    from bnnrepro.config import SECTIONS

    cfg = load_experiment(MNIST)
    base = cfg.digest()
    checked = 0
    for section, cls in SECTIONS.items():
        values = getattr(cfg, section)
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING or f.name == "epochs" or getattr(values, f.name) != f.default:
                continue
            assert load_experiment(MNIST, {f"{section}.{f.name}": f.default}).digest() == base, f.name
            other = (not f.default) if isinstance(f.default, bool) else (
                f.default + 1 if isinstance(f.default, (int, float)) else f.default + "x")
            changed = dataclasses.replace(cfg, **{section: dataclasses.replace(values, **{f.name: other})})
            assert changed.digest() != base, f"{section}.{f.name}"
            checked += 1
    assert checked > 30


def test_digest_leaves_out_epochs():
    """By design (see ExperimentConfig.digest): no schedule depends on the total, so a run can be
    extended or stopped early and its checkpoints still match."""
    base = load_experiment(MNIST).digest()
    assert load_experiment(MNIST, {"train.epochs": 3}).digest() == base
    quick = load_experiment(MNIST, profile="quick")  # fewer epochs, and shorter ones (train.max_steps counts)
    assert quick.train.epochs != 500 and quick.digest() == load_experiment(
        MNIST, {"train.max_steps": quick.train.max_steps}).digest() != base


@pytest.mark.parametrize("key, value", [("model.arch", "resnet1000"), ("data.dataset", "imagenet-22k"),
                                        ("optim.name", "lion"), ("train.loss", "hinge"), ("model.estimator", "ste"),
                                        ("model.layer_order", "PBAC")])
def test_unknown_names_list_the_allowed_values(key, value):
    with pytest.raises(ConfigError) as e:
        load_experiment(MNIST, {key: value})
    assert "binary_mnist.yml" in str(e.value) and key in str(e.value) and repr(value) in str(e.value)
    assert "not one of" in str(e.value)


@pytest.mark.parametrize("key, value", [("data.batch_size", 0), ("optim.lr", -0.1), ("train.epochs", 0),
                                        ("data.val_size", -5), ("optim.momentum", -0.9)])
def test_out_of_range_values(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_experiment(MNIST, {key: value})


RECIPES = Path(__file__).resolve().parents[1] / "config" / "sgdat" / "optimizers.yml"
MLP = Path(__file__).resolve().parents[1] / "config" / "compare" / "binary_mlp.yml"


def test_recipe_applies_its_overrides_and_label():
    cfg = load_experiment(MLP, recipe=f"{RECIPES}:bop")
    assert cfg.optim.name == "bop" and cfg.recipe == "Bop"  # the recipe's label


@pytest.mark.parametrize("body,spec_name,word", [
    (None, "no_such_recipe", "no recipe 'no_such_recipe'"),          # a name the file does not have
    ("fast: {overides: {optim.lr: 0.1}}\n", "fast", "overides"),       # a mistyped recipe key
    ("fast: {overrides: {optim.lrr: 0.1}}\n", "fast", "lrr"),          # a mistyped config key inside it
    ("fast: [1, 2]\n", "fast", "not a mapping"),
])
def test_bad_recipes_name_the_file_and_the_key(tmp_path, body, spec_name, word):
    file = RECIPES
    if body is not None:
        file = tmp_path / "recipes.yml"
        file.write_text(body)
    with pytest.raises(ConfigError, match=word) as info:
        load_experiment(MNIST, recipe=f"{file}:{spec_name}")
    assert file.name in str(info.value)


def test_recipe_spec_without_a_name_is_an_error():
    with pytest.raises(ConfigError, match="FILE:NAME"):
        load_experiment(MNIST, recipe=str(RECIPES))


FINETUNE = Path(__file__).resolve().parents[1] / "config" / "binsfo"
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.mark.parametrize("model", ["adambnn", "bcdnet"])
@pytest.mark.parametrize("recipe", ["binary", "real", "bop", "adam"])
@pytest.mark.parametrize("dataset", yaml.safe_load(PARAMS.read_text())["binsfo_finetune"]["datasets"])
def test_binsfo_finetune_grid_loads_and_skips_in_quick(model, recipe, dataset):
    path = FINETUNE / f"finetune_{model}.yml"
    cfg = load_experiment(path, {"data.dataset": dataset}, profile="paper",
                          recipe=f"{FINETUNE / 'finetune_optimizers.yml'}:{recipe}")
    assert cfg.model.pretrained == model and cfg.data.dataset == dataset
    assert cfg.data.resize == 256  # BinSFO's Resize((256, 256)) for every dataset, CIFAR included
    assert (cfg.optim_fp is None) == (recipe == "adam")
    assert "GPU hours" in skip_reason(path, "quick") and skip_reason(path, "paper") is None


@pytest.mark.parametrize("override, words", [
    ({"model.xnor_scal": "tensor"}, ["unknown key", "xnor_scal", "xnor_scale"]),  # mistyped new key
    ({"model.xnor_scale": "layer"}, ["model.xnor_scale", "not one of", "channel"]),
    ({"model.pretrained": "adambn"}, ["model.pretrained", "not one of", "adambnn"]),
])
def test_finetune_keys_are_checked(override, words):
    with pytest.raises(ConfigError) as e:
        load_experiment(FINETUNE / "finetune_adambnn.yml", override)
    assert all(w in str(e.value) for w in words + ["finetune_adambnn.yml"])


def test_sign_rule_is_checked_and_only_the_rwth_models_take_it():
    with pytest.raises(ConfigError, match="model.sign_rule"):
        load_experiment(MNIST, {"model.sign_rule": "round_half_up"})
    mlp = load_experiment(Path(__file__).resolve().parents[1] / "config" / "compare" / "binary_mlp.yml",
                          {"model.sign_rule": "round_half_even"})
    with pytest.raises(ValueError, match="sign_rule"):  # not silently ignored by a model without the option
        build_model(mlp.model, 1, 10, 28)


def test_the_config_module_is_a_leaf():
    """Importing it loads no optimizer, model or torch: the registries are consulted only when a config is checked."""
    import subprocess
    import sys

    code = "import sys, bnnrepro.config; print(' '.join(sorted(m for m in sys.modules if m.startswith(('bnnrepro', 'torch')))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert set(loaded) <= {"bnnrepro", "bnnrepro.config", "bnnrepro.errors", "bnnrepro.plain_yaml"}, loaded
