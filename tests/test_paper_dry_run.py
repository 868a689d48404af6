"""Dry run of the paper profile: every stage of the whole DAG through a real `dvc repro`, on CPU, in minutes.

The paper profile (`profile: paper`) is the one that needs a GPU and hours per stage, so a broken stage would
otherwise be found hours into a GPU run. This test runs all of it at a one-step budget:

- a temporary project holds this checkout's tracked files (`git ls-files`, as in the working tree) without
  what the pipeline produces (dvc.lock files and reports/), so every stage runs and every product is new;
- params.yaml: profile paper, device cpu, and for each downloaded dataset `md5:` naming the MD5s
  of its stand-in files (stages/prepare_data.py: the official checksums are replaced only where a params
  file declares others, and the prepared file records it);
- BNNREPRO_MIRROR is a folder of tiny stand-ins of every dataset and of the AdamBNN / BCDNet checkpoints in
  their official formats (tests/standins.py), served through the normal verified download; the RWTH
  published weights are absent, so their fetch@ stages record "not fetched" and infer@official_* "not run";
  the AdamBNN / BCDNet SHA-256s are recorded at their first fetch into the project's empty pins file;
- every experiment config gets a `profiles.paper` section of overrides (`paper_budget`): one epoch, batches
  that cover a stand-in split in one or two steps (Digit is scikit-learn's real data: 12 steps), and the
  fine-tuning nets at the stand-in checkpoints' 1/8 width. Everything else is the paper recipe: optimizers, schedules, image sizes, model code.

One stage is not rerun: `memory` measures the paper recipes' models at their batch sizes whatever the profile
(it reads the configs without one), so its outputs under the paper profile are this checkout's own; the project
takes them from the checkout and `dvc commit`s the stage, which saves about five minutes of CI. Every run of
`make repro` and tests/test_memory.py exercise it.

It then checks that `dvc repro` exits 0, that every stage of every dvc.yaml ran (each is in a lock file, and
`dvc status` is clean), that every training run of the paper profile trained (none is skipped), and that
the report was written. Deselect it with `-m "not pipeline"`; run it alone with
`.venv/bin/python -m pytest -m pipeline -s` (-s prints the time of each stage).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, offline_env
from dvc_project import dvc_executable, project_env, run
from standins import (CIFAR100_TRAIN, CIFAR_PER_FILE, MNIST_TRAIN, TINY_TRAIN, WIDTH, write_checkpoints,
                      write_datasets)

DVC = dvc_executable()
pytestmark = [pytest.mark.pipeline,
              pytest.mark.skipif(DVC is None, reason="dvc is not installed (it is a dependency in pyproject.toml)")]

# Tracked files that the pipeline writes: left out of the project, so that every stage must run.
PRODUCED = ("reports/",)
LOCK = "dvc.lock"

BATCH = 128  # covers every stand-in split in one or two steps (Caltech-256: 217 training images)
VAL_SIZE = 2  # experiments that hold out validation images hold out two
TRAIN_IMAGES = {"digits": 1440, "mnist": MNIST_TRAIN, "fashion-mnist": MNIST_TRAIN, "cifar10": 5 * CIFAR_PER_FILE,
                "cifar100": CIFAR100_TRAIN, "tiny-imagenet": TINY_TRAIN}
TRAINING_STAGES = ("train@", "sgdat@", "compare@", "bws_digits@", "binsfo@", "binsfo_finetune@")
# Stages whose command reads no profile: committed from this checkout's outputs instead of rerun (see above).
PROFILE_INDEPENDENT = {"memory": ("reports/memory.md", "reports/memory.csv", "reports/memory_training_state.csv",
                                  "reports/memory_training_state.png", "reports/memory_peak.png")}


def copy_tracked_files(dest: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    for name in listed.decode().split("\0"):
        source = REPO_ROOT / name
        if not name or Path(name).name == LOCK or name.startswith(PRODUCED) or not source.is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / name)


class _NoAliases(yaml.SafeDumper):
    """Configs may hold no YAML anchors or aliases (bnnrepro.config.ConfigLoader): write every value out."""

    def ignore_aliases(self, data):
        return True


def write_yaml(path: Path, data) -> None:
    path.write_text(yaml.dump(data, Dumper=_NoAliases, sort_keys=False))


def experiment_configs(project: Path) -> list[Path]:
    """config/**/*.yml that are experiments (data, model and train sections), not recipes or claims."""
    return [p for p in sorted((project / "config").rglob("*.yml"))
            if {"data", "model", "train"} <= set(yaml.safe_load(p.read_text()) or {})]


def paper_budget(raw: dict) -> dict:
    """The one-step overrides of one experiment config (its `profiles.paper`)."""
    data = raw["data"]
    budget = {"train.epochs": 1, "data.batch_size": BATCH, "data.eval_batch_size": BATCH}
    val = VAL_SIZE if data.get("val_size") else 0
    if val:
        budget["data.val_size"] = val
    if "total_steps" in (raw["optim"].get("args") or {}):  # a flip temperature schedule over the whole run
        budget["optim.args.total_steps"] = math.ceil((TRAIN_IMAGES[data["dataset"]] - val) / BATCH)
    if raw["model"].get("pretrained"):  # the stand-in checkpoints are the official layout at 1/8 width
        budget["model.width"] = WIDTH
    return budget


def configure(project: Path, md5: dict[str, dict[str, str]]) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params.update(profile="paper", device="cpu")  # threads: as params.yaml fixes them
    for name, checksums in md5.items():
        params["datasets"][name]["md5"] = checksums
    write_yaml(project / "params.yaml", params)
    for path in experiment_configs(project):
        raw = yaml.safe_load(path.read_text())
        raw.setdefault("profiles", {})["paper"] = paper_budget(raw)
        write_yaml(path, raw)
    (project / "config" / "official_sha256.yml").write_text("{}\n")  # no pins: the first fetch records them
    (project / ".dvc" / "config.local").write_text(f"[core]\n    site_cache_dir = {project.parent / 'dvc-site'}\n")


def repro(project: Path, env: dict[str, str], log: Path) -> tuple[int, list[tuple[str, float]]]:
    """Run `dvc repro`, teeing its output to `log`; returns its exit code and (stage, seconds) in order."""
    timings, stage, started = [], None, time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([DVC, "repro"], cwd=project, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            out.write(line)
            if line.startswith("Running stage '"):
                now = time.perf_counter()
                if stage:
                    timings.append((stage, now - started))
                stage, started = line.split("'")[1], now
        code = proc.wait()
    if stage:
        timings.append((stage, time.perf_counter() - started))
    return code, timings


def time_per_kind(timings: list[tuple[str, float]]) -> str:
    """Seconds per kind of stage (train, sgdat, memory, ...): from one "Running stage" line to the next, so
    DVC's own work after a command (hashing outputs, rewriting the lock file) is counted with it."""
    kinds: dict[str, list[float]] = {}
    for name, s in timings:
        kinds.setdefault(name.split(":")[-1].split("@")[0], []).append(s)
    return "\n".join(f"  {kind:16s} {len(times):4d} stages {sum(times):7.1f} s ({sum(times) / len(times):5.1f} s each, "
                     f"slowest {max(times):5.1f} s)" for kind, times in sorted(kinds.items(), key=lambda kv: -sum(kv[1])))


