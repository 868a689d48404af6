"""Benchmark: the peak of one training step, by component, and the step time, per training method
(issue 18: the memory-efficient training step, docs/memory.md).

    .venv/bin/python benchmarks/memory_step.py [--models mlp,binarynet,lenet5,reactnet,bcdnet] [--steps 3]

For latent Adam, latent SGD, Bop, flip with packed weights and the same flip with train.memory_efficient,
on BinSFO's MLP (64x64 MNIST, width 1024, batch 256), BinaryNet on CIFAR-10-shaped input (batch 256) and
LeNet5 (batch 50), and on request the BinSFO fine-tuning nets ReActNet-A and BCDNet at 256x256 (batch 32),
all on synthetic input:

- the peak of one training step, split into weights (with packed sign bits), buffers, gradients,
  activations, optimizer state and temporaries, measured by the allocator-level tracker of the memory
  report (bnnrepro.analysis.training_state.measure_training_memory: torch's MemTracker, which follows
  every tensor storage; on a GPU also torch.cuda.max_memory_allocated of the same step);
- the ratio of each peak to latent Adam's;
- seconds per training step through the training loop itself (train_one_epoch) and its ratio to
  plain packed flip. The methods take turns, an epoch each, for --rounds rounds (each epoch at least
  --steps steps, more for fast models: about --seconds of steps per method in all, after a warm-up);
  the ratio is the median over rounds of each round's median step time against packed flip's in the
  same round, so that the drift of a shared machine's speed cancels.

Not a timed test: numbers move with the machine; the ratios are what to read.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from bnnrepro.analysis.training_state import METHODS, PEAK_COMPONENTS, measure_training_memory, method_config
from bnnrepro.config import load_experiment
from bnnrepro.data.batches import BatchLoader
from bnnrepro.engine.train import train_one_epoch
from bnnrepro.optim import build_optimizers, split_parameters
from bnnrepro.report.memory import build

REPO = Path(__file__).resolve().parents[1]
MODELS = {"mlp": "config/binsfo/mnist_mlp.yml", "binarynet": "config/sgdat/binarynet_cifar10.yml",
          "lenet5": "config/rwth/binary_mnist.yml", "reactnet": "config/binsfo/finetune_adambnn.yml",
          "bcdnet": "config/binsfo/finetune_bcdnet.yml"}
DEFAULT_MODELS = ("mlp", "binarynet", "lenet5")  # the fine-tuning nets take minutes per method on a CPU
# images per step where it is not the config's: the fine-tuning nets' 256-image batch split over 8 GPUs
BATCH = {"reactnet": 32, "bcdnet": 32}
PACKED_FLIP = METHODS["flip (BWS/BinSFO), packed weights"]
BENCHMARKED = {
    "latent Adam": METHODS["latent Adam"],
    "latent SGD": METHODS["latent SGD"],
    "Bop": METHODS["Bop"],
    "flip, packed": PACKED_FLIP,
    "flip, packed, memory-efficient": dataclasses.replace(PACKED_FLIP, memory_efficient=True),
}
MIB = 2 ** 20


class _Steps:
    """Stands in for the progress bar of train_one_epoch: records the time of every step."""

    def __init__(self):
        self.times = [time.perf_counter()]

    def update(self, k: int) -> None:
        self.times.append(time.perf_counter())


class _Trainer:
    """One method's model and optimizers, trained for timing an epoch at a time on synthetic batches."""

    def __init__(self, cfg, model, shape, device: torch.device):
        self.cfg, self.model, self.shape, self.device = cfg, model, shape, device
        self.optimizers = build_optimizers(cfg, model)
        self.optimizers.start_epoch(1)

    def step_seconds(self, steps: int, seed: int) -> list[float]:
        """Seconds of each step of one epoch of 1 + `steps` steps, the first step left out."""
        gen = torch.Generator().manual_seed(seed)
        n = (1 + steps) * self.cfg.data.batch_size
        images = torch.randint(0, 256, (n, *self.shape), generator=gen, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=gen)
        loader = BatchLoader(images, labels, self.cfg.data.batch_size, max_value=255, shuffle=True,
                             device=self.device)
        bar = _Steps()
        train_one_epoch(self.model, loader, self.optimizers, self.cfg, 1, bar)
        return [b - a for a, b in zip(bar.times[1:-1], bar.times[2:])]


