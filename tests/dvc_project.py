"""A throwaway DVC project around this checkout's stage scripts (tests/test_dvc_pipeline.py, benchmarks/).

The project is a git repo with a two-stage `dvc.yaml` whose commands are the real stage scripts,

    data:   stages/prepare_data.py mnist          (from the mirror, checksums verified)
    train:  stages/train.py tiny --config tiny.yml --device ${device} --threads ${threads} -o optim.lr=${lr}

training a binary LeNet5 of width 1/8 for one epoch of 1,000 images (10 steps), so that each stage
takes seconds. `params.yaml` holds `device` (each worker's device, as in the real params.yaml),
`threads` and `lr`. The stages run the code of `repo_root` (PYTHONPATH) with the venv's python.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent  # the venv: its `python` runs the stages, its `dvc` the pipeline


def dvc_executable() -> str | None:
    return shutil.which("dvc", path=str(BIN)) or shutil.which("dvc")


# 1,000 training images, 59,000 validation images (the split is the last `val_size` training images):
# training is the cheap part here (the stage's time is imports and evaluation), and two lr values
# already give different, above-chance metrics.
TINY_CONFIG = """\
paper: test
description: a width-1/8 binary LeNet5 for one epoch of 1,000 MNIST images (pipeline tests)
data: {dataset: mnist, batch_size: 100, val_size: 59000, eval_batch_size: 2000}
model: {arch: lenet5, weights: binary, activations: binary, estimator: bnn, layer_order: CPBA, bias: false,
        width: 0.125}
optim: {name: sgd, lr: 0.01, momentum: 0.9}
train: {epochs: 1, seed: 0, loss: squared_hinge}
"""

PARAMS = """\
device: cpu   # each worker's device: cpu | cuda | cuda:N | auto  (stages/train.py --device)
threads: 1
lr: 0.01
"""

DVC_YAML = """\
stages:
  data:
    cmd: python {stages}/prepare_data.py mnist --out data/prepared/mnist --raw data/raw/mnist
    outs:
      - data/prepared/mnist
  train:
    cmd: python {stages}/train.py tiny --config tiny.yml --data data/prepared/mnist
      --device ${{device}} --threads ${{threads}} -o optim.lr=${{lr}}
    deps:
      - tiny.yml
      - data/prepared/mnist
    params:
      - device
      - threads
      - lr
    outs:
      - models/tiny
    metrics:
      - reports/runs/tiny/metrics.json:
          cache: false
    plots:
      - reports/runs/tiny/history.csv:
          cache: false
"""

# Every file the pipeline produces, data to report.
PRODUCTS = ("data/prepared/mnist/data.safetensors", "models/tiny/model.safetensors", "models/tiny/metadata.json",
            "reports/runs/tiny/metrics.json", "reports/runs/tiny/history.csv")
METRICS = "reports/runs/tiny/metrics.json"


class CommandError(RuntimeError):
    pass


def project_env(repo_root: Path, mirror: Path | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: os.environ) with the stages running `repo_root`'s code with the venv's python,
    on `mirror`, one thread; git commits get a fixed author and date, so that the same project created
    twice is the same commit."""
    env = dict(os.environ if base is None else base)
    stamp = "2000-01-01T00:00:00+00:00"
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(repo_root), PYTHONHASHSEED="0",
               OMP_NUM_THREADS="1", DVC_NO_ANALYTICS="1",
               GIT_AUTHOR_NAME="bnnrepro", GIT_AUTHOR_EMAIL="bnnrepro@example.invalid", GIT_AUTHOR_DATE=stamp,
               GIT_COMMITTER_NAME="bnnrepro", GIT_COMMITTER_EMAIL="bnnrepro@example.invalid",
               GIT_COMMITTER_DATE=stamp)
    if mirror is not None:
        env["BNNREPRO_MIRROR"] = str(mirror)
    return env


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run a command; its stdout and stderr together, or CommandError with all of it."""
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CommandError(f"{shlex.join(args)} (in {cwd}) exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def create_project(folder: Path, repo_root: Path, env: dict[str, str], remote: Path | None = None,
                   site_cache: Path | None = None) -> Path:
    """The project as committed: config, params and pipeline, nothing produced yet. With `remote`, its
    committed DVC config names that local folder as the default remote, as a team's project would."""
    folder.mkdir(parents=True)
    run(["git", "init", "--quiet"], folder, env)
    run([dvc_executable(), "init", "--quiet"], folder, env)
    config = "[core]\n    analytics = false\n    check_update = false\n"
    if remote is not None:
        config += "    remote = shared\n"
    if site_cache is not None:  # DVC's per-repo index; default under /var/tmp
        config += f"    site_cache_dir = {site_cache}\n"
    if remote is not None:
        config += f"['remote \"shared\"']\n    url = {remote}\n"
    (folder / ".dvc" / "config").write_text(config)
    (folder / "tiny.yml").write_text(TINY_CONFIG)
    (folder / "params.yaml").write_text(PARAMS)
    (folder / "dvc.yaml").write_text(DVC_YAML.format(stages=shlex.quote(str(repo_root / "stages"))))
    (folder / ".gitignore").write_text("/data/raw/\n/checkpoints/\n")
    run(["git", "add", "-A"], folder, env)
    run(["git", "commit", "--quiet", "-m", "tiny pipeline"], folder, env)
    return folder


def clone(source: Path, dest: Path, env: dict[str, str], shared_cache: Path | None = None,
          site_cache: Path | None = None) -> Path:
    """A git clone of `source`; with `shared_cache`, it uses that DVC cache (copying files out of it,
    never linking, so the cache is only read) and checks its outputs out."""
    run(["git", "clone", "--quiet", str(source), str(dest)], source.parent, env)
    # .dvc/config.local: this clone's own settings, never committed
    local = ["[core]", "    check_update = false"]
    if site_cache is not None:
        local.append(f"    site_cache_dir = {site_cache}")
    if shared_cache is not None:
        local += ["[cache]", f"    dir = {shared_cache}", "    type = copy"]
    (dest / ".dvc" / "config.local").write_text("\n".join(local) + "\n")
    if shared_cache is not None:
        run([dvc_executable(), "checkout", "--quiet"], dest, env)
    return dest
