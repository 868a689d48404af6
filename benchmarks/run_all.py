"""Benchmark: every speed ratio of issue 8, from one run on this machine.

    .venv/bin/python benchmarks/run_all.py [--seconds 2] [--threads 1] [--out reports/benchmarks.md]

Measures, back to back in one process (the ratios are what to read; absolute numbers move with
whatever else the machine runs, which the output reports as the load average). Training throughput
is in images per CPU-second of this process, the best of --rounds interleaved measurements: other
processes on the machine disturb it far less than wall-clock time.

1. Training throughput of each model of bnnrepro.models, binary vs float: the config's binary network
   and the same network with model.weights=fp (and ReLU where the model has the option), through the
   project's own training step (forward, loss, backward, optimizer step, latent clip) on synthetic
   batches of the config's dataset shape. Ratio = binary step time / float step time (target <= 1.3).
2. Training throughput per optimizer recipe (config/sgdat/optimizers.yml, plus the flip optimizer) on
   the binary MLP of config/compare and on BinaryNet, relative to plain SGD on every parameter
   ("SGD*"). Ratio = step time / SGD's step time (target <= 1.5).
3. Batches/s of the in-memory BatchLoader vs torchvision's MNIST in a DataLoader with per-sample
   transforms, over the same 60,000 images (benchmarks/data_loading.py; target >= 5x).
4. Seconds of a no-op `dvc repro` (target < 5 s): (a) the committed pipeline of this repo, in a
   temporary clone that reads this repo's DVC cache, measured only if that clone's `dvc status` is
   clean, so nothing is ever trained; (b) the two-stage pipeline of tests/test_dvc_pipeline.py, built
   from scratch in a temporary folder first (needs the MNIST mirror).

Convolutional nets on 32x32 images run at a small batch (--conv-batch) so that each measurement
takes seconds on a CPU; their ratios are for that batch.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # dvc_project: the throwaway pipeline of the DVC tests

from dvc_project import clone, create_project, dvc_executable, project_env, run  # noqa: E402

from bnnrepro import config as bnn_config  # noqa: E402
from bnnrepro.data.prepared import Dataset, load_dataset, prepare_dataset  # noqa: E402
from bnnrepro.data.sources import get_source  # noqa: E402
from bnnrepro.engine.train import make_loaders, train_one_epoch  # noqa: E402
from bnnrepro.io import write_text  # noqa: E402
from bnnrepro.models import MODELS, build_model  # noqa: E402
from bnnrepro.nn.layers import init_latent_weights_  # noqa: E402
from bnnrepro.optim import build_optimizers  # noqa: E402
from bnnrepro.runtime import device_name, reuse_freed_memory, seed_everything, set_deterministic  # noqa: E402

from data_loading import loader_rates  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

# (name, config, overrides that make its float twin)
FLOAT_RELU = {"model.weights": "fp", "model.activations": "relu"}
MODEL_CASES = [
    ("MLP 784-256-256-10", "config/compare/binary_mlp.yml", FLOAT_RELU),
    ("LeNet5 (RWTH)", "config/rwth/binary_mnist.yml", FLOAT_RELU),
    ("VGGNet7 (RWTH)", "config/rwth/binary_cifar10.yml", FLOAT_RELU),
    ("BinaryNet VGG-7 (Anderson & Berg)", "config/hd/bnn_vgg7_cifar10.yml", FLOAT_RELU),
    ("BinaryNet (SGDAT)", "config/sgdat/binarynet_cifar10.yml", {"model.weights": "fp"}),  # Hardtanh, no ReLU option
]
RECIPES = "config/sgdat/optimizers.yml"
OPTIMIZER_MODELS = [("binary MLP", "config/compare/binary_mlp.yml"),
                    ("BinaryNet", "config/sgdat/binarynet_cifar10.yml")]
BASELINE = "sgd_star"
# methods that no recipe of the SGDAT table has: (label, overrides)
EXTRA_METHODS = [
    ("Flip (emp, gaussian_bws)", {"optim.name": "flip", "optim.lr": 1.0e-3,
                                  "optim.args": {"mask": "emp", "scheduler": "gaussian_bws"},
                                  "optim_fp.name": "adam", "optim_fp.lr": 1.0e-3}),
    ("Flip, weights packed as bits", {"optim.name": "flip", "optim.lr": 1.0e-3,
                                      "optim.args": {"mask": "emp", "scheduler": "gaussian_bws"},
                                      "optim_fp.name": "adam", "optim_fp.lr": 1.0e-3, "train.pack_weights": True}),
]
TARGETS = {"binary": 1.3, "optimizer": 1.5, "loader": 5.0, "noop_repro_s": 5.0}


def rate(x: float) -> str:
    """Images or batches per second, as printed."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


