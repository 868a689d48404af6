"""Property-based tests (hypothesis) of every loader of user input: random and mutated configs, overrides,
model folders (safetensors + metadata.json) and official RWTH run folders give either a valid result or
the clean InputError - never another exception, a hang, or memory growth past a bound."""

from __future__ import annotations

import json
import os
import resource
import struct
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnnrepro.config import ExperimentConfig, load_experiment, parse_override
from bnnrepro.errors import InputError
from bnnrepro.export import load_model, save_model
from bnnrepro.models import build_model
from bnnrepro.rwth import config_from_params, load_rwth_state_dict

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO / "config" / "rwth" / "binary_mnist.yml"
CONFIGS = sorted((REPO / "config").glob("*/*.yml"))
# a loaded 2-core CI machine: no per-example deadline (a slow example is not a failure), few examples, the same
# ones each run; BNNREPRO_PROPERTY_EXAMPLES=N explores N new random examples per test instead
EXPLORE = int(os.environ.get("BNNREPRO_PROPERTY_EXAMPLES", 0))
FAST = settings(max_examples=EXPLORE or 60, deadline=None, derandomize=not EXPLORE, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
MEMORY_BOUND_KB = 1_000_000  # peak RSS growth allowed over a whole property test


@pytest.fixture(autouse=True)
def bounded_memory():
    """ru_maxrss only grows: its growth over a test bounds the peak memory of every example in it."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert growth < MEMORY_BOUND_KB, f"peak memory grew by {growth // 1024} MB"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("properties")


def valid_or_clean_error(call):
    """The result of call(), or None when it refused its input with an InputError (anything else fails)."""
    try:
        return call()
    except InputError as e:
        message = str(e)
        assert message and "Traceback" not in message
        return None


def mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """Apply (position, length to delete, bytes to insert) edits, positions taken modulo the length."""
    for pos, delete, insert in edits:
        pos %= max(len(data), 1)
        data = data[:pos] + insert + data[pos + delete:]
    return data


YAML_BYTES = st.binary(max_size=6) | st.sampled_from(
    [b":", b"-", b"[", b"]", b"{", b"}", b"&a ", b"*a", b"\n", b"  ", b"'", b'"', b"!!", b".inf", b"1e-3", b"#",
     b"\xff", b"~", b"<<: ", b"?", b"|", b"quik", b"2000-01-01", b"!!binary aGk=", b"0x1f", b"1_0", b".nan"])
EDITS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 8), YAML_BYTES), min_size=1, max_size=6)


# ------------------------------------------------------------------------------- config loader

@FAST
@given(source=st.sampled_from(CONFIGS), edits=EDITS, profile=st.sampled_from([None, "quick", "paper", "quik"]))
def test_mutated_configs_load_or_give_a_config_error(work, source, edits, profile):
    path = work / "mutated.yml"
    path.write_bytes(mutate(source.read_bytes(), edits))
    cfg = valid_or_clean_error(lambda: load_experiment(path, profile=profile))
    assert cfg is None or isinstance(cfg, ExperimentConfig) and len(cfg.digest()) == 16


PLAIN = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                     max_leaves=20)


@FAST
@given(section=st.sampled_from(["data", "model", "optim", "train", "optim_fp", "profiles", "reported", "paper"]),
       value=PLAIN)
def test_random_values_in_a_config_load_or_give_a_config_error(work, section, value):
    raw = yaml.safe_load(MNIST.read_text())
    raw[section] = value if not isinstance(raw.get(section), dict) or not isinstance(value, dict) \
        else {**raw[section], **value}
    path = work / "random.yml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    cfg = valid_or_clean_error(lambda: load_experiment(path, profile="quick"))
    assert cfg is None or isinstance(cfg, ExperimentConfig)


# ------------------------------------------------------------------------------- override parser

KEYS = st.sampled_from(["optim.lr", "optim.momentum", "train.epochs", "data.mean", "optim.args.threshold",
                        "model.width", "optim_fp.lr", "train", "x.y", "optim.lr.deeper", ""])


@FAST
@given(key=KEYS, value=st.text(max_size=20) | st.sampled_from(["1e-3", ".inf", "[1, *a]", "&a 1", "{a: [", "-1E+2"]))
def test_overrides_parse_and_apply_or_give_a_config_error(key, value):
    parsed = valid_or_clean_error(lambda: parse_override(f"{key}={value}"))
    if parsed is not None:
        cfg = valid_or_clean_error(lambda: load_experiment(MNIST, dict([parsed])))
        assert cfg is None or isinstance(cfg, ExperimentConfig)


# ------------------------------------------------------------------------------- model folders

@pytest.fixture(scope="module")
def model_folder(work) -> tuple[bytes, bytes]:
    """(model.safetensors, metadata.json) of a packed binary LeNet5 at width 0.25 (a small file)."""
    cfg = load_experiment(MNIST, {"model.width": 0.25})
    torch.manual_seed(0)
    folder = save_model(build_model(cfg.model, 1, 10, 28), work / "source", cfg,
                        {"channels": 1, "image_size": 28, "num_classes": 10}, "packed")
    return (folder / "model.safetensors").read_bytes(), (folder / "metadata.json").read_bytes()


def header_length(weights: bytes) -> int:
    return 8 + struct.unpack("<Q", weights[:8])[0]


@FAST
@given(edits=EDITS, in_header=st.booleans())
def test_mutated_weights_load_or_give_a_clean_error(work, model_folder, edits, in_header):
    weights, metadata = model_folder
    folder = work / "weights"
    folder.mkdir(exist_ok=True)
    if in_header:  # the JSON header and its length: where the sizes, dtypes and names are declared
        n = header_length(weights)
        mutated = mutate(weights[:n], edits) + weights[n:]
    else:
        mutated = mutate(weights, edits)
    (folder / "model.safetensors").write_bytes(mutated)
    (folder / "metadata.json").write_bytes(metadata)
    valid_or_clean_error(lambda: load_model(folder))


def json_paths(obj, prefix=()):
    """Every (path) of a JSON object's values."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from json_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from json_paths(v, (*prefix, i))


@FAST
@given(data=st.data(), value=PLAIN | st.sampled_from([10 ** 9, -1, 0, 1e300, "lenet5", "packed", [28, 28]]),
       delete=st.booleans())
def test_mutated_metadata_loads_or_gives_a_clean_error(work, model_folder, data, value, delete):
    weights, metadata = model_folder
    meta = json.loads(metadata)
    paths = [p for p in json_paths(meta) if p]
    path = data.draw(st.sampled_from(paths))
    parent = meta
    for part in path[:-1]:
        parent = parent[part]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    folder = work / "metadata"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "metadata.json").write_text(json.dumps(meta, allow_nan=True))
    valid_or_clean_error(lambda: load_model(folder))


