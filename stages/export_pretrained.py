"""Ship a trained model into pretrained/<name>: packed 1-bit weights, metadata and training curve.

Not a DVC stage: shipped weights come from a longer budget than the quick profile, run once with
stages/train.py and exported by hand. Two sources:

    # a finished training run (models/<run> and reports/runs/<run> as stages/train.py writes them)
    python stages/export_pretrained.py lenet5_binary_mnist --run runs/pretrained/models/lenet5_binary_mnist \
        --history runs/pretrained/reports/lenet5_binary_mnist/history.csv --command "..."
    # the best-validation weights so far of a run still in progress (its per-epoch checkpoint)
    python stages/export_pretrained.py lenet5_binary_mnist --checkpoint runs/.../<digest>.pt \
        --config config/rwth/binary_mnist.yml --profile paper -o train.epochs=100 --command "..."

The exported model is evaluated again after the packing round trip; that accuracy goes into the metadata.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch

from bnnrepro.config import load_experiment, parse_override
from bnnrepro.data.prepared import load_dataset
from bnnrepro.engine.checkpoint import load_checkpoint
from bnnrepro.errors import MissingFileError, run_cli
from bnnrepro.export import load_model, save_model
from bnnrepro.infer import evaluate_on_test
from bnnrepro.io import write_text
from bnnrepro.models import build_model
from bnnrepro.runtime import git_commit


def from_checkpoint(args, dataset):
    cfg = load_experiment(args.config, dict(parse_override(o) for o in args.override), profile=args.profile)
    state = load_checkpoint(args.checkpoint, cfg.digest())
    if state is None:
        raise FileNotFoundError(f"no checkpoint at '{args.checkpoint}'")
    c, h, _ = dataset.image_shape
    model = build_model(cfg.model, c, dataset.num_classes, cfg.data.resize or h)
    model.load_state_dict(state["best"]["model"])
    history = pd.DataFrame(state["history"])
    trained = {"epochs_trained": state["epoch"], "epochs_planned": cfg.train.epochs,
               "best_epoch": state["best"]["epoch"], "best_val_top1": round(state["best"]["val_top1"], 2),
               "train_seconds": round(state["train_seconds"], 1)}
    return model.eval(), cfg, history, trained


def from_run(args):
    model, cfg, meta = load_model(args.run)
    history = pd.read_csv(args.history)
    result = meta["result"]
    timing_path = args.timing / f"{args.run.name}.json"  # written by stages/train.py, with the commit the training
    if not timing_path.is_file():                         # ran at (kept out of the hashed models/)
        raise MissingFileError(f"{timing_path}: the run's timing record is missing - export from the machine that "
                               "trained it, or use --checkpoint")
    timing = json.loads(timing_path.read_text())
    trained = {"epochs_trained": result["epochs"], "epochs_planned": result["epochs"],
               "best_epoch": result["best_epoch"], "best_val_top1": result["best_val_top1"],
               "train_seconds": timing["train_seconds"], "training_commit": timing.get("commit")}
    return model, cfg, history, trained


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("--run", type=Path, help="finished run folder (models/<run>)")
    p.add_argument("--history", type=Path, help="history.csv of the finished run")
    p.add_argument("--timing", type=Path, default=Path("runs/timing"), help="the run's timing records (stages/train.py --timing)")
    p.add_argument("--checkpoint", type=Path, help="per-epoch checkpoint of a run in progress")
    p.add_argument("--config", type=Path)
    p.add_argument("--profile", default="paper")
    p.add_argument("-o", "--override", action="append", default=[])
    p.add_argument("--data", type=Path, default=Path("data/prepared/mnist"))
    p.add_argument("--out-root", type=Path, default=Path("pretrained"))
    p.add_argument("--threads", default="1", help="CPU threads the training used, as text (recorded)")
    p.add_argument("--command", required=True, help="the training command, recorded in the metadata")
    p.add_argument("--training-commit", help="commit the training code was loaded from (overrides what the run recorded)")
    args = p.parse_args(argv)

    dataset = load_dataset(args.data)
    model, cfg, history, trained = from_checkpoint(args, dataset) if args.checkpoint else from_run(args)
    out = args.out_root / args.name
    c, h, _ = dataset.image_shape
    binary = cfg.model.weights == "binary"
    save_model(model, out, cfg, {"channels": c, "image_size": cfg.data.resize or h, "num_classes": dataset.num_classes},
               "packed" if binary else "latent")
    reloaded, _, _ = load_model(out)
    test = evaluate_on_test(reloaded, cfg, dataset, torch.device("cpu"))
    published = load_experiment(args.config, profile="paper").train.epochs if args.config else None
    budget = f"{trained['epochs_trained']} epochs" + (f" (the published recipe: {published})" if published else "")
    metadata = json.loads((out / "metadata.json").read_text())
    # without a validation split (val_size 0, as BinSFO's code) the test split picks the best epoch
    chosen_on = "validation" if cfg.data.val_size else "test"
    metadata.update({
        "budget": f"{budget}; best-{chosen_on} checkpoint from epoch {trained['best_epoch']}; "
                  f"CPU, {args.threads} thread(s); seed {cfg.train.seed}",
        "profile": args.profile, "seed": cfg.train.seed, **trained, "training_commit": args.training_commit or trained.get("training_commit"),
        "export_commit": git_commit(),
        "data_sha256": dataset.sha256, "training_command": args.command,
        "test_top1": round(test["top1"], 2), "test_top5": round(test["top5"], 2), "test_n": test["n"],
        "reported_top1": cfg.reported.get("top1"), "published_epochs": published})
    write_text(out / "metadata.json", json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    write_text(out / "history.csv", history.to_csv(index=False, float_format="%.4f"))
    print(f"{out}: test top-1 {test['top1']:.2f} % after export and reload ({metadata['budget']})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
