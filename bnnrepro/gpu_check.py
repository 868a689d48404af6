"""Check a GPU before the long runs: one training epoch of each GPU recipe, twice, compared byte for byte and timed.

    python -m bnnrepro.gpu_check [--device cuda] [--recipes 'sgdat@*-cifar10' ...] [--out reports/gpu_check.json]

The GPU recipes are the pipeline's training stages (train@<run> in dvc.yaml, <grid>@<cell> in grids/<grid>/dvc.yaml)
whose config the quick profile skips (`profiles.quick.skip`) on a dataset it does not prepare (params.yaml
`datasets`): the experiments that wait for a GPU, not a CPU grid whose models are shipped instead. Their commands
are read from the pipeline files themselves, so the check runs exactly the config, recipe and overrides the
pipeline would. By default one cell of a grid stands for every cell with the same config and dataset (the first
recipe of the grid's list); --all-cells runs every cell, --recipes picks cells by name (shell-style globs).

For each, bnnrepro.engine.train.fit trains the paper profile's recipe for one epoch, twice, from the same seed:
- on data/prepared/<dataset> when it is there, else on synthetic data: random uint8 images of the dataset's
  official shape, classes and split sizes (SYNTHETIC_SPLITS; --synthetic-images N takes N training images and
  scales the test split and the config's validation split by the same factor);
- the weights and optimizer state after the epoch (read from the run's checkpoint) and the epoch's metrics must be
  byte-identical between the two runs, else the recipe is reported as a mismatch with what differs;
- seconds per epoch: the second (warm) run's training time, scaled to the paper's images per epoch when the epoch
  was shortened (--max-steps, a smaller synthetic set); validation and test passes are not counted;
- peak GPU memory (torch.cuda.max_memory_allocated over each run; n/a on the CPU);
- projected GPU hours = seconds per epoch x the paper's epochs, next to the estimate the config's skip reason
  states ("about 2-6 GPU hours ..."), and x the grid cells sharing the config and dataset.
The fine-tuning recipes start from the official AdamBNN / BCDNet checkpoints when data/official/<model>/ (or the
mirror) has them, else from a random init of the same architecture, which the output says.

Deterministic kernels are switched on (bnnrepro.runtime.set_deterministic, CUBLAS_WORKSPACE_CONFIG included)
before anything touches CUDA. Exit code: 0 when every recipe gave identical runs, 1 when one did not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import math
import os
import re
import shlex
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate
from tqdm.auto import tqdm

from bnnrepro.config import ExperimentConfig, load_experiment, parse_override, skip_reason
from bnnrepro.data import DATA_FILE
from bnnrepro.data.download import mirror_from_env
from bnnrepro.data.folders import TEST_SIZE
from bnnrepro.data.prepared import Dataset, load_dataset
from bnnrepro.data.sources import get_source
from bnnrepro.engine.checkpoint import load_checkpoint
from bnnrepro.engine.train import fit
from bnnrepro.errors import BadFileError, MissingFileError, UsageError, run_cli
from bnnrepro.io import write_json
from bnnrepro.models.pretrained import find_checkpoint_file
from bnnrepro.plain_yaml import read_yaml_mapping
from bnnrepro.runtime import environment, git_commit, resolve_device, set_deterministic

TRAIN_SCRIPT = "stages/train.py"
MiB = 1 << 20


# ------------------------------------------------------------------------------------- the GPU recipes

@dataclass(frozen=True)
class Recipe:
    """One training stage of the pipeline, as its command states it."""

    name: str                      # the DVC stage name: train@rwth_binary_cifar10, sgdat@sgd_star-cifar10
    config: Path
    data: Path                     # the prepared dataset folder it trains on
    recipe: str | None = None      # optimizer recipe FILE:NAME
    overrides: dict[str, Any] = field(default_factory=dict)
    pretrained_dir: Path | None = None
    skip: str | None = None        # the config's profiles.quick.skip: why the quick profile leaves it to a GPU
    cells: int = 1                 # cells of its grid with the same config and dataset (itself included)

    @property
    def group(self) -> tuple[str, Path, Path]:
        return self.name.split("@")[0], self.config, self.data


def _train_command_parser() -> argparse.ArgumentParser:
    """The options of stages/train.py that say what a stage trains; the others (profile, device, ...) are ours."""
    p = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    p.add_argument("run")
    p.add_argument("--config", type=Path)
    p.add_argument("--data", type=Path)
    p.add_argument("--recipe")
    p.add_argument("-o", "--override", action="append", default=[])
    p.add_argument("--pretrained-dir", type=Path)
    return p


def pipeline_commands(root: Path) -> list[tuple[str, str, Path]]:
    """(name, command, working directory) of every stage of the pipeline, as DVC itself resolves them: dvc.yaml
    and the grids' pipeline files, foreach and matrix expanded, ${...} filled from params.yaml."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            return [(stage.name, cmd, Path(stage.wdir)) for stage in repo.index.stages
                    for cmd in ([stage.cmd] if isinstance(stage.cmd, str) else stage.cmd or [])]
    except DvcException as e:
        raise BadFileError(f"{root}: DVC cannot read the pipeline: {e}") from None


