"""Benchmark: training throughput of float vs binary LeNet5 (the RWTH recipes, batch 50) on this machine.

    .venv/bin/python benchmarks/train_speed.py [--steps 300] [--threads 2]

Runs the project's own training step (forward, squared hinge loss, backward, SGD step, latent clip)
on real MNIST batches from data/prepared/mnist and prints images/s of each model, their ratio,
and the implied seconds per 50,000-image epoch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bnnrepro.config import load_experiment
from bnnrepro.data.prepared import load_dataset
from bnnrepro.engine.train import make_loaders, train_one_epoch
from bnnrepro.models import build_model
from bnnrepro.optim import build_optimizers


class _Stop(Exception):
    pass


class _Counter:
    """Stands in for the progress bar; stops the epoch after `steps` steps."""

    def __init__(self, steps: int):
        self.steps, self.n = steps, 0

    def update(self, k: int) -> None:
        self.n += k
        if self.n >= self.steps:
            raise _Stop


def images_per_second(config: str, data, steps: int) -> float:
    cfg = load_experiment(config)
    torch.manual_seed(0)
    model = build_model(cfg.model, 1, 10, 28).to(memory_format=torch.channels_last)
    optimizer = build_optimizers(cfg, model)
    loaders = make_loaders(cfg.data, data, 0, torch.device("cpu"))
    for warmup, n in ((True, 20), (False, steps)):
        tic = time.perf_counter()
        try:
            train_one_epoch(model, loaders.train, optimizer, cfg, 1, _Counter(n))
        except _Stop:
            pass
    return steps * cfg.data.batch_size / (time.perf_counter() - tic)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/prepared/mnist"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.data)
    rates = {name: images_per_second(f"config/rwth/{cfg}.yml", data, args.steps)
             for name, cfg in (("float LeNet5", "float_mnist"), ("binary LeNet5", "binary_mnist"))}
    for name, rate in rates.items():
        print(f"{name:14s} {rate:8.0f} images/s  -> {50_000 / rate:5.1f} s per 50,000-image epoch (batch 50)")
    print(f"binary / float step time: {rates['float LeNet5'] / rates['binary LeNet5']:.2f}x "
          f"(torch threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
