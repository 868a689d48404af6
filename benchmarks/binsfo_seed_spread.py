"""Seed spread of BinSFO's MNIST MLP: test top-1 after given epochs over several seeds (see
docs/binsfo-seed-spread.md for the method and the published code's side).

    .venv/bin/python benchmarks/binsfo_seed_spread.py --recipe binary --lr 0.1 --seeds 1 2 3 4 5 --epochs 3 \
        [--published-logs '/tmp/binsfo_runs/published_binary_lr0.1_seed*.log'] [--out reports/binsfo_seed_spread]

Trains config/binsfo/mnist_mlp.yml with a recipe of config/binsfo/optimizers.yml (the published
arithmetic on: per-step batch factor, one data order, test batches of 256), narrowed to the published
reference width (hidden 256), once per seed: train.seed and the flip masks' seed both take the seed.
With --published-logs it also reads the stdout logs of the published code (one file per seed; the
seed is the number after 'seed' in the file name) and puts both sides in one table. Writes
<out>.json (every accuracy) and <out>.md (the table), and prints the table. Not part of the pipeline:
the published side's numbers come from runs outside this repository.
"""

from __future__ import annotations

import argparse
import glob
import re
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from bnnrepro.config import load_experiment
from bnnrepro.data.prepared import load_dataset, prepare_dataset
from bnnrepro.engine.train import fit
from bnnrepro.io import write_json, write_text
from bnnrepro.runtime import resolve_device

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "binsfo" / "mnist_mlp.yml"
RECIPES = ROOT / "config" / "binsfo" / "optimizers.yml"
PUBLISHED_TOP1 = re.compile(r"valid accuracy \(top-1\)\s*:\s*([0-9.]+)")


def our_accuracies(recipe: str, lr: float, seed: int, epochs: int, hidden: int, data, workdir: Path) -> list[float]:
    """Test top-1 (%) after each epoch of one seed."""
    overrides = {"train.epochs": epochs, "train.seed": seed, "optim.lr": lr, "model.hidden": hidden}
    if recipe == "binary":
        overrides["optim.args.seed"] = seed
    cfg = load_experiment(CONFIG, overrides, recipe=f"{RECIPES}:{recipe}")
    result = fit(cfg, data, resolve_device("cpu"), workdir / f"{recipe}_lr{lr}_h{hidden}_seed{seed}.pt", progress=False)
    return [row["val_top1"] for row in result.history]


def published_accuracies(pattern: str) -> dict[int, list[float]]:
    """{seed: test top-1 (%) after each epoch} from the published code's stdout logs."""
    runs = {}
    for path in sorted(glob.glob(pattern)):
        seed = int(re.search(r"seed(\d+)", Path(path).name).group(1))
        runs[seed] = [100.0 * float(v) for v in PUBLISHED_TOP1.findall(Path(path).read_text())]
    if not runs:
        raise SystemExit(f"no published logs match {pattern!r}")
    return runs


def spread_table(sides: dict[str, dict[int, list[float]]], epochs: list[int]) -> pd.DataFrame:
    """One row per side and seed, then mean / min / max per side; one column per epoch."""
    rows = []
    for side, runs in sides.items():
        for seed in sorted(runs):
            rows.append({"code": side, "seed": str(seed), **{f"epoch {e}": runs[seed][e - 1] for e in epochs}})
        for name, fn in (("mean", statistics.fmean), ("min", min), ("max", max)):
            rows.append({"code": side, "seed": name, **{f"epoch {e}": fn(runs[s][e - 1] for s in runs) for e in epochs}})
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="binary", help="a recipe of config/binsfo/optimizers.yml (binary, real, ...)")
    p.add_argument("--lr", type=float, required=True, help="optim.lr (the published code's --lr)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--report-epochs", type=int, nargs="+", default=[1, 3])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default=str(ROOT / "data" / "prepared" / "mnist"),
                   help="prepared MNIST (made from BNNREPRO_MIRROR or the official URLs when missing)")
    p.add_argument("--published-logs", help="glob of the published code's stdout logs, one per seed")
    p.add_argument("--out", default="binsfo_seed_spread", help="writes <out>.json and <out>.md")
    p.add_argument("--workdir", help="keep the runs' checkpoints here (a later call with more --epochs extends "
                                     "them instead of starting again); default: a temporary folder")
    args = p.parse_args()
    if max(args.report_epochs) > args.epochs:
        raise SystemExit(f"--report-epochs {args.report_epochs} go past --epochs {args.epochs}")
    torch.set_num_threads(args.threads)
    if not Path(args.data, "data.safetensors").exists():
        prepare_dataset("mnist", args.data, Path(args.data).parent / "raw-mnist")
    data = load_dataset(args.data)

    ours, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            tic = time.perf_counter()
            ours[seed] = our_accuracies(args.recipe, args.lr, seed, args.epochs, args.hidden, data, workdir)
            seconds[seed] = round(time.perf_counter() - tic, 1)
            print(f"ours seed {seed}: " + " / ".join(f"{a:.2f}" for a in ours[seed]) + f"  ({seconds[seed]} s)", flush=True)
    sides = {"ours": ours}
    if args.published_logs:
        sides["published"] = published_accuracies(args.published_logs)
        short = [s for s, acc in sides["published"].items() if len(acc) < max(args.report_epochs)]
        if short:
            raise SystemExit(f"published logs of seeds {short} end before epoch {max(args.report_epochs)}")
    table = spread_table(sides, args.report_epochs)
    text = (f"BinSFO MNIST MLP, recipe {args.recipe}, lr {args.lr}, hidden {args.hidden}, batch 256, 64x64, "
            f"{args.threads} threads; test top-1 (%)\n\n" + table.to_markdown(index=False, floatfmt=".2f") + "\n")
    write_json(f"{args.out}.json", {"recipe": args.recipe, "lr": args.lr, "hidden": args.hidden,
                                    "threads": args.threads, "seconds_ours": seconds, **sides})
    write_text(f"{args.out}.md", text)
    print(text)


if __name__ == "__main__":
    main()
