"""DVC stage train@<run>: train one experiment config and write its model and reports.

    python stages/train.py RUN --config config/rwth/binary_mnist.yml --data data/prepared/mnist \
        --profile quick --device auto [--recipe config/sgdat/optimizers.yml:sgdm] [-o train.epochs=3 ...]

Writes models/RUN/ (latent weights + metadata) and reports/runs/RUN/{metrics.json,history.csv}.
A killed run resumes from checkpoints/RUN/ when the same command is run again. Under
`torchrun --nproc_per_node=N stages/train.py ...` it trains data-parallel on N processes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bnnrepro.config import load_experiment, parse_override, skip_reason
from bnnrepro.errors import run_cli
from bnnrepro.io import remove_stale_temp_files, write_json, write_text
from bnnrepro.run_metrics import SKIPPED, TRAINED, RunMetrics

# torch and everything that trains are imported in train(), after the skip check: in the quick profile
# most grid stages only record why they do not run, and importing torch would cost them seconds each


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run name (the DVC stage key)")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="prepared dataset folder")
    p.add_argument("--profile", default="quick")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--reports", type=Path, default=Path("reports/runs"))
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    p.add_argument("--pretrained-dir", type=Path, default=Path("data/pretrained"),
                   help="official checkpoints for model.pretrained (fine-tuning runs)")
    p.add_argument("--timing", type=Path, default=Path("runs/timing"), help="wall-clock seconds (not a DVC output)")
    p.add_argument("--recipe", help="optimizer recipe FILE:NAME applied to the config (e.g. "
                   "config/sgdat/optimizers.yml:sgdm)")
    p.add_argument("-o", "--override", action="append", default=[], help="section.key=value (repeatable)")
    return p.parse_args(argv)


def write_skipped(args, reason: str, cfg) -> None:
    write_json(args.models / args.run / "metadata.json", {"status": "skipped", "reason": reason})
    metrics = RunMetrics(run=args.run, paper=cfg.paper, status=SKIPPED, reason=reason, profile=args.profile,
                         reported=cfg.reported, dataset=cfg.data.dataset, model=cfg.model.arch,
                         method=cfg.model.describe(), optimizer=cfg.describe_optimizer())
    write_json(args.reports / args.run / "metrics.json", metrics.to_json())
    write_text(args.reports / args.run / "history.csv", "epoch,val_top1\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = dict(parse_override(o) for o in args.override)
    reason = skip_reason(args.config, args.profile)
    if reason:
        cfg = load_experiment(args.config, overrides, profile=args.profile, recipe=args.recipe,
                              check_registries=False)
        write_skipped(args, reason, cfg)
        return 0
    return train(args, overrides)


def train(args: argparse.Namespace, overrides: dict) -> int:
    import pandas as pd
    import torch

    from bnnrepro.data.prepared import load_dataset
    from bnnrepro.engine.distributed import init_from_env
    from bnnrepro.engine.train import fit
    from bnnrepro.export import save_model
    from bnnrepro.nn.layers import quantized_layers
    from bnnrepro.runtime import device_description, device_name, environment, git_commit, resolve_device

    commit = git_commit()  # now: the code this process runs was loaded from this commit
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_experiment(args.config, overrides, profile=args.profile, recipe=args.recipe)
    ranks, device = init_from_env(resolve_device(args.device))  # several ranks under torchrun
    if ranks.is_main:  # what a killed write of an earlier run left behind (only rank 0 writes there)
        for folder in (args.checkpoints / args.run, args.models / args.run):
            remove_stale_temp_files(folder)
    dataset = load_dataset(args.data)
    result = fit(cfg, dataset, device, args.checkpoints / args.run / f"{cfg.digest()}.pt", ranks=ranks,
                 pretrained_dir=args.pretrained_dir)
    if not ranks.is_main:
        return 0  # rank 0 writes the results

    c, h, _ = dataset.image_shape
    input_spec = {"channels": c, "image_size": cfg.data.resize or h, "num_classes": dataset.num_classes}
    metrics = RunMetrics(
        run=args.run, paper=cfg.paper, status=TRAINED, profile=args.profile, epochs=cfg.train.epochs,
        steps_per_epoch=result.shortened_epoch,
        seed=cfg.train.seed, device=device.type, device_name=device_name(device), dataset=cfg.data.dataset,
        num_classes=dataset.num_classes, data_sha256=dataset.sha256, model=cfg.model.arch,
        method=cfg.model.describe(), optimizer=cfg.describe_optimizer(),
        binary_weights=sum(layer.weight.numel() for layer in quantized_layers(result.model)),
        reported=cfg.reported, best_epoch=result.best_epoch, best_val_top1=round(result.best_val_top1, 2),
        test_top1=round(result.test["top1"], 2), test_top5=round(result.test["top5"], 2), test_n=result.test["n"],
        pretrained=result.extra.get("pretrained"))  # fine-tuning: the official checkpoint's SHA-256, what was loaded
    run_info = metrics.to_json()
    run_env = {"device": device_description(device), "threads": torch.get_num_threads(), "processes": ranks.world,
               **environment(device)}
    save_model(result.model, args.models / args.run, cfg, input_spec, "latent", {"result": run_info, "environment": run_env})
    # wall-clock time and the commit differ between runs that give the same weights: they stay out of every
    # DVC output (models/, reports/), so identical runs give byte-identical outputs and dvc.lock, and go to
    # the untracked runs/timing/ instead. (The device, threads and versions stay: they can change the numbers.)
    write_json(args.timing / f"{args.run}.json", {
        **run_env, "commit": commit, "train_seconds": round(result.train_seconds, 1), "resumed_from_epoch": result.resumed_from_epoch,
        "seconds_per_epoch": round(result.train_seconds / max(len(result.history) - result.resumed_from_epoch, 1), 2),
        "epoch_seconds": [row["epoch_seconds"] for row in result.history]})
    write_json(args.reports / args.run / "metrics.json", run_info)  # the same record as the model's metadata
    # wall-clock columns stay out of reports/ so that two runs give byte-identical reports
    history = pd.DataFrame(result.history).drop(columns=["epoch_seconds", "train_images_per_s"])
    write_text(args.reports / args.run / "history.csv", history.to_csv(index=False, float_format="%.4f"))
    checkpoint = args.checkpoints / args.run / f"{cfg.digest()}.pt"
    checkpoint.unlink(missing_ok=True)  # finished: a later run must train afresh, not reuse this state
    print(f"{args.run}: test top-1 {metrics.test_top1:.2f} % (best val {metrics.best_val_top1:.2f} % "
          f"at epoch {result.best_epoch}/{cfg.train.epochs}, profile {args.profile}, {run_env['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
