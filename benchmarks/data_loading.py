"""Benchmark: loading prepared MNIST, and training batches from memory vs a torchvision DataLoader.

    .venv/bin/python benchmarks/data_loading.py [--data data/prepared/mnist] [--mirror ../shared/mirror]

Prints the load time and resident memory of the prepared file, and the batches/s of
(a) bnnrepro's BatchLoader over in-memory uint8 tensors and (b) torchvision's MNIST dataset with
per-sample ToTensor in a DataLoader, over the same 60,000 images, batch 50, shuffled; and their ratio.
"""

from __future__ import annotations

import argparse
import gzip
import resource
import tempfile
import time
from pathlib import Path

import torch
from torchvision import datasets, transforms

from bnnrepro.data.batches import Augment, BatchLoader
from bnnrepro.data.prepared import load_dataset


def rss_mib() -> float:
    """Resident memory of this process now (Linux /proc), in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batches_per_second(iterable, limit: int) -> float:
    tic = time.perf_counter()
    for i, (x, _) in enumerate(iterable, start=1):
        x.sum()  # touch the batch
        if i == limit:
            break
    return i / (time.perf_counter() - tic)


def loader_rates(data, mirror: Path, batches: int) -> dict[str, float]:
    """batches/s of BatchLoader over `data`'s in-memory MNIST training images and of torchvision's
    MNIST (read from `mirror`'s official files) in a DataLoader with per-sample transforms; batch 50,
    shuffled, with and without random flip/crop."""
    ours = BatchLoader(data.train_images, data.train_labels, 50, max_value=255, shuffle=True, seed=0)
    ours_aug = BatchLoader(data.train_images, data.train_labels, 50, max_value=255, shuffle=True, seed=0,
                           augment=Augment(flip=True, crop_padding=4, pad_mode="replicate"))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for f in (mirror / "mnist").glob("*.gz"):
            (raw / f.stem).write_bytes(gzip.decompress(f.read_bytes()))
        tv = datasets.MNIST(tmp, train=True, download=False, transform=transforms.ToTensor())
        tv_aug = datasets.MNIST(tmp, train=True, download=False, transform=transforms.Compose([
            transforms.RandomHorizontalFlip(), transforms.RandomCrop(28, padding=4, padding_mode="edge"),
            transforms.ToTensor()]))
        g = torch.Generator().manual_seed(0)
        return {
            "BatchLoader (in-memory)": batches_per_second(ours, batches),
            "DataLoader (ToTensor per sample)": batches_per_second(
                torch.utils.data.DataLoader(tv, batch_size=50, shuffle=True, generator=g), batches),
            "BatchLoader + flip/crop": batches_per_second(ours_aug, batches),
            "DataLoader + flip/crop per sample": batches_per_second(
                torch.utils.data.DataLoader(tv_aug, batch_size=50, shuffle=True, generator=g), batches),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/prepared/mnist"))
    p.add_argument("--mirror", type=Path, default=Path("../shared/mirror"))
    p.add_argument("--batches", type=int, default=600)
    args = p.parse_args()

    rss0, peak0 = rss_mib(), peak_rss_mib()
    tic = time.perf_counter()
    data = load_dataset(args.data)
    load_s = time.perf_counter() - tic
    print(f"load prepared MNIST: {load_s:.3f} s; resident memory +{rss_mib() - rss0:.0f} MiB, process peak "
          f"{peak0:.0f} -> {peak_rss_mib():.0f} MiB ({data.train_images.numel() + data.test_images.numel():,} "
          "uint8 pixels = 52 MiB)")

    rates = loader_rates(data, args.mirror, args.batches)
    for name, rate in rates.items():
        print(f"{name:36s} {rate:9.1f} batches/s")
    names = list(rates)
    print(f"ratio in-memory / DataLoader: plain {rates[names[0]] / rates[names[1]]:.1f}x, "
          f"augmented {rates[names[2]] / rates[names[3]]:.1f}x  (torch threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