def training_stages(root: Path) -> list[Recipe]:
    """Every pipeline stage that runs stages/train.py, its paths made absolute from the stage's working directory."""
    parser = _train_command_parser()
    stages = []
    for name, cmd, wdir in pipeline_commands(root):
        words = shlex.split(cmd)
        if TRAIN_SCRIPT not in words:  # not run, or only named in an argument
            continue
        try:
            args, _ = parser.parse_known_args(words[words.index(TRAIN_SCRIPT) + 1:])
        except argparse.ArgumentError as e:
            raise BadFileError(f"stage {name}: {e} - fix its command") from None
        if args.config is None or args.data is None:
            raise BadFileError(f"stage {name}: {TRAIN_SCRIPT} without --config or --data")
        stages.append(Recipe(
            name=name, config=wdir / args.config, data=wdir / args.data, recipe=_rooted(args.recipe, wdir),
            overrides=dict(parse_override(o) for o in args.override),
            pretrained_dir=wdir / args.pretrained_dir if args.pretrained_dir else None))
    return stages


def _rooted(recipe: str | None, root: Path) -> str | None:
    if recipe is None:
        return None
    file, _, name = recipe.rpartition(":")
    return f"{root / file}:{name}"


def quick_datasets(root: Path) -> set[str]:
    """The datasets the quick profile prepares (params.yaml `datasets.<name>.quick`)."""
    datasets = read_yaml_mapping(root / "params.yaml").get("datasets") or {}
    return {name for name, entry in datasets.items() if isinstance(entry, dict) and entry.get("quick")}


def gpu_recipes(root: Path) -> list[Recipe]:
    """The training stages whose config the quick profile skips on data it does not prepare (a CPU grid skipped
    in favour of shipped models trains on quick data), each knowing how many cells share its group."""
    stages = training_stages(root)  # first: a folder that is no DVC project is that error, not a missing params.yaml
    skipping, on_cpu_data = [], quick_datasets(root)
    for stage in stages:
        reason = skip_reason(stage.config, "quick")
        if reason and stage.data.name not in on_cpu_data:
            skipping.append(dataclasses.replace(stage, skip=" ".join(reason.split())))
    sizes: dict[tuple, int] = {}
    for stage in skipping:
        sizes[stage.group] = sizes.get(stage.group, 0) + 1
    return [dataclasses.replace(stage, cells=sizes[stage.group]) for stage in skipping]