@FAST
@given(edits=EDITS)
def test_mutated_metadata_text_loads_or_gives_a_clean_error(work, model_folder, edits):
    weights, metadata = model_folder
    folder = work / "metadata_text"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "metadata.json").write_bytes(mutate(metadata, edits))
    valid_or_clean_error(lambda: load_model(folder))


# ------------------------------------------------------------------------------- official RWTH layout

RWTH_KEYS = ["net", "dataset", "binarize", "gradient_estimator", "swish_beta", "layer_order", "no_biases",
             "no_batchnorm", "width_infl", "width_scale", "first_weights_fullprecision", "last_weights_fullprecision",
             "tern_weights", "tern_acts", "batch_size", "optimizer", "lr", "epochs", "seed"]
RWTH_BASE = {"net": "LeNet5", "dataset": "mnist", "binarize": True, "gradient_estimator": "bnn", "layer_order": "CPBA",
             "no_biases": True, "width_infl": 1, "batch_size": 50, "optimizer": "sgd", "lr": 0.01, "epochs": 500}


@FAST
@given(changes=st.dictionaries(st.sampled_from(RWTH_KEYS), PLAIN | st.sampled_from(["VGGNet7", "cifar10", "ste", 0]),
                               max_size=4),
       params=st.none() | PLAIN)
def test_rwth_params_give_a_config_or_a_clean_error(changes, params):
    given_params = {**RWTH_BASE, **changes} if params is None else params
    cfg = valid_or_clean_error(lambda: config_from_params(given_params, "run", "params.yml"))
    assert cfg is None or isinstance(cfg, ExperimentConfig)


@pytest.fixture(scope="module")
def rwth_results(work) -> bytes:
    cfg = load_experiment(MNIST, {"model.width": 0.25})
    torch.manual_seed(0)
    path = work / "results_source.pt"
    torch.save({"model_best": build_model(cfg.model, 1, 10, 28).state_dict(), "epoch_best": 2}, path)
    return path.read_bytes()


@FAST
@given(edits=EDITS)
def test_mutated_rwth_results_load_or_give_a_clean_error(work, rwth_results, edits):
    path = work / "results.pt"
    path.write_bytes(mutate(rwth_results, edits))
    state = valid_or_clean_error(lambda: load_rwth_state_dict(path))
    assert state is None or all(isinstance(v, torch.Tensor) for v in state.values())