def time_steps(trainers: dict[str, _Trainer], steps: int, seconds: float, rounds: int) -> dict[str, tuple]:
    """(median seconds per step, median ratio to packed flip) per method. The methods take turns, an epoch
    each, for `rounds` rounds, and each ratio compares steps of one round: on a shared machine whose speed
    drifts over minutes, a method timed only after another would be compared against a different machine.
    An epoch is `steps` steps, or as many as fill about `seconds` per round (at most 200)."""
    warm = max(trainer.step_seconds(2, seed=0)[0] for trainer in trainers.values())
    per_epoch = max(steps, min(200, round(seconds / rounds / warm)))
    medians = {label: [] for label in trainers}
    for r in range(rounds):
        for label, trainer in trainers.items():
            medians[label].append(statistics.median(trainer.step_seconds(per_epoch, seed=1 + r)))
    flip = medians["flip, packed"]
    return {label: (statistics.median(m), statistics.median(a / b for a, b in zip(m, flip)))
            for label, m in medians.items()}


def measure(name: str, steps: int, seconds: float, rounds: int, device: torch.device,
            timed: tuple[str, ...] = tuple(BENCHMARKED)) -> list[dict]:
    cfg = load_experiment(REPO / MODELS[name])  # its optimizer is replaced by each method's
    if name in BATCH:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=BATCH[name]))
    rows, trainers = [], {}
    for label, method in BENCHMARKED.items():
        model, shape = build(cfg)
        method_cfg = method_config(cfg, method, has_fp_params=len(split_parameters(model)[1]) > 0)
        model = model.to(device, memory_format=torch.channels_last)  # as the training loop has it
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        memory = measure_training_memory(model, method_cfg, shape, cfg.data.batch_size)
        row = {"model": name, "method": label, "batch": cfg.data.batch_size, "peak": memory["peak_step"],
               **memory["peak_step_components"]}
        if device.type == "cuda":
            row["cuda_max_allocated"] = torch.cuda.max_memory_allocated(device)
        rows.append(row)
        print(f"  {name} / {label}: peak {row['peak'] / MIB:.1f} MiB", flush=True)
        if label in timed:
            model, _ = build(cfg)
            model = model.to(device, memory_format=torch.channels_last)
            trainers[label] = _Trainer(method_cfg, model, shape, device)
    times = time_steps(trainers, steps, seconds, rounds)
    adam = rows[0]["peak"]
    for row in rows:
        row["seconds"], row["time_vs_flip"] = times.get(row["method"], (float("nan"), float("nan")))
        row["peak_vs_adam"] = row["peak"] / adam
    return rows


def print_table(rows: list[dict]) -> None:
    parts = list(PEAK_COMPONENTS)
    cuda = "cuda_max_allocated" in rows[0]
    head = ["model", "method", "batch", *parts, "peak", *(["cuda max"] if cuda else []), "x Adam", "s/step", "x flip"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        mib = [f"{r[k] / MIB:.2f}" for k in (*parts, "peak", *(["cuda_max_allocated"] if cuda else []))]
        print(f"| {r['model']} | {r['method']} | {r['batch']} | " + " | ".join(mib)
              + f" | {r['peak_vs_adam']:.3f} | {r['seconds']:.3f} | {r['time_vs_flip']:.2f} |")
    print("\nMiB of live tensors at the peak of one training step (MemTracker); x Adam: peak / latent Adam's "
          "peak; s/step: median seconds of a training-loop step; x flip: the median over rounds of the step "
          "time / packed flip's in the same round.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated subset of {sorted(MODELS)}")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per method and round, at least")
    p.add_argument("--seconds", type=float, default=6.0, help="time the steps of each method take, about")
    p.add_argument("--rounds", type=int, default=5, help="rounds in which the methods take turns")
    p.add_argument("--time-flips-only", action="store_true",
                   help="time only packed flip and its memory-efficient mode (the fine-tuning nets: each timed "
                        "method keeps a model and its optimizer alive, and five of them outgrow 24 GiB)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    timed = ("flip, packed", "flip, packed, memory-efficient") if args.time_flips_only else tuple(BENCHMARKED)
    for name in args.models.split(","):  # a table per model as soon as it is measured
        print()
        print_table(measure(name, args.steps, args.seconds, args.rounds, device, timed))


if __name__ == "__main__":
    main()