# ------------------------------------------------------------------------------------ training steps
class _Stop(Exception):
    pass


def cpu_seconds() -> float:
    """CPU time of this process: unlike wall-clock time it does not count the moments other processes
    hold the cores, so a busy machine changes it far less. With one torch thread (--threads 1) it equals
    the wall-clock time on an idle machine."""
    return time.process_time()


class _Clock:
    """Stands in for the progress bar: stops training once `seconds` of CPU time have passed and
    `min_steps` are done."""

    def __init__(self, seconds: float, min_steps: int):
        self.seconds, self.min_steps, self.steps = seconds, min_steps, 0
        self.start = cpu_seconds()

    def update(self, k: int) -> None:
        self.steps += k
        if self.steps >= self.min_steps and self.elapsed() >= self.seconds:
            raise _Stop

    def elapsed(self) -> float:
        return cpu_seconds() - self.start


def synthetic_dataset(name: str, n: int) -> Dataset:
    """n random images of dataset `name`'s shape and range: the step time does not depend on the pixels."""
    source = get_source(name)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, source.max_value + 1, (n, *source.image_shape), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, source.num_classes, (n,), generator=g)
    return Dataset(name, source.num_classes, source.max_value, images, labels, images[:1], labels[:1], "synthetic")


def run_steps(model, loader, optimizer, cfg, clock: _Clock) -> None:
    epoch = 1
    try:
        while True:  # epochs of the synthetic data until the clock stops the loop
            loader.set_epoch(epoch)
            train_one_epoch(model, loader, optimizer, cfg, epoch, clock)
            epoch += 1
    except _Stop:
        pass


def train_images_per_second(cfg, seconds: float) -> float:
    """Images per CPU-second of the training loop of bnnrepro.engine.train on `cfg`, set up as `fit` does."""
    set_deterministic(cfg.train.deterministic)
    seed_everything(cfg.train.seed)
    reuse_freed_memory()
    data = synthetic_dataset(cfg.data.dataset, cfg.data.batch_size * 32)
    c, h, _ = data.image_shape
    model = build_model(cfg.model, c, data.num_classes, h).to(memory_format=torch.channels_last)
    init_latent_weights_(model, cfg.train.latent_init)
    optimizer = build_optimizers(cfg, model)
    optimizer.start_epoch(1)
    loader = make_loaders(cfg.data, data, cfg.train.seed, torch.device("cpu")).train
    run_steps(model, loader, optimizer, cfg, _Clock(0.0, 2))  # warm-up: first-call kernel set-up
    clock = _Clock(seconds, 1)
    run_steps(model, loader, optimizer, cfg, clock)
    return clock.steps * cfg.data.batch_size / clock.elapsed()


def load(config: str, overrides: dict, recipe: str | None = None):
    """The config with `overrides` (and the recipe FILE:NAME), or the ValueError that refuses them."""
    try:  # val_size 0: every synthetic image is a training image
        return bnn_config.load_experiment(REPO_ROOT / config, {"data.val_size": 0, **overrides}, recipe=recipe)
    except ValueError as e:  # ConfigError included: a method this model cannot use
        return e


def best_rates(cases: dict, seconds: float, rounds: int) -> tuple[dict[str, float], dict[str, str]]:
    """Images per CPU-second of each config (name -> ExperimentConfig, or the ValueError that refused
    it): the best of `rounds` measurements of seconds/rounds each, taken in turn (A B C A B C ...), so
    that load from other processes hits every config alike and the best round shows what the code
    itself costs (as timeit's minimum). Also returns why a config could not be trained."""
    best, failed = dict.fromkeys(cases, 0.0), {}
    for _ in range(rounds):
        for name, cfg in cases.items():
            if isinstance(cfg, ValueError):
                failed[name] = str(cfg)
            if name in failed:
                continue
            try:
                best[name] = max(best[name], train_images_per_second(cfg, seconds / rounds))
            except ValueError as e:
                failed[name] = str(e)
    return {k: v for k, v in best.items() if k not in failed}, failed