def select(recipes: list[Recipe], patterns: list[str] | None, all_cells: bool) -> list[Recipe]:
    """Cells named by `patterns` (globs), else every cell (all_cells) or the first of each group."""
    if patterns:
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(r.name, pattern) for r in recipes):
                raise UsageError(f"--recipes {pattern}: matches no GPU recipe - list them with --list")
        return [r for r in recipes if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]
    if all_cells:
        return recipes
    firsts: dict[tuple, Recipe] = {}
    for r in recipes:
        firsts.setdefault(r.group, r)
    return list(firsts.values())


# ----------------------------------------------------------------------------------------- the estimates

_ESTIMATE = re.compile(r"about (\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?) GPU hours( per [a-z]+(?: and [a-z]+)?)?")


def parse_estimate(skip: str | None) -> dict[str, Any] | None:
    """The GPU-hour range a skip reason states: {"low", "high", "per"}, `per` "run" unless it says per what."""
    match = _ESTIMATE.search(" ".join((skip or "").split()))
    if not match:
        return None
    return {"low": float(match.group(1)), "high": float(match.group(2)),
            "per": match.group(3).strip()[len("per "):] if match.group(3) else "run"}


def versus(hours: float, estimate: dict | None) -> str:
    if estimate is None:
        return "no estimate"
    if hours < estimate["low"]:
        return "below"
    return "above" if hours > estimate["high"] else "within"


# --------------------------------------------------------------------------------------- data and config

def _class_folder_split(images: int) -> tuple[int, int]:
    """(train, test) of BinSFO's 85/15 split (data/folders.py: scikit-learn rounds the test share up)."""
    test = math.ceil(TEST_SIZE * images)
    return images - test, test


# (train, test) images of a synthetic stand-in: the official splits of CIFAR-10/100 and Tiny-ImageNet (its val
# split is our test split); for BinSFO's class-folder datasets, the published image counts (Caltech-101 without
# BACKGROUND_Google, Caltech-256 without 257.clutter, the *.jpg files of Pets' images.tar.gz, Flowers-102) split
# as data/folders.py splits them. A prepared dataset may hold a few images more or less: its own size is used then.
SYNTHETIC_SPLITS = {
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "tiny-imagenet": (100_000, 10_000),
    "caltech101": _class_folder_split(8_677),
    "caltech256": _class_folder_split(29_780),
    "oxford-pets": _class_folder_split(7_390),
    "oxford-flowers": _class_folder_split(8_189),
}


def synthetic_dataset(name: str, train: int, test: int, seed: int = 0) -> Dataset:
    """Uniform random uint8 images of the dataset's official shape, uniform random labels over its classes."""
    source = get_source(name)
    gen = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randint(0, source.max_value + 1, (n, *source.image_shape), generator=gen, dtype=torch.uint8)
        return images, torch.randint(0, source.num_classes, (n,), generator=gen)

    (train_x, train_y), (test_x, test_y) = split(train), split(test)
    return Dataset(name=name, num_classes=source.num_classes, max_value=source.max_value, train_images=train_x,
                   train_labels=train_y, test_images=test_x, test_labels=test_y, sha256="synthetic")


@dataclass
class Plan:
    """What one recipe's check trains on, and the paper budget its timing is projected to."""

    cfg: ExperimentConfig          # the paper recipe for one epoch (and the check's overrides)
    paper_epochs: int
    paper_images_per_epoch: int    # training images of one paper epoch
    images_per_epoch: int          # training images of the check's epoch
    dataset: Dataset
    data: dict[str, Any]
    notes: list[str]


