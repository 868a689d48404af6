"""The accuracy table: one row per experiment and per shipped model, next to the paper's number.

The CSV keeps one row per run. The markdown is for reading: shipped models first, then trained runs, then
one row per group of runs that were not run for the same reason; columns that hold one value for every
row move into a line above the table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from bnnrepro.config import ModelConfig
from bnnrepro.report import markdown
from bnnrepro.report.claims import TOLERANCE, accuracy_verdict
from bnnrepro.run_metrics import RunMetrics

COLUMNS = ["paper", "experiment", "model", "dataset", "method", "optimizer", "reported_top1", "reproduced_top1",
           "difference", "reported_top5", "reproduced_top5", "profile", "epochs", "seed", "device", "status"]


def status(reported: float | None, reproduced: float, n: int, note: str = "", paper: str = "") -> str:
    """The front page's verdict (claims.accuracy_verdict) with how far, and the budget note."""
    if reported is None:
        return "ours (no paper has it)" if paper == "ours" else "no paper number retrievable for this setting"
    verdict, how_far = accuracy_verdict(reported, reproduced, n)
    return f"{verdict}: {how_far}{' (' + note + ')' if note else ''}"


def run_row(m: RunMetrics) -> dict[str, Any]:
    reported = m.reported.get("top1")
    common = {"paper": m.paper, "experiment": m.run, "model": m.model, "dataset": m.dataset, "method": m.method,
              "optimizer": m.optimizer, "reported_top1": reported, "reported_top5": m.reported.get("top5")}
    if not m.trained:
        return {**common, "profile": m.profile, "status": f"not run: {m.reason}"}
    note = f"{m.profile} profile, {m.epochs_text()}" if m.profile != "paper" else ""
    verdict = status(reported, m.test_top1, m.test_n, note, m.paper)
    if m.collapsed:
        verdict = f"collapsed: chance level is {100 / m.num_classes:.0f} % ({verdict})"
    return {**common, "reproduced_top1": m.test_top1,
            "difference": round(m.test_top1 - reported, 2) if reported is not None else None,
            "reproduced_top5": m.test_top5, "profile": m.profile,
            "epochs": m.epochs_text() if m.steps_per_epoch else m.epochs, "seed": m.seed,
            "device": device_text(m), "status": verdict}


def device_text(m: RunMetrics) -> str:
    """"cpu (AMD EPYC)": the kind of processor matters for the last digits (README, determinism)."""
    return f"{m.device} ({m.device_name})" if m.device_name else m.device


def pretrained_row(name: str, metadata: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    cfg = metadata["config"]
    reported = cfg["reported"].get("top1")
    top1 = result["accuracy"]
    return {"paper": cfg["paper"], "experiment": f"pretrained/{name}", "model": cfg["model"]["arch"],
            "dataset": result["dataset"], "method": ModelConfig(**cfg["model"]).describe(),
            "optimizer": cfg["optim"]["name"], "reported_top1": reported,
            "reproduced_top1": top1, "difference": round(top1 - reported, 2) if reported is not None else None,
            "reproduced_top5": result.get("top5"), "profile": f"shipped ({metadata['profile']} recipe)",
            "epochs": metadata["epochs_trained"], "seed": metadata["seed"], "device": metadata.get("device", "cpu"),
            "status": status(reported, top1, result["n"],
                             f"{metadata['epochs_trained']} of {metadata['published_epochs']} epochs", cfg["paper"])}


OFFICIAL_PROFILE = "published weights, evaluated here"


def official_row(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """The publisher's own weights through our loader, model code and evaluation (stage infer@official_<name>)."""
    common = {"paper": result.get("paper"), "experiment": f"official/{name}", "dataset": result.get("dataset"),
              "profile": OFFICIAL_PROFILE}
    if result.get("status") == "not run":
        return {**common, "status": f"not run: {result['reason']}"}
    reported, top1 = result.get("reported_top1"), result["accuracy"]
    return {**common, "model": result["model"], "method": result["method"], "reported_top1": reported,
            "reproduced_top1": top1, "difference": round(top1 - reported, 2) if reported is not None else None,
            "reproduced_top5": result.get("top5"), "device": result["device"],
            "status": status(reported, top1, result["n"], paper=result.get("paper", ""))}


def collect(runs_dir: Path, pretrained_dir: Path, pretrained_results: Path,
            official_results: Path | None = None) -> pd.DataFrame:
    rows = []
    for result_file in sorted(pretrained_results.glob("*.json")):
        name = result_file.stem
        metadata = json.loads((pretrained_dir / name / "metadata.json").read_text())
        rows.append(pretrained_row(name, metadata, json.loads(result_file.read_text())))
    for result_file in sorted(official_results.glob("*.json")) if official_results else []:
        rows.append(official_row(result_file.stem, json.loads(result_file.read_text())))
    for metrics_file in sorted(runs_dir.glob("*/metrics.json")):
        rows.append(run_row(RunMetrics.read(metrics_file)))
    return pd.DataFrame(rows, columns=COLUMNS)


def fold_not_run(table: pd.DataFrame) -> pd.DataFrame:
    """Runs not run for the same reason in the same paper become one row: "sgdat_* (20 runs)"."""
    skipped = table["status"].fillna("").str.startswith("not run")
    folded = []
    for (paper, reason), group in table[skipped].groupby(["paper", "status"], sort=False, dropna=False):
        names = list(group["experiment"])
        prefix = os.path.commonprefix(names)
        folded.append({"paper": paper, "status": reason,
                       "experiment": names[0] if len(names) == 1 else f"{prefix}* ({len(names)} runs)",
                       **{col: ", ".join(dict.fromkeys(group[col].dropna().astype(str)))
                          for col in ("model", "dataset", "method", "optimizer", "profile")}})
    return pd.concat([table[~skipped], pd.DataFrame(folded, columns=table.columns)], ignore_index=True)


def constant_columns(table: pd.DataFrame) -> dict[str, Any]:
    """Columns with one value (blanks aside) in every row, and that value."""
    return {col: values[0] for col in table.columns if len(values := table[col].dropna().unique()) == 1}


def to_markdown(table: pd.DataFrame) -> str:
    readable = fold_not_run(table)
    same = {k: v for k, v in constant_columns(readable).items() if k not in ("experiment", "status")}
    empty = [col for col in readable.columns if readable[col].isna().all()]
    readable = readable.drop(columns=[*same, *empty])
    same_line = "; ".join(f"{k} = {v}" for k, v in same.items())
    header = ("# Accuracy: reproduced vs reported\n\n"
              "Generated by `dvc repro` (stage `report`); do not edit. Accuracies are top-1 % on the test split, "
              f"of the best-validation checkpoint. \"reproduced\" means at most {TOLERANCE} points below the paper, "
              "\"within seed noise\" less than two binomial standard errors of the test set below it (one seed). Rows of the quick profile are short budgets that check the pipeline, not reproductions; "
              "the front page (README.md) says which results answer which claim. A run below twice chance level "
              "is marked collapsed. Shipped models first, then the runs of this profile, then the runs it does not "
              "run (one row per reason).\n\n"
              + (f"Every row: {same_line}.\n\n" if same_line else ""))
    return header + markdown.to_markdown(readable, 2, integer_columns=("epochs", "seed")) + "\n"