def batch_overrides(config: str, conv_batch: int) -> dict:
    dataset = bnn_config.load_experiment(REPO_ROOT / config).data.dataset
    return {"data.batch_size": conv_batch} if get_source(dataset).image_shape[1] >= 32 else {}


def missing(config: str) -> str | None:
    """Why a case cannot run here (its config or its model is absent), or None."""
    path = REPO_ROOT / config
    if not path.is_file():
        return f"{config} not found"
    arch = bnn_config.load_experiment(path).model.arch
    return None if arch in MODELS else f"model '{arch}' not in bnnrepro.models"


def model_ratios(seconds: float, rounds: int, conv_batch: int) -> list[list[str]]:
    rows = []
    for name, config, float_overrides in MODEL_CASES:
        reason = missing(config)
        if reason:
            rows.append([name, "-", "-", "-", "-", f"skipped: {reason}"])
            continue
        sized = batch_overrides(config, conv_batch)
        cases = {"binary": load(config, sized), "float": load(config, {**sized, **float_overrides})}
        rates, failed = best_rates(cases, seconds, rounds)
        if failed:
            rows.append([name, "-", "-", "-", "-", f"skipped: {failed}"])
            continue
        ratio = rates["float"] / rates["binary"]
        rows.append([name, str(cases["binary"].data.batch_size), rate(rates["float"]), rate(rates["binary"]),
                     f"{ratio:.2f}x", "yes" if ratio <= TARGETS["binary"] else "no"])
        print(f"  {name}: float {rate(rates['float'])} img/CPU-s, binary {rate(rates['binary'])} img/CPU-s, "
              f"binary/float step {ratio:.2f}x")
    return rows


def optimizer_ratios(seconds: float, rounds: int, conv_batch: int) -> list[list[str]]:
    recipes = list(yaml.safe_load((REPO_ROOT / RECIPES).read_text())) if (REPO_ROOT / RECIPES).is_file() else []
    rows = []
    for model_name, config in OPTIMIZER_MODELS:
        reason = missing(config) or (None if BASELINE in recipes else f"no recipe '{BASELINE}' in {RECIPES}")
        if reason:
            rows.append([model_name, "-", "-", "-", f"skipped: {reason}"])
            continue
        sized = batch_overrides(config, conv_batch)
        cases = {name: load(config, sized, f"{REPO_ROOT / RECIPES}:{name}") for name in recipes}
        cases.update({label: load(config, {**sized, **overrides}) for label, overrides in EXTRA_METHODS})
        rates, failed = best_rates(cases, seconds, rounds)
        if BASELINE in failed:
            rows.append([model_name, "-", "-", "-", f"skipped: {BASELINE} fails: {failed[BASELINE]}"])
            continue
        for label in cases:
            if label in failed:
                rows.append([model_name, label, "-", "-", f"skipped: {failed[label]}"])
                continue
            ratio = rates[BASELINE] / rates[label]
            rows.append([model_name, label, rate(rates[label]), f"{ratio:.2f}x",
                         "yes" if ratio <= TARGETS["optimizer"] else "no"])
            print(f"  {model_name} / {label}: {rate(rates[label])} img/CPU-s, {ratio:.2f}x SGD*'s step time")
    return rows


# ---------------------------------------------------------------------------------------- data loading
def default_mirror() -> Path | None:
    for candidate in (os.environ.get("BNNREPRO_MIRROR"), REPO_ROOT.parent / "shared" / "mirror"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate).resolve()
    return None