def plan(recipe: Recipe, args: argparse.Namespace) -> Plan:
    paper = load_experiment(recipe.config, recipe.overrides, profile="paper", recipe=recipe.recipe)
    dataset_name, notes = paper.data.dataset, []
    overrides = {**recipe.overrides, "train.epochs": 1}
    if args.max_steps:
        overrides["train.max_steps"] = args.max_steps
    prepared = recipe.data / DATA_FILE
    if prepared.is_file() and not args.synthetic:
        dataset = load_dataset(recipe.data)
        paper_train = len(dataset.train_labels)
        data = {"source": "prepared", "path": str(recipe.data), "sha256": dataset.sha256}
    else:
        if dataset_name not in SYNTHETIC_SPLITS:
            raise UsageError(f"{recipe.name}: no synthetic size known for {dataset_name} - prepare {prepared}")
        paper_train, paper_test = SYNTHETIC_SPLITS[dataset_name]
        train = args.synthetic_images or paper_train
        scale = train / paper_train
        if paper.data.val_size and train != paper_train:  # the validation split shrinks with the training set
            overrides["data.val_size"] = min(math.ceil(paper.data.val_size * scale), train - 1)
        dataset = synthetic_dataset(dataset_name, train, max(1, math.ceil(paper_test * scale)))
        data = {"source": "synthetic", "why": "--synthetic" if args.synthetic else f"{prepared} not found"}
    if paper.model.pretrained:
        try:
            checkpoint = find_checkpoint_file(paper.model.pretrained, recipe.pretrained_dir, mirror_from_env())
            notes.append(f"starts from the official {paper.model.pretrained} checkpoint {checkpoint}")
        except MissingFileError:
            overrides["model.pretrained"] = ""
            notes.append(f"random init: the official {paper.model.pretrained} checkpoint is not in "
                         f"{recipe.pretrained_dir} (nor the mirror); same architecture, so the same speed and memory")
    cfg = load_experiment(recipe.config, {**overrides, **args.overrides}, profile="paper", recipe=recipe.recipe)
    train_split = len(dataset.train_labels) - cfg.data.val_size
    data.update(train=train_split, val=cfg.data.val_size, test=len(dataset.test_labels))
    return Plan(cfg=cfg, paper_epochs=paper.train.epochs, paper_images_per_epoch=paper_train - paper.data.val_size,
                images_per_epoch=min(train_split, (cfg.train.max_steps or math.inf) * cfg.data.batch_size),
                dataset=dataset, data=data, notes=notes)


# ---------------------------------------------------------------------------------------- the two runs

TIMING_KEYS = ("epoch_seconds", "train_images_per_s")  # wall clock: differs between identical runs


