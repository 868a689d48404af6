"""Evaluate a saved model on its dataset's test split.

    python -m bnnrepro.infer --model-path pretrained/lenet5_binary_mnist [--json]

The model folder is a bnnrepro folder (model.safetensors + metadata.json, latent or packed) or an
official RWTH run folder (results.pt + params.yml). The dataset is taken from data/prepared, and
downloaded (mirror first, checksum verified) if it is not there yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bnnrepro.data.batches import BatchLoader
from bnnrepro.data.download import DownloadError
from bnnrepro.config import ExperimentConfig
from bnnrepro.data.prepared import DATA_FILE, Dataset, load_dataset, prepare_dataset, resized
from bnnrepro.engine.train import evaluate
from bnnrepro.export import load_model, load_state_dict_checked
from bnnrepro.io import write_json
from bnnrepro.models import build_model
from bnnrepro.rwth import config_from_params, is_rwth_folder, load_rwth_state_dict, read_params
from bnnrepro.runtime import resolve_device


def load_any(model_path: Path, device: torch.device):
    """(model, config) from a bnnrepro model folder or an official RWTH run folder."""
    if is_rwth_folder(model_path):
        cfg = config_from_params(read_params(model_path), model_path.name)
        channels, size = (1, 28) if cfg.data.dataset == "mnist" else (3, 32)
        model = build_model(cfg.model, channels, 10, size)
        load_state_dict_checked(model, load_rwth_state_dict(model_path / "results.pt"), str(model_path / "results.pt"))
        return model.to(device).eval(), cfg
    model, cfg, _ = load_model(model_path, device)
    return model, cfg


def evaluate_on_test(model: torch.nn.Module, cfg: ExperimentConfig, data: Dataset, device: torch.device) -> dict:
    """Top-1/top-5 (%) on the whole test split, with the config's input size, normalization and tie break."""
    data = resized(data, cfg.data.resize)
    loader = BatchLoader(data.test_images, data.test_labels, cfg.data.eval_batch_size, max_value=data.max_value,
                         mean=tuple(cfg.data.mean), std=tuple(cfg.data.std), device=device)
    return evaluate(model.to(device, memory_format=torch.channels_last), loader, cfg.train.tie_break)


def dataset_for(name: str, data_root: Path):
    folder = data_root / "prepared" / name
    if not (folder / DATA_FILE).is_file():
        prepare_dataset(name, folder, data_root / "raw" / name)
    return load_dataset(folder)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True, type=Path)
    p.add_argument("--data-root", type=Path, default=Path("data"), help="holds prepared/<dataset> and raw/<dataset>")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", type=Path, help="also write the JSON object to this file (atomically)")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
        model, cfg = load_any(args.model_path, device)
        data = dataset_for(cfg.data.dataset, args.data_root)
    except (FileNotFoundError, RuntimeError, ValueError, DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    result = evaluate_on_test(model, cfg, data, device)
    out = {"accuracy": round(result["top1"], 2), "top5": round(result["top5"], 2), "dataset": cfg.data.dataset,
           "split": "test", "n": result["n"], "model_path": str(args.model_path), "device": device.type}
    if args.out:
        write_json(args.out, out)
    print(json.dumps(out, sort_keys=True) if args.json else
          f"{args.model_path}: {out['accuracy']:.2f} % top-1 on the {out['n']} {out['dataset']} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
