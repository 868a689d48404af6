"""Grid tables: many training methods on the same model and data, side by side.

  - our cross-method comparison (runs compare_<recipe>_<dataset>): every optimizer recipe of the SGDAT
    paper on one binary MLP, MNIST and Fashion-MNIST;
  - the BWS Digit grid (runs bws_digits_<mask>_<scheduler>, and the real-space baseline bws_digits_real);
  - BinSFO's four algorithms on its MNIST MLP (runs binsfo_mnist_<recipe>).

Each cell comes from a run's metrics.json (test top-1 / top-5 of the best-validation epoch) and its
history.csv (weights whose sign changed, per epoch).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bnnrepro.report import markdown
from bnnrepro.report.plots import plt, save
from bnnrepro.run_metrics import RunMetrics


def load_runs(runs_dir: Path, prefix: str, skipped: bool = False) -> list[tuple[RunMetrics, pd.DataFrame | None]]:
    """The trained runs of a grid (run names starting with `prefix`), each with its per-epoch history; with
    `skipped`, also the runs the profile leaves out (history None), for their shipped models."""
    runs = []
    for metrics_file in sorted(runs_dir.glob(f"{prefix}*/metrics.json")):
        m = RunMetrics.read(metrics_file)
        if m.trained:
            runs.append((m, pd.read_csv(metrics_file.parent / "history.csv")))
        elif skipped:
            runs.append((m, None))
    return runs


def flips_percent(m: RunMetrics, history: pd.DataFrame) -> float | None:
    """Mean over epochs of the sign changes per epoch, in % of the binary weights (a weight flipping
    twice in an epoch counts twice)."""
    if "flips" not in history or not m.binary_weights:
        return None
    return 100.0 * history["flips"].mean() / m.binary_weights


def run_cells(m: RunMetrics, history: pd.DataFrame) -> dict:
    return {"top1": m.test_top1, "top5": m.test_top5, "flips_%": flips_percent(m, history),
            "best_epoch": m.best_epoch, "budget": m.epochs_text()}


def comparison_table(runs_dir: Path, recipe_order: list[str], pretrained: Path | None = None,
                     pretrained_results: Path | None = None) -> pd.DataFrame:
    """One row per optimizer recipe, top-1 / top-5 / flips per dataset. With `pretrained` and
    `pretrained_results`: per dataset also the test top-1 of the shipped model of the same run name (trained
    at the grid's full budget), `<dataset> shipped top1`, also where this profile skipped the run. Columns
    empty in every row (nothing shipped, or nothing trained here) are left out."""
    rows, datasets = {}, {}
    cells = ("top1", "top5", "flips_%") + (("shipped top1",) if pretrained is not None else ())
    for m, history in load_runs(runs_dir, "compare_", skipped=pretrained is not None):
        shipped = shipped_cells(m.run, pretrained, pretrained_results)
        if not m.trained and shipped.get("shipped top1") is None:
            continue  # neither trained here nor shipped
        datasets[m.dataset] = None
        row = rows.setdefault(m.optimizer, {"optimizer": m.optimizer})
        for key, value in {**(run_cells(m, history) if m.trained else {}), **shipped}.items():
            if key in cells:
                row[f"{m.dataset} {key}"] = value
        if m.trained:
            row["budget"] = f"{m.epochs_text()}, seed {m.seed}, {m.profile} profile"
        if shipped.get("shipped epochs") is not None:
            row["shipped epochs"] = shipped["shipped epochs"]
    order = {label: i for i, label in enumerate(recipe_order)}
    table = pd.DataFrame(sorted(rows.values(), key=lambda r: order.get(r["optimizer"], len(order))))
    columns = ["optimizer"] + [f"{d} {k}" for d in datasets for k in cells] + ["budget", "shipped epochs"]
    table = table.reindex(columns=columns) if len(table) else table
    return table.dropna(axis="columns", how="all")


def bws_table(runs_dir: Path, pretrained: Path | None = None, pretrained_results: Path | None = None) -> pd.DataFrame:
    """Digit: one row per hypermask x scheduler, plus the real-space baseline. With `pretrained` and
    `pretrained_results`: the shipped model of the same cell (trained at the paper's 100 epochs, evaluated
    by infer@bws_digits_<cell>) beside this profile's run."""
    rows = []
    for m, history in load_runs(runs_dir, "bws_digits_"):
        name = m.run.removeprefix("bws_digits_")
        mask, _, scheduler = name.partition("_")
        if name == "real":
            mask, scheduler = "real space (latent SGD)", "-"
        rows.append({"mask": mask, "scheduler": scheduler, **run_cells(m, history), "seed": m.seed,
                     "profile": m.profile, **shipped_cells(m.run, pretrained, pretrained_results)})
    return pd.DataFrame(rows)


def shipped_cells(run: str, pretrained: Path | None, pretrained_results: Path | None) -> dict:
    """Test top-1 of the shipped model named `run`, and its epochs (trained, and of the best checkpoint)."""
    if pretrained is None or pretrained_results is None:
        return {}
    result, metadata = pretrained_results / f"{run}.json", pretrained / run / "metadata.json"
    if not (result.is_file() and metadata.is_file()):
        return {"shipped top1": None, "shipped epochs": None, "shipped best_epoch": None}
    meta = json.loads(metadata.read_text())
    return {"shipped top1": json.loads(result.read_text())["accuracy"], "shipped epochs": meta["epochs_trained"],
            "shipped best_epoch": meta["best_epoch"]}


def method_table(runs_dir: Path, prefix: str, pretrained: Path | None = None,
                 pretrained_results: Path | None = None) -> pd.DataFrame:
    """One row per run of a grid over methods only (BinSFO's four algorithms). With `pretrained` and
    `pretrained_results`: the shipped model of the same run name (trained at the paper's budget) beside it."""
    return pd.DataFrame([{"method": m.optimizer, **run_cells(m, history), "seed": m.seed, "profile": m.profile,
                          **shipped_cells(m.run, pretrained, pretrained_results)}
                         for m, history in load_runs(runs_dir, prefix)])


def finetune_table(runs_dir: Path) -> pd.DataFrame:
    """BinSFO fine-tuning: one row per pretrained model x algorithm, test top-1 per dataset, or why not run."""
    rows = {}
    for metrics_file in sorted(runs_dir.glob("binsfo_finetune_*/metrics.json")):
        m = RunMetrics.read(metrics_file)
        row = rows.setdefault((m.model, m.optimizer), {"model": m.model, "algorithm": m.optimizer})
        row[m.dataset] = (f"{m.test_top1:.2f} ({m.epochs_text()}, seed {m.seed})" if m.trained
                          else f"not run ({m.profile} profile)")
    return pd.DataFrame(list(rows.values()))


def plot_comparison(table: pd.DataFrame, out: Path) -> None:
    """Test top-1 of every optimizer recipe, one bar group per dataset: the shipped models (the grid's full
    budget) where every recipe has one, else this profile's runs."""
    datasets = list(dict.fromkeys(c.removesuffix(" top1").removesuffix(" shipped") for c in table.columns
                                  if c.endswith(" top1")))
    shipped = bool(datasets) and all(f"{d} shipped top1" in table and table[f"{d} shipped top1"].notna().all()
                                     for d in datasets)
    column = "{} shipped top1" if shipped else "{} top1"
    datasets = [d for d in datasets if column.format(d) in table]
    budget = (f"shipped, {int(table['shipped epochs'].iloc[0])} epochs" if shipped
              else table["budget"].iloc[0] if "budget" in table and len(table) else "")
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(len(datasets), 1)
    for i, dataset in enumerate(datasets):
        positions = [x + i * width for x in range(len(table))]
        ax.bar(positions, table[column.format(dataset)], width=width, label=dataset)
    ax.set_xticks([x + width * (len(datasets) - 1) / 2 for x in range(len(table))])
    ax.set_xticklabels(table["optimizer"] if len(table) else [], rotation=30, ha="right")
    ax.set(ylabel="test top-1 (%)", title="Every optimizer recipe on one binary MLP" + (f" ({budget})" if budget else ""))
    low = min((table[column.format(d)].min() for d in datasets), default=0)
    ax.set_ylim(max(0, low - 5), 100)
    ax.grid(axis="y", alpha=0.3)
    if datasets:
        ax.legend()
    save(fig, out)


def to_markdown(comparison: pd.DataFrame, bws: pd.DataFrame, binsfo: pd.DataFrame, finetune: pd.DataFrame) -> str:
    text = ["# Every method on the same model and data",
            "",
            "Generated by `dvc repro` (stage `report`); do not edit. Test accuracy (%) of the best-validation epoch; "
            "`flips_%`: sign changes per epoch in % of the binary weights, averaged over the epochs.",
            "",
            "## The SGDAT paper's optimizer recipes on one binary MLP (ours: no paper has this table)",
            "",
            "Binary MLP 784-256-256-10 (binary weights and activations, BatchNorm with affine), batch 256, the last "
            "10,000 training images for validation. Each recipe keeps its published hyperparameters (tuned for "
            "BinaryNet on CIFAR over 200 epochs); the budget here is much shorter."
            + (" `shipped top1`: the same run at the grid's 20 epochs (the paper profile), shipped in pretrained/ "
               "and evaluated by its infer@ stage in every profile; the figure plots these where every recipe has "
               "one." if "shipped epochs" in comparison.columns else ""),
            "",
            markdown.to_markdown(comparison, 2, integer_columns=("shipped epochs",)) if len(comparison)
            else "(no run yet)",
            "",
            "## Binary-weight-space training on Digit (BWS): every hypermask x temperature scheduler",
            "",
            "BWS MLP 64-1024-1024-1024-10, no real-valued parameter, weights kept as sign bits between steps. "
            "lr 10 (the temperature scale of the BWS README's only binary-space command); the real-space "
            "baseline is latent SGD with the code's default lr 1e-3. The paper's Digit numbers are not retrievable. "
            "`shipped`: the same cell trained at the paper's 100 epochs, shipped in pretrained/ and evaluated by "
            "its infer@ stage in every profile.",
            "",
            markdown.to_markdown(bws, 2, integer_columns=("best_epoch", "seed", "shipped epochs",
                                                          "shipped best_epoch")) if len(bws) else "(no run yet)",
            "",
            "## BinSFO's MLP on MNIST (64 x 64): its four training algorithms",
            "",
            "MLP 4096-1024-1024-1024-10, no real-valued parameter, batch 256, the code's default lr 1e-3 (the "
            "SGD paths times sqrt(256 / 96)); the test split is evaluated every epoch (the code has no validation "
            "split), so the best epoch is chosen on it. The paper's MNIST numbers are not retrievable. "
            "`shipped`: the same run at the code's 100 epochs, shipped in pretrained/ and evaluated by its infer@ "
            "stage in every profile.",
            "",
            markdown.to_markdown(binsfo, 2, integer_columns=("best_epoch", "seed", "shipped epochs",
                                                             "shipped best_epoch")) if len(binsfo) else "(no run yet)",
            "",
            "## BinSFO fine-tuning: ImageNet-pretrained AdamBNN and BCDNet, new head, six datasets at 256 x 256",
            "",
            "Test top-1 (%) of the best epoch, with the epochs and seed of the run; the budget is in "
            "config/binsfo/finetune_<model>.yml (the code's defaults; the paper's are not in its repository). These runs need the official checkpoints (downloaded by hand into data/pretrained/, "
            "see bnnrepro/models/pretrained.py) and a GPU: they run in the paper profile only. The paper's "
            "per-dataset numbers are not retrievable.",
            "",
            markdown.to_markdown(finetune, 2) if len(finetune) else "(no run yet)",
            ""]
    return "\n".join(text)
