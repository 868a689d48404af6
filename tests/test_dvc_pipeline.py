"""The DVC pipeline as its users run it: determinism, caching, the experiment queue and a remote.

Each test works on a throwaway DVC project in a temporary folder (tests/dvc_project.py): a git repo
with a two-stage `dvc.yaml` whose commands are the real stage scripts of this checkout (prepare MNIST
from the mirror, train a width-1/8 binary LeNet5 for 10 steps), so that a stage takes seconds.
`params.yaml` holds `device` (the worker's device, as in the real params.yaml), `threads` and `lr`.

What the tests check (issue 8, "Determinism" and "Beyond one machine"):
- `dvc repro` in two separate clean clones gives byte-identical data, weights and metrics (and
  `dvc.lock`);
- a second `dvc repro` with nothing changed runs no stage and `dvc status` is clean;
- two experiments queued with `dvc exp run --queue -S ...` and run by `dvc queue start -j 2` give
  the same metrics and weights as the same two run one after the other in the workspace;
- `dvc push` to a local-folder remote, then a fresh `git clone` + `dvc pull`, gives a clean
  `dvc status` and a no-op `dvc repro` without training anything.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import MIRROR, REPO_ROOT, offline_env
from dvc_project import METRICS, PRODUCTS, clone, create_project, dvc_executable, project_env, run

from bnnrepro.runtime import device_name

DVC = dvc_executable()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(DVC is None, reason="dvc is not installed (it is a dependency in pyproject.toml)")]

ENV = project_env(REPO_ROOT, MIRROR, offline_env())  # offline: official URLs go to a dead proxy
QUEUE_TIMEOUT_S = 300


def dvc(*args: str, cwd: Path) -> str:
    return run([DVC, *args], cwd, ENV)


def git(*args: str, cwd: Path) -> str:
    return run(["git", *args], cwd, ENV)


def lock_hashes(lock_text: str) -> dict[str, str]:
    """stage/path -> md5 of every dependency and output recorded in a dvc.lock."""
    hashes = {}
    for stage, entry in yaml.safe_load(lock_text)["stages"].items():
        for kind in ("deps", "outs"):
            for item in entry.get(kind, []):
                hashes[f"{stage}/{kind}/{item['path']}"] = item["md5"]
    return hashes


def weights_md5(lock_text: str, cache: Path) -> str:
    """md5 of models/tiny/model.safetensors, read from the cache's manifest of the models/tiny output."""
    outs = yaml.safe_load(lock_text)["stages"]["train"]["outs"]
    dir_md5 = next(o["md5"] for o in outs if o["path"] == "models/tiny")
    manifest = json.loads((cache / "files" / "md5" / dir_md5[:2] / dir_md5[2:]).read_text())
    return next(f["md5"] for f in manifest if f["relpath"] == "model.safetensors")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The project as committed (nothing produced yet); its DVC config names a local-folder remote."""
    if MIRROR is None:
        pytest.skip("no dataset mirror (../shared/mirror or BNNREPRO_MIRROR): the data stage needs MNIST")
    root = tmp_path_factory.mktemp("dvc_project")
    (root / "remote").mkdir()
    return create_project(root / "source", REPO_ROOT, ENV, remote=root / "remote", site_cache=root / "site_cache")


@pytest.fixture(scope="module")
def built(source) -> Path:
    """A clone of `source` after one `dvc repro`, its products committed (dvc.lock, reports/)."""
    project = clone(source, source.parent / "built", ENV)
    dvc("repro", cwd=project)
    git("add", "-A", cwd=project)
    git("commit", "--quiet", "-m", "pipeline outputs", cwd=project)
    return project


@pytest.fixture(scope="module")
def rebuilt(source) -> Path:
    """A second clone of `source` reproduced from scratch: its own empty cache, no run cache to reuse."""
    project = clone(source, source.parent / "rebuilt", ENV)
    dvc("repro", cwd=project)
    return project


def test_two_clean_repros_give_identical_data_weights_and_metrics(built, rebuilt):
    for product in PRODUCTS:
        if product == "models/tiny/metadata.json":
            continue  # its timing block differs: see the dvc.lock test
        assert (built / product).read_bytes() == (rebuilt / product).read_bytes(), product


def test_two_clean_repros_give_identical_dvc_lock(built, rebuilt):
    first = lock_hashes((built / "dvc.lock").read_text())
    second = lock_hashes((rebuilt / "dvc.lock").read_text())
    differing = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
    assert differing == [], f"md5s that differ between two clean repros: {differing}"
    assert (built / "models/tiny/metadata.json").read_bytes() == (rebuilt / "models/tiny/metadata.json").read_bytes()


def test_second_repro_runs_no_stage(built):
    before = {p: (built / p).read_bytes() for p in PRODUCTS}
    out = dvc("repro", cwd=built)
    assert "Running stage" not in out, out
    assert "Stage 'data' didn't change, skipping" in out and "Stage 'train' didn't change, skipping" in out, out
    assert json.loads(dvc("status", "--json", cwd=built)) == {}
    assert {p: (built / p).read_bytes() for p in PRODUCTS} == before
    assert git("status", "--porcelain", cwd=built).strip() == ""


def test_remote_push_then_fresh_clone_pull_is_clean_without_training(built, tmp_path):
    dvc("push", cwd=built)
    fresh = clone(built, tmp_path / "fresh", ENV)  # its own, empty cache: everything must come from the remote
    assert not (fresh / "models" / "tiny").exists()
    dvc("pull", cwd=fresh)
    assert json.loads(dvc("status", "--json", cwd=fresh)) == {}
    out = dvc("repro", cwd=fresh)
    assert "Running stage" not in out, out
    assert not (fresh / "checkpoints").exists() and not (fresh / "data" / "raw").exists(), "trained or downloaded"
    for product in PRODUCTS:
        assert (fresh / product).read_bytes() == (built / product).read_bytes(), product


def wait_for_queue(project: Path) -> str:
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while time.monotonic() < deadline:
        status = dvc("queue", "status", cwd=project)
        if not any(word in status for word in ("Queued", "Running")):
            return status
        time.sleep(5)  # each `dvc queue status` starts a Python process: poll gently
    raise AssertionError(f"the queue did not finish in {QUEUE_TIMEOUT_S} s:\n{status}")


def experiment_results(project: Path, name: str, cache: Path) -> tuple[dict, str]:
    """(metrics, weights md5) of the experiment `name`, read from its git ref (refs/exps/.../<name>)."""
    refs = git("for-each-ref", "--format=%(refname)", "refs/exps", cwd=project).split()
    (ref,) = [r for r in refs if r.endswith(f"/{name}")]
    metrics = json.loads(git("show", f"{ref}:{METRICS}", cwd=project))
    lock = git("show", f"{ref}:dvc.lock", cwd=project)
    return metrics, weights_md5(lock, cache)


def test_queue_with_two_workers_equals_running_one_after_another(built, tmp_path):
    # a clone that shares built's cache: the data stage's output is there already, only `train` runs
    cache = built / ".dvc" / "cache"
    project = clone(built, tmp_path / "queue", ENV, shared_cache=cache)
    experiments = {"a": {"lr": 0.02, "device": "cpu"}, "b": {"lr": 0.05, "device": "cpu"}}

    def set_params(params):
        return [arg for key, value in params.items() for arg in ("-S", f"{key}={value}")]

    for name, params in experiments.items():
        dvc("exp", "run", "--queue", "--name", f"queued_{name}", *set_params(params), cwd=project)
    try:
        started = dvc("queue", "start", "--jobs", "2", cwd=project)
        assert "Started '2'" in started, started
        status = wait_for_queue(project)
    finally:
        dvc("queue", "stop", cwd=project)  # the workers exit when idle; make sure none outlives the test
    assert status.count("Success") == 2, status
    for name in experiments:
        assert "Running stage 'train'" in dvc("queue", "logs", f"queued_{name}", cwd=project)

    for name, params in experiments.items():
        # --force: the run cache would otherwise restore the queued run's outputs instead of training again
        out = dvc("exp", "run", "--force", "--single-item", "train", "--name", f"serial_{name}",
                  *set_params(params), cwd=project)
        assert "Running stage 'train'" in out, out

    for name, params in experiments.items():
        queued_metrics, queued_weights = experiment_results(project, f"queued_{name}", cache)
        serial_metrics, serial_weights = experiment_results(project, f"serial_{name}", cache)
        assert queued_metrics == serial_metrics
        assert queued_weights == serial_weights
        assert queued_metrics["device"] == params["device"]  # the param chose the worker's device
        assert queued_metrics["device_name"] == device_name(torch.device(params["device"]))  # e.g. the CPU model
    a, b = (experiment_results(project, f"queued_{name}", cache)[0] for name in experiments)
    assert a["best_val_top1"] != b["best_val_top1"], "the two experiments must differ for the comparison to mean much"
