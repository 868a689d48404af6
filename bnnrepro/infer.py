"""Evaluate a saved model on its dataset's test split.

    python -m bnnrepro.infer --model-path pretrained/lenet5_binary_mnist [--json]

The model folder is a bnnrepro folder (model.safetensors + metadata.json, latent or packed) or an
official RWTH run folder (results.pt + params.yml, as stage fetch@<name> writes it). The dataset is taken
from data/prepared, and downloaded (mirror first, checksum verified) if it is not there yet.

With --record-not-run (the pipeline's infer@ stages), a model that was not fetched or a dataset that the
profile did not prepare is not an error: the JSON says {"status": "not run", "reason": ...} and the exit
code is 0, so an offline or quick-profile `dvc repro` passes and the report says why.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from bnnrepro.data.batches import BatchLoader
from bnnrepro.config import ExperimentConfig
from bnnrepro.data.prepared import DATA_FILE, SKIP_FILE, Dataset, load_dataset, prepare_dataset
from bnnrepro.engine.train import evaluate
from bnnrepro.errors import MissingFileError, run_cli
from bnnrepro.export import load_model, load_state_dict_checked
from bnnrepro.io import write_json
from bnnrepro.models import build_model
from bnnrepro.official import not_fetched_reason
from bnnrepro.rwth import config_from_params, is_rwth_folder, load_rwth_state_dict, read_params, read_published_accuracy
from bnnrepro.runtime import resolve_device


def load_any(model_path: Path, device: torch.device):
    """(model, config) from a bnnrepro model folder or an official RWTH run folder."""
    if reason := not_fetched_reason(model_path):  # a fetch@ stage's folder without the files
        raise MissingFileError(f"{model_path}: {reason}")
    if is_rwth_folder(model_path):
        cfg = config_from_params(read_params(model_path), model_path.name, str(model_path / "params.yml"))
        published = read_published_accuracy(model_path)
        if published is not None:  # the number the publisher measured on these very weights
            cfg = dataclasses.replace(cfg, reported={"top1": published})
        channels, size = (1, 28) if cfg.data.dataset == "mnist" else (3, 32)
        model = build_model(cfg.model, channels, 10, size)
        load_state_dict_checked(model, load_rwth_state_dict(model_path / "results.pt"), str(model_path / "results.pt"))
        return model.to(device).eval(), cfg
    model, cfg, _ = load_model(model_path, device)
    return model, cfg


def evaluate_on_test(model: torch.nn.Module, cfg: ExperimentConfig, data: Dataset, device: torch.device) -> dict:
    """Top-1/top-5 (%) on the whole test split, with the config's input size, normalization and tie break."""
    loader = BatchLoader(data.test_images, data.test_labels, cfg.data.eval_batch_size, max_value=data.max_value,
                         mean=tuple(cfg.data.mean), std=tuple(cfg.data.std), resize=cfg.data.resize, device=device)
    return evaluate(model.to(device, memory_format=torch.channels_last), loader, cfg.train.tie_break)


def dataset_for(name: str, data_root: Path):
    folder = data_root / "prepared" / name
    if not (folder / DATA_FILE).is_file():
        prepare_dataset(name, folder, data_root / "raw" / name)
    return load_dataset(folder)


def not_run_reason(model_path: Path, data_root: Path, dataset: str | None) -> str | None:
    """Why the pipeline cannot evaluate this model now (not fetched, dataset left out by the profile), or None."""
    reason = not_fetched_reason(model_path)
    if reason is None and dataset is not None:
        skipped = data_root / "prepared" / dataset / SKIP_FILE
        if skipped.is_file() and not (skipped.parent / DATA_FILE).is_file():
            reason = f"{dataset} {json.loads(skipped.read_text())['reason']}"
    return reason


def write_result(args, out: dict) -> int:
    if args.out:
        write_json(args.out, out)
    if args.json:
        print(json.dumps(out, sort_keys=True))
    elif "accuracy" in out:
        print(f"{args.model_path}: {out['accuracy']:.2f} % top-1 on the {out['n']} {out['dataset']} test images")
    else:
        print(f"{args.model_path}: {out['status']}: {out['reason']}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True, type=Path)
    p.add_argument("--data-root", type=Path, default=Path("data"), help="holds prepared/<dataset> and raw/<dataset>")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", type=Path, help="also write the JSON object to this file (atomically)")
    p.add_argument("--record-not-run", action="store_true", help="a model not fetched or a dataset the profile "
                   "left out gives {status: not run, reason} and exit 0 instead of an error")
    args = p.parse_args(argv)
    not_run = {"status": "not run", "model_path": str(args.model_path)}
    if args.record_not_run and (reason := not_run_reason(args.model_path, args.data_root, None)):
        return write_result(args, {**not_run, "reason": reason})
    device = resolve_device(args.device)
    if not args.model_path.is_dir():
        raise MissingFileError(f"{args.model_path}: no such model folder - give a folder holding model.safetensors "
                               "and metadata.json, or an RWTH run folder")
    model, cfg = load_any(args.model_path, device)
    if args.record_not_run and (reason := not_run_reason(args.model_path, args.data_root, cfg.data.dataset)):
        return write_result(args, {**not_run, "reason": reason, "paper": cfg.paper, "dataset": cfg.data.dataset})
    data = dataset_for(cfg.data.dataset, args.data_root)
    result = evaluate_on_test(model, cfg, data, device)
    return write_result(args, {
        "accuracy": round(result["top1"], 2), "top5": round(result["top5"], 2), "dataset": cfg.data.dataset,
        "split": "test", "n": result["n"], "model_path": str(args.model_path), "device": device.type,
        "paper": cfg.paper, "model": cfg.model.arch, "method": cfg.model.describe(),
        "reported_top1": cfg.reported.get("top1")})


if __name__ == "__main__":
    sys.exit(run_cli(main))