def loader_ratio(data_dir: Path, mirror: Path | None, batches: int) -> list[list[str]]:
    if mirror is None:
        return [["-", "-", "-", "skipped: no MNIST mirror (BNNREPRO_MIRROR or ../shared/mirror)"]]
    with tempfile.TemporaryDirectory() as tmp:
        if not (data_dir / "data.safetensors").is_file():  # not prepared here: prepare it from the mirror
            data_dir = prepare_dataset("mnist", Path(tmp) / "prepared", Path(tmp) / "raw", str(mirror)).parent
        rates = loader_rates(load_dataset(data_dir), mirror, batches)
    names = list(rates)
    rows = []
    for ours, theirs in ((names[0], names[1]), (names[2], names[3])):
        ratio = rates[ours] / rates[theirs]
        rows.append([f"{ours} vs {theirs}", f"{rates[ours]:,.0f}", f"{rates[theirs]:,.0f}",
                     f"{ratio:.1f}x " + ("(meets >= 5x)" if ratio >= TARGETS["loader"] else "(below 5x)")])
        print(f"  {ours}: {rates[ours]:,.0f} batches/s; {theirs}: {rates[theirs]:,.0f} batches/s ({ratio:.1f}x)")
    return rows


# --------------------------------------------------------------------------------------- no-op dvc repro
def timed(args: list[str], cwd: Path, env: dict[str, str], repeats: int = 3) -> tuple[float, str]:
    """Median wall-clock seconds of a command (its whole process, as a user waits for it) and its output."""
    times, out = [], ""
    for _ in range(repeats):
        tic = time.perf_counter()
        out = run(args, cwd, env)
        times.append(time.perf_counter() - tic)
    return statistics.median(times), out


def noop_repro_of_this_repo(tmp: Path) -> list[str]:
    """(a): a clone of this repo's HEAD that reads its DVC cache; repro is timed only when status is clean."""
    label = "this repo's pipeline (HEAD), temporary clone sharing the DVC cache"
    dvc, cache = dvc_executable(), REPO_ROOT / ".dvc" / "cache"
    if dvc is None or not cache.is_dir():
        return [label, "-", "-", "not measured: no dvc or no DVC cache in this repo"]
    env = project_env(REPO_ROOT, None)
    try:
        project = clone(REPO_ROOT, tmp / "repo_clone", env, shared_cache=cache, site_cache=tmp / "site_cache")
        status = run([dvc, "status", "--json"], project, env)
    except RuntimeError as e:
        return [label, "-", "-", f"not measured: {str(e).splitlines()[0]}"]
    if status.strip() not in ("{}", ""):
        return [label, "-", "-", "not measured: the clone is not up to date, a repro would train"]
    status_s, _ = timed([dvc, "status"], project, env)
    repro_s, out = timed([dvc, "repro"], project, env)
    assert "Running stage" not in out, out
    stages = out.count("didn't change, skipping")
    return [f"{label}, {stages} stages", f"{status_s:.2f}", f"{repro_s:.2f}",
            "yes" if repro_s < TARGETS["noop_repro_s"] else "no"]


def noop_repro_of_tiny_pipeline(tmp: Path, mirror: Path | None) -> list[str]:
    """(b): the tests' two-stage pipeline, built once (data + train, tens of seconds), then timed."""
    label = "tests' two-stage pipeline (tests/dvc_project.py)"
    if dvc_executable() is None or mirror is None:
        return [label, "-", "-", "not measured: needs dvc and the MNIST mirror"]
    env = project_env(REPO_ROOT, mirror)
    project = create_project(tmp / "tiny", REPO_ROOT, env, site_cache=tmp / "site_cache")
    run([dvc_executable(), "repro"], project, env)
    status_s, _ = timed([dvc_executable(), "status"], project, env)
    repro_s, out = timed([dvc_executable(), "repro"], project, env)
    assert "Running stage" not in out, out
    return [label, f"{status_s:.2f}", f"{repro_s:.2f}", "yes" if repro_s < TARGETS["noop_repro_s"] else "no"]


