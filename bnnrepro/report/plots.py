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


GRID_PREFIXES = ("compare_", "bws_digits_", "sgdat_", "binsfo_")  # grids have their own table and plot (comparison.py)


def plot_runs(runs_dir: Path, out: Path) -> None:
    """Validation accuracy per epoch of every single (non-grid) run the pipeline trained."""
    histories = {p.parent.name: pd.read_csv(p) for p in sorted(runs_dir.glob("*/history.csv"))
                 if not p.parent.name.startswith(GRID_PREFIXES)}
    histories = {k: v for k, v in histories.items() if len(v)}
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, h in histories.items():
        ax.plot(h["epoch"], h["val_top1"], marker="o", ms=3, label=name)
    ax.set(title="Pipeline runs (this profile)", xlabel="epoch", ylabel="validation accuracy (%)")
    ax.grid(alpha=0.3)
    if histories:
        ax.legend(fontsize=8)
    save(fig, out)


def plot_reproduced_vs_reported(table: pd.DataFrame, out: Path) -> None:
    """Each paper's reported top-1 against ours, one panel per paper; rows without both are left out."""
    done = table.dropna(subset=["reported_top1", "reproduced_top1"])
    papers = sorted(done["paper"].unique()) or ["(none yet)"]
    fig, axes = plt.subplots(1, len(papers), figsize=(4.5 * len(papers), 4), squeeze=False)
    for ax, paper in zip(axes[0], papers):
        rows = done[done["paper"] == paper]
        ax.scatter(rows["reported_top1"], rows["reproduced_top1"], color="C0")
        for _, r in rows.iterrows():
            ax.annotate(f"{r['experiment']} ({r['profile']})", (r["reported_top1"], r["reproduced_top1"]),
                        fontsize=7, xytext=(4, -10), textcoords="offset points")
        values = pd.concat([rows["reported_top1"], rows["reproduced_top1"]])
        low, high = (values.min() - 1, min(values.max() + 1, 100)) if len(values) else (0, 100)
        ax.plot([low, high], [low, high], color="0.6", ls="--", lw=1, label="reproduced = reported")
        ax.set(title=f"paper: {paper}", xlabel="reported top-1 (%)", ylabel="reproduced top-1 (%)",
               xlim=(low, high), ylim=(low, high))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    save(fig, out)


def plot_training_state(states: pd.DataFrame, out: Path) -> None:
    """Persistent training state (left) and the peak of one training step (right) of every method,
    relative to latent Adam, one bar group per model."""
    models = list(dict.fromkeys(states["model"]))
    methods = list(dict.fromkeys(states["method"]))
    panels = [("relative_to_latent_adam", "log", "Persistent state between steps (live tensors)"),
              ("peak_relative_to_latent_adam", "linear", "Peak of one training step (MemTracker)")]
    fig, axes = plt.subplots(1, 2, figsize=(15, 5), sharex=True)
    width = 0.8 / len(models)
    for ax, (column, scale, title) in zip(axes, panels):
        for i, model in enumerate(models):
            rows = states[states["model"] == model].set_index("method").reindex(methods)
            ax.bar([x + i * width for x in range(len(methods))], rows[column], width=width, label=model)
        ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(methods))])
        ax.set_xticklabels(methods, rotation=35, ha="right", fontsize=8)
        ax.set(yscale=scale, ylabel=f"relative to latent Adam{' (log)' if scale == 'log' else ''}", title=title)
        ax.axhline(1.0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
    # one legend for both panels, above them: inside an axes it hides bars of one panel or the other
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(models), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    save(fig, out)


def plot_peak_components(peaks: pd.DataFrame, components: tuple[str, ...], out: Path) -> None:
    """The peak of one training step of every method, as horizontal bars stacked by component (MiB), one
    panel per model: where the memory of a step goes, and what each method removes."""
    models = list(dict.fromkeys(peaks["model"]))
    fig, axes = plt.subplots(len(models), 1, figsize=(10, 2.6 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models):
        rows = peaks[peaks["model"] == model].iloc[::-1]  # the first method on top
        left = np.zeros(len(rows))
        for i, part in enumerate(components):
            ax.barh(rows["method"], rows[part], left=left, color=f"C{i}", label=part.replace("_", " "))
            left += rows[part].to_numpy(dtype=float)
        ax.set_title(f"{model}, batch {int(rows['batch'].iloc[0])}", fontsize=9)
        ax.set_xlabel("MiB at the peak of one training step (MemTracker)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(components), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    save(fig, out)


VERDICT_COLORS = {"reproduced": "C2", "within seed noise": "C0", "ours": "0.5", "short": "C3", "not run here": "0.8"}


def plot_claims(table: pd.DataFrame, out: Path) -> None:
    """Ours / the paper's number for every claim that has both (1 = the paper's), log scale, coloured by
    verdict; claims not run here are listed at the bottom without a marker."""
    both = table[table["published"].notna() & table["ours"].notna()]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(table) + 1.2))
    labels = list(table["claim"])[::-1]
    y = {claim: i for i, claim in enumerate(labels)}
    for verdict, rows in both.groupby("verdict", sort=False):
        ax.scatter(rows["ours"].astype(float) / rows["published"].astype(float), [y[c] for c in rows["claim"]],
                   color=VERDICT_COLORS.get(verdict, "k"), label=verdict, zorder=3)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels([c if c in set(both["claim"]) else f"{c} (no ratio: {v})" for c, v in
                        zip(labels, list(table["verdict"])[::-1])], fontsize=7)
    ax.set(xlabel="ours / paper's number (log scale; 1 = the paper's)", title="Paper against ours, one row per claim")
    ax.grid(axis="x", alpha=0.3)
    if len(both):
        ax.legend(fontsize=8, loc="lower right")
    save(fig, out)
