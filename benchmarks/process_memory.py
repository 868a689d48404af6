"""Benchmark: peak resident memory of a whole training run, ours against the published BinSFO code (issue 18,
docs/memory.md#the-whole-process).

    .venv/bin/python benchmarks/process_memory.py [--data data/prepared/mnist] [--hidden 256] [--epochs 1]
        [--published /path/to/a/checkout/of/the/published/BinSFO/code]

Trains BinSFO's MNIST MLP (config/binsfo/mnist_mlp.yml, the `binary` recipe: flip, EWM mask, scaled-gaussian
temperature, lr 0.1, batch 256) for --epochs at width --hidden, on the CPU with 2 threads, each run in a
process of its own, and reads that process's peak resident set size from the operating system (os.wait4's
ru_maxrss, what `/usr/bin/time -v` prints as "Maximum resident set size"):

- ours: `stages/train.py`, as the pipeline runs it;
- ours, phase by phase: the same training in one process that prints the peak after importing torch, after
  importing bnnrepro's training code, after loading the prepared dataset and after training (the loader
  resizes each batch to 64 x 64 as it draws it), so that the table shows where the memory goes;
- with --published: the published code's `main.py` with the same settings, as one CPU process, with
  only the edits that needs (the first three items of docs/binsfo-seed-spread.md#how-each-side-was-run:
  gloo instead of nccl, BatchNorm1d, no DataLoader workers, no wandb) and none of its speed edits, which
  would add a float copy of the resized dataset to the published side (docs/memory.md#the-whole-process).

Prints each peak in MiB and ours / published. Not a timed test: the numbers depend on the machine, the
allocator and the library versions; the ratio is what to read.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1024  # ru_maxrss is in KiB on Linux

# One process, one phase after another; prints "phase <name> <peak KiB>" after each (VmHWM: the peak so far).
PHASES = r"""
import sys
def peak(name):
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print("phase", name, kib, flush=True)
peak("python")
import torch
torch.set_num_threads(2)
peak("import torch")
from bnnrepro.config import load_experiment
from bnnrepro.data.prepared import load_dataset
from bnnrepro.engine.train import fit
from bnnrepro.runtime import resolve_device
peak("import bnnrepro")
data_dir, recipes, hidden, epochs, checkpoint = sys.argv[1:6]
cfg = load_experiment("config/binsfo/mnist_mlp.yml", {"model.hidden": int(hidden), "train.epochs": int(epochs),
                      "optim.lr": 0.1}, recipe=recipes + ":binary")
data = load_dataset(data_dir)
peak("load prepared MNIST")
fit(cfg, data, resolve_device("cpu"), checkpoint, progress=False)
peak("train")
"""


def peak_rss_mib(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, str]:
    """Run `command`; its peak resident memory in MiB (ru_maxrss of that child alone) and its output."""
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}); its output: {log}\n{text[-2000:]}")
    return usage.ru_maxrss / MIB, text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO / "data" / "prepared" / "mnist")
    p.add_argument("--hidden", type=int, default=256, help="width of the hidden layers (the published code's --hid_dim)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--published", type=Path, help="a checkout of the published BinSFO code, edited to run on one CPU")
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    recipes = str(REPO / "config" / "binsfo" / "optimizers.yml")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ours, _ = peak_rss_mib(
            [sys.executable, "stages/train.py", "rss", "--config", "config/binsfo/mnist_mlp.yml", "--data",
             str(args.data), "--profile", "paper", "--threads", "2", "--recipe", f"{recipes}:binary",
             "-o", f"train.epochs={args.epochs}", "-o", f"model.hidden={args.hidden}", "-o", "optim.lr=0.1",
             "--models", str(tmp / "models"), "--reports", str(tmp / "reports"), "--checkpoints", str(tmp / "ckpt")],
            REPO, env, tmp / "ours.log")
        rows.append(("ours: stages/train.py", ours))
        _, text = peak_rss_mib([sys.executable, "-c", PHASES, str(args.data), recipes, str(args.hidden),
                                str(args.epochs), str(tmp / "phases.pt")], REPO, env, tmp / "phases.log")
        phases = [line.split(maxsplit=1)[1].rsplit(maxsplit=1) for line in text.splitlines()
                  if line.startswith("phase ")]
        if args.published:
            published, _ = peak_rss_mib(
                [sys.executable, "main.py", "--dataset", "MNIST", "--model", "MLP", "--hid_dim", str(args.hidden),
                 "--depth", "4", "--batch_size", "256", "--epochs", str(args.epochs), "--lr", "0.1",
                 "--algorithm", "binary", "--mask_type", "EWM", "--scheduler_type", "scaled-gaussian", "--seed", "1"],
                args.published, {**env, "MASTER_ADDR": "localhost", "MASTER_PORT": "29517"}, tmp / "published.log")
            rows.append(("published BinSFO code: main.py", published))
    print(f"BinSFO MNIST MLP, width {args.hidden}, {args.epochs} epoch(s), CPU, 2 threads\n")
    print("| run | peak resident MiB |\n|---|---|")
    for name, mib in rows:
        print(f"| {name} | {mib:.0f} |")
    if args.published:
        print(f"\nours / published: {rows[0][1] / rows[1][1]:.2f}x")
    print("\nOurs, phase by phase (peak resident MiB so far, in one process):\n\n| after | peak MiB |\n|---|---|")
    for name, kib in phases:
        print(f"| {name} | {int(kib) / MIB:.0f} |")


if __name__ == "__main__":
    main()
