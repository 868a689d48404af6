"""Training curves against the published ones."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bnnrepro.io import atomic_write  # noqa: E402

# shipped model -> (published run, panel title)
RWTH_CURVES = {"lenet5_float_mnist": ("lenet5_float", "LeNet5 float, MNIST"),
               "lenet5_binary_mnist": ("lenet5_binary", "LeNet5 binary, MNIST")}


def save(fig, path: Path) -> None:
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def plot_rwth_curves(pretrained: Path, reference: Path, out: Path) -> None:
    """Validation accuracy per epoch of our shipped LeNet5s next to the official runs."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (name, (ref, title)) in zip(axes, RWTH_CURVES.items()):
        official = np.loadtxt(reference / "rwth" / ref / "accuracies.txt")
        ax.plot(np.arange(1, len(official) + 1), official, color="0.6", lw=1, label="official run (seed 002 repo)")
        reported = float(np.loadtxt(reference / "rwth" / ref / "test_accuracy.txt"))
        ax.axhline(reported, color="C3", ls="--", lw=1, label=f"paper: test accuracy {reported:.2f} %")
        history = pretrained / name / "history.csv"
        if history.is_file():
            ours = pd.read_csv(history)
            ax.plot(ours["epoch"], ours["val_top1"], color="C0", lw=1.5, label="bnnrepro (shipped weights)")
        ax.set(title=title, xlabel="epoch", ylabel="validation accuracy (%)", xscale="log",
               ylim=(max(95.0, official.min() - 0.5), 100))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    save(fig, out)


def plot_runs(runs_dir: Path, out: Path) -> None:
    """Validation accuracy per epoch of every run the pipeline trained."""
    histories = {p.parent.name: pd.read_csv(p) for p in sorted(runs_dir.glob("*/history.csv"))}
    histories = {k: v for k, v in histories.items() if len(v)}
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, h in histories.items():
        ax.plot(h["epoch"], h["val_top1"], marker="o", ms=3, label=name)
    ax.set(title="Pipeline runs (this profile)", xlabel="epoch", ylabel="validation accuracy (%)")
    ax.grid(alpha=0.3)
    if histories:
        ax.legend(fontsize=8)
    save(fig, out)