def lock_stages(project: Path) -> dict[str, dict]:
    """Every stage recorded in a lock file, named as `dvc stage list` names it."""
    stages = {}
    for lock in sorted(project.rglob(LOCK)):
        prefix = "" if lock.parent == project else f"{lock.parent.relative_to(project)}/dvc.yaml:"
        for name, entry in yaml.safe_load(lock.read_text())["stages"].items():
            stages[prefix + name] = entry
    return stages


def test_paper_profile_runs_every_stage(tmp_path):
    project, mirror = tmp_path / "project", tmp_path / "mirror"
    copy_tracked_files(project)
    md5 = write_datasets(mirror)
    write_checkpoints(mirror)
    configure(project, md5)
    env = project_env(project, mirror, offline_env())
    run(["git", "init", "--quiet"], project, env)
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "--quiet", "-m", "paper profile, one-step budget"], project, env)
    for stage, outputs in PROFILE_INDEPENDENT.items():
        assert "--profile" not in yaml.safe_load((project / "dvc.yaml").read_text())["stages"][stage]["cmd"]
        for out in outputs:
            (project / out).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / out, project / out)
        run([DVC, "commit", "--force", stage], project, env)

    tic = time.perf_counter()
    code, timings = repro(project, env, tmp_path / "repro.log")
    seconds = time.perf_counter() - tic
    print(f"\ndvc repro: {len(timings)} stages in {seconds:.0f} s")
    print(time_per_kind(timings))
    assert code == 0, (tmp_path / "repro.log").read_text()[-6000:]

    # every stage of every dvc.yaml ran and is recorded; nothing is left to run
    listed = set(run([DVC, "stage", "list", "--all", "--name-only"], project, env).split())
    recorded = lock_stages(project)
    assert listed == set(recorded), sorted(listed ^ set(recorded))
    assert "up to date" in run([DVC, "status"], project, env)

    # every training run of the paper profile trained (none skipped)
    runs = [path.split("/")[2] for entry in recorded.values() for out in entry.get("outs", [])
            if (path := out["path"]).startswith("reports/runs/") and path.endswith("/metrics.json")]
    trains = [name for name in listed if name.split(":")[-1].startswith(TRAINING_STAGES)]
    assert len(runs) == len(trains) == len(set(runs))
    status = {r: json.loads((project / "reports" / "runs" / r / "metrics.json").read_text()) for r in runs}
    assert {r: m["status"] for r, m in status.items() if m["status"] != "trained"} == {}
    assert {m["profile"] for m in status.values()} == {"paper"}
    finetuned = [m for m in status.values() if m["model"] in ("reactnet_a", "bcdnet")]
    assert finetuned and all(len(m["pretrained"]["sha256"]) == 64 for m in finetuned)

    # the published weights: AdamBNN and BCDNet fetched from the mirror; RWTH's absent, recorded as such
    official = {p.stem: json.loads(p.read_text())["status"] for p in (project / "reports/official/fetch").glob("*.json")}
    assert official == {"adambnn": "fetched", "bcdnet": "fetched", **{f"rwth_{n}": "not fetched" for n in
                        ("lenet5_binary", "lenet5_float", "vggnet7_binary", "vggnet7_float")}}
    evaluated = {p.stem: json.loads(p.read_text()) for p in (project / "reports/official").glob("rwth_*.json")}
    assert len(evaluated) == 4 and all(r["reason"].startswith("not fetched") for r in evaluated.values())
    assert (project / "reports" / "README.md").is_file()
    shutil.rmtree(project)  # passed: the GBs of full-width weights (models/, the DVC cache) are not needed
