"""A training process killed with SIGKILL and started again by the same command ends byte-identical
to an uninterrupted run, and no half-written file is left where a later run would trust it."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from standins import write_learnable_mnist

pytestmark = pytest.mark.slow  # real processes: seconds each


def train_command(repo_root, data, out):
    return [sys.executable, "stages/train.py", "run", "--config", "config/rwth/binary_mnist.yml", "--data", str(data),
            "--profile", "paper", "--threads", "1", "--models", str(out / "models"), "--reports", str(out / "reports"),
            "--checkpoints", str(out / "checkpoints"), "--timing", str(out / "timing"), "-o", "train.epochs=6", "-o", "data.val_size=100",
            "-o", "data.eval_batch_size=100"]


def outputs(out):
    files = ["models/run/model.safetensors", "models/run/metadata.json", "reports/run/metrics.json",
             "reports/run/history.csv"]
    return {f: (out / f).read_bytes() for f in files}


def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path, repo_root):
    write_learnable_mnist(tmp_path / "data", 600, 100)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    reference = tmp_path / "reference"
    subprocess.run(train_command(repo_root, tmp_path / "data", reference), cwd=repo_root, env=env, check=True,
                   capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_command(repo_root, tmp_path / "data", killed), cwd=repo_root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = killed / "checkpoints" / "run"
    deadline = time.time() + 120
    while not (checkpoints.is_dir() and any(checkpoints.glob("*.pt"))) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 0.5))  # somewhere inside a later epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "models" / "run" / "model.safetensors").exists(), "killed before finishing"
    leftovers = [p.name for p in checkpoints.iterdir() if not p.name.endswith(".pt")]
    assert leftovers == [] or all(name.endswith(".tmp") for name in leftovers)  # temp files are never read

    # what a kill during a write leaves, in both folders the run writes to (planted: the kill may miss a write)
    stale = [checkpoints / ".0123456789abcdef.pt.k2j3x9.tmp", killed / "models" / "run" / ".model.safetensors.a1b2.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half-written")
    subprocess.run(train_command(repo_root, tmp_path / "data", killed), cwd=repo_root, env=env, check=True,
                   capture_output=True)
    assert outputs(killed) == outputs(reference)
    assert not any(path.exists() for path in stale)  # removed at the start of the rerun
    assert sorted(p.name for p in (killed / "models" / "run").iterdir()) == ["metadata.json", "model.safetensors"]
    # the commit differs between identical runs: it is kept out of models/ (hashed by DVC), in runs/timing/
    metadata = json.loads((killed / "models" / "run" / "metadata.json").read_text())
    assert "commit" not in metadata["environment"]
    assert json.loads((killed / "timing" / "run.json").read_text())["commit"]
    assert not any(checkpoints.glob("*.pt")), "a finished run removes its checkpoint"