def fingerprint(value: Any, prefix: str = "") -> dict[str, str]:
    """Flat {path: digest}: every tensor by dtype, shape and the SHA-256 of its bytes; anything else by repr."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        return {prefix: f"{t.dtype} {tuple(value.shape)} {hashlib.sha256(t.view(torch.uint8).numpy()).hexdigest()}"}
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in fingerprint(item, f"{prefix}/{key}").items()}
    if isinstance(value, (list, tuple)):
        return {k: v for i, item in enumerate(value) for k, v in fingerprint(item, f"{prefix}/{i}").items()}
    return {prefix: repr(value)}


@dataclass
class Run:
    state: dict[str, dict[str, str]]   # fingerprints of the weights and optimizer state after the epoch
    metrics: dict[str, Any]            # the epoch's history row (without wall clock) and the test metrics
    epoch_seconds: float
    peak_bytes: int | None
    nondeterministic_ops: list[str]


def train_once(p: Plan, device: torch.device, workdir: Path, recipe: Recipe, progress: bool) -> Run:
    checkpoint = workdir / "checkpoint.pt"  # a fresh folder per run: the second must not resume the first
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(p.cfg, p.dataset, device, checkpoint, progress=progress, pretrained_dir=recipe.pretrained_dir)
    ops = sorted({str(w.message).splitlines()[0] for w in caught if "deterministic" in str(w.message)})
    for w in caught:  # the others are not ours to swallow
        if "deterministic" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    saved = load_checkpoint(checkpoint, p.cfg.digest())
    row = {k: v for k, v in result.history[-1].items() if k not in TIMING_KEYS}
    return Run(state={"weights": fingerprint(saved["model"]), "optimizer": fingerprint(saved["optimizer"])},
               metrics={**row, **{f"test_{k}": v for k, v in result.test.items()}},
               epoch_seconds=result.history[-1]["epoch_seconds"], peak_bytes=peak, nondeterministic_ops=ops)


def differences(a: Run, b: Run) -> list[str]:
    """What differs between two runs, one line per part; empty when they are byte-identical."""
    found = []
    for part in ("weights", "optimizer"):
        x, y = a.state[part], b.state[part]
        differ = [k.lstrip("/") for k in sorted(x.keys() | y.keys()) if x.get(k) != y.get(k)]
        if differ:
            found.append(f"{part}: {len(differ)} of {len(x)} entries differ ({', '.join(differ[:5])}"
                         f"{', ...' if len(differ) > 5 else ''})")
    metrics = [f"{k} {a.metrics.get(k)!r} vs {b.metrics.get(k)!r}" for k in sorted(a.metrics.keys() | b.metrics.keys())
               if a.metrics.get(k) != b.metrics.get(k)]
    if metrics:
        found.append("metrics: " + "; ".join(metrics))
    return found


def check(recipe: Recipe, args: argparse.Namespace, device: torch.device, bar) -> dict[str, Any]:
    p = plan(recipe, args)
    runs = []
    for i in (1, 2):
        bar.set_postfix_str(f"{recipe.name} run {i}")
        with tempfile.TemporaryDirectory(prefix="gpu_check.") as workdir:
            runs.append(train_once(p, device, Path(workdir), recipe, args.progress))
        bar.update(1)
    first, second = runs
    diff = differences(first, second)
    seconds = second.epoch_seconds * p.paper_images_per_epoch / p.images_per_epoch  # the warm run
    hours = seconds * p.paper_epochs / 3600
    estimate = parse_estimate(recipe.skip)
    peaks = [r.peak_bytes for r in runs if r.peak_bytes is not None]
    return {
        "name": recipe.name, "config": str(recipe.config), "recipe": recipe.recipe, "dataset": p.cfg.data.dataset,
        "data": p.data, "notes": p.notes, "identical": not diff, "differences": diff,
        "nondeterministic_ops": sorted(set(first.nondeterministic_ops + second.nondeterministic_ops)),
        "metrics": first.metrics, "epoch_seconds": [first.epoch_seconds, second.epoch_seconds],
        "images_per_epoch": p.images_per_epoch, "paper_images_per_epoch": p.paper_images_per_epoch,
        "extrapolated": p.images_per_epoch != p.paper_images_per_epoch,
        "seconds_per_epoch": round(seconds, 3),
        "peak_gpu_memory_mib": round(max(peaks) / MiB, 1) if peaks else None,
        "paper_epochs": p.paper_epochs, "projected_gpu_hours": round(hours, 4),
        "cells": recipe.cells, "projected_gpu_hours_cells": round(hours * recipe.cells, 4),
        "estimate": {"text": recipe.skip, **(estimate or {})}, "versus_estimate": versus(hours, estimate),
    }


# ------------------------------------------------------------------------------------------------ output

def determinism_flags(cuda_was_initialised: bool) -> dict[str, Any]:
    return {"CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic, "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "set_before_cuda_init": not cuda_was_initialised}


def table(results: list[dict]) -> str:
    rows = []
    for r in results:
        estimate = r["estimate"] if "low" in r["estimate"] else None
        rows.append([
            r["name"], "prepared" if r["data"]["source"] == "prepared" else f"synthetic {r['data']['train']}",
            "yes" if r["identical"] else "NO",
            f"{r['seconds_per_epoch']:.4g}{'*' if r['extrapolated'] else ''}",
            "n/a (cpu)" if r["peak_gpu_memory_mib"] is None else f"{r['peak_gpu_memory_mib']:.0f}",
            r["paper_epochs"], f"{r['projected_gpu_hours']:.3g}",
            f"{r['projected_gpu_hours_cells']:.3g} ({r['cells']})" if r["cells"] > 1 else "",
            estimate_text(estimate), r["versus_estimate"]])
    headers = ["recipe", "data", "identical", "s/epoch", "peak MiB", "epochs", "GPU h", "GPU h (cells)", "estimate h",
               "vs estimate"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def estimate_text(estimate: dict | None) -> str:
    if estimate is None:
        return "-"
    return f"{estimate['low']:g}-{estimate['high']:g}" + (f" per {estimate['per']}" if estimate["per"] != "run" else "")


def report(results: list[dict], device_text: str, overrides: dict) -> str:
    lines = [f"GPU check on {device_text}"]
    if overrides:
        lines.append(f"overrides for every recipe: {overrides} (the projections are of the recipes as overridden)")
    lines += ["", table(results), "",
             "s/epoch: training time of the second run for one paper epoch (* scaled from a shortened epoch); "
             "GPU h: s/epoch x the paper's epochs; (cells): x the grid cells sharing the config and dataset"]
    for r in results:
        for line in r["differences"]:
            lines.append(f"MISMATCH {r['name']}: {line}")
        for op in r["nondeterministic_ops"]:
            lines.append(f"warning {r['name']}: {op}")
        for note in r["notes"]:
            lines.append(f"note {r['name']}: {note}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu | auto (default: cuda, a GPU check)")
    p.add_argument("--recipes", nargs="+", metavar="NAME", help="stage names or globs, e.g. train@rwth_binary_cifar10 "
                   "'sgdat@*-cifar10' (default: one cell per grid config and dataset)")
    p.add_argument("--all-cells", action="store_true", help="every cell of every grid")
    p.add_argument("--list", action="store_true", help="list the GPU recipes and exit")
    p.add_argument("--synthetic", action="store_true", help="synthetic data even where a prepared dataset exists")
    p.add_argument("--synthetic-images", type=int, default=0, metavar="N",
                   help="training images of a synthetic dataset (default: the official count)")
    p.add_argument("--max-steps", type=int, default=0, metavar="N", help="stop the epoch after N steps (train.max_steps)")
    p.add_argument("-o", "--override", action="append", default=[], help="section.key=value for every recipe (repeatable)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--root", type=Path, default=Path("."), help="repository root: params.yaml, dvc.yaml, grids/, config/")
    p.add_argument("--out", type=Path, default=Path("reports/gpu_check.json"))
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    for name in ("synthetic_images", "max_steps", "threads"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 0")
    args.overrides = dict(parse_override(o) for o in args.override)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # first, before anything can initialise CUDA: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it starts
    cuda_was_initialised = torch.cuda.is_initialized()
    set_deterministic(True)
    recipes = select(gpu_recipes(args.root), args.recipes, args.all_cells)
    if args.list:
        rows = [[r.name, r.cells, estimate_text(parse_estimate(r.skip))] for r in recipes]
        print(tabulate(rows, headers=["recipe", "cells", "estimate GPU h"], tablefmt="github", disable_numparse=True))
        return 0
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    with tqdm(total=2 * len(recipes), desc="gpu check", unit="run", disable=not args.progress) as bar:
        for recipe in recipes:
            results.append(check(recipe, args, device, bar))
    out = {"device": environment(device), "threads": torch.get_num_threads(), "commit": git_commit(),
           "determinism": determinism_flags(cuda_was_initialised),
           "settings": {"recipes": args.recipes, "all_cells": args.all_cells, "synthetic": args.synthetic,
                        "synthetic_images": args.synthetic_images, "max_steps": args.max_steps,
                        "overrides": args.overrides},
           "all_identical": all(r["identical"] for r in results), "recipes": results}
    write_json(args.out, out)
    print(report(results, out["device"]["device"], args.overrides))
    print(f"written: {args.out}")
    return 0 if out["all_identical"] else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