# -------------------------------------------------------------------------------------------- report
def machine_lines(threads: int, load_before: tuple[float, ...]) -> list[str]:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    dirty = "-dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
    return [f"- CPU: {device_name(torch.device('cpu'))}, {os.cpu_count()} logical cores; no GPU used",
            f"- torch {torch.__version__}, {threads} intra-op thread(s); Python {platform.python_version()}, "
            f"{platform.system()} {platform.machine()}",
            f"- code: commit {git('rev-parse', '--short', 'HEAD')}{dirty}",
            f"- load average at start: {', '.join(f'{x:.2f}' for x in load_before)} (1, 5, 15 min). Other "
            "processes (e.g. a background training job) skew the absolute numbers here; the ratios are "
            "measured back to back in this one process and move much less."]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def render(args, machine: list[str], models, optimizers, loaders, dvc_rows) -> str:
    """The markdown report of reports/benchmarks.md."""
    measured = (f"Synthetic batches of each config's dataset shape; images per CPU-second of the benchmark "
                f"process, best of {args.rounds} interleaved rounds, {args.seconds:g} CPU-s in all per "
                f"configuration, after warm-up steps.")
    sections = [
        "# Speed benchmarks",
        "Written by `benchmarks/run_all.py` (not a pipeline stage: the numbers change from run to run). "
        "Targets from issue 8.",
        "\n".join(machine),
        "## Training throughput, binary vs float\n\n"
        f"The config's binary network and its float twin (model.weights=fp, ReLU where the model has it). "
        f"{measured} Ratio = binary step time / float step time; target <= {TARGETS['binary']}x.\n\n"
        + table(["model", "batch", "float img/CPU-s", "binary img/CPU-s", "binary / float", "meets target"],
                models),
        "## Training throughput per optimizer\n\n"
        f"Recipes of `{RECIPES}` (SGD* = torch SGD on every parameter; the recipes without * train the "
        f"full-precision parameters with Adam) and the flip optimizer. {measured} Ratio = step time / SGD*'s "
        f"step time; target <= {TARGETS['optimizer']}x. The per-weight optimizers cost the same per step "
        f"whatever the batch, so BinaryNet's small CPU batch ({args.conv_batch}) makes their share of the "
        "step larger than at the recipes' batch of 256.\n\n"
        + table(["model", "optimizer", "img/CPU-s", "vs SGD*", "meets target"], optimizers),
        "## In-memory batches vs per-sample DataLoader\n\n"
        f"MNIST training images, batch 50, shuffled; torchvision DataLoader with num_workers=0; "
        f"{args.loader_batches} batches each, wall-clock. Target >= {TARGETS['loader']:g}x.\n\n"
        + table(["comparison", "ours batches/s", "DataLoader batches/s", "ratio"], loaders),
    ]
    if dvc_rows:
        sections.append(f"## No-op `dvc repro`\n\nWall-clock seconds of the whole command, median of 3. "
                        f"Target < {TARGETS['noop_repro_s']:g} s.\n\n"
                        + table(["pipeline", "dvc status s", "dvc repro s", "meets target"], dvc_rows))
    else:
        sections.append("## No-op `dvc repro`\n\nnot measured (--skip-dvc)")
    return "\n\n".join(sections) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0, help="measuring time per configuration (after warm-ups)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved measurements per configuration (best kept)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--conv-batch", type=int, default=8, help="batch size of the 32x32 convolutional nets")
    p.add_argument("--loader-batches", type=int, default=200)
    p.add_argument("--data", type=Path, default=REPO_ROOT / "data/prepared/mnist")
    p.add_argument("--skip-dvc", action="store_true", help="skip the no-op `dvc repro` timings")
    p.add_argument("--out", type=Path, help="also write the report as markdown to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    mirror = default_mirror()

    print("1. training throughput, float vs binary")
    models = model_ratios(args.seconds, args.rounds, args.conv_batch)
    print("2. training throughput per optimizer, relative to SGD* (torch SGD on every parameter)")
    optimizers = optimizer_ratios(args.seconds, args.rounds, args.conv_batch)
    print("3. in-memory batches vs a per-sample DataLoader")
    loaders = loader_ratio(args.data, mirror, args.loader_batches)
    dvc_rows = []
    if not args.skip_dvc:
        print("4. no-op dvc repro")
        with tempfile.TemporaryDirectory() as tmp:
            dvc_rows = [noop_repro_of_this_repo(Path(tmp)), noop_repro_of_tiny_pipeline(Path(tmp), mirror)]
        for row in dvc_rows:
            print(f"  {row[0]}: status {row[1]} s, repro {row[2]} s ({row[3]})")

    report = render(args, machine_lines(args.threads, load_before), models, optimizers, loaders, dvc_rows)
    print()
    print(report)
    if args.out:
        write_text(args.out, report)


if __name__ == "__main__":
    main()
