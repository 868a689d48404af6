"""The accuracy table: one row per experiment and per shipped model, next to the paper's number."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from bnnrepro.models.common import ModelConfig
from bnnrepro.report import markdown

# A single-seed run counts as reproducing the paper when it is at most this far below it (points).
TOLERANCE = 0.1

COLUMNS = ["paper", "experiment", "model", "dataset", "method", "optimizer", "reported_top1", "reproduced_top1",
           "difference", "reported_top5", "reproduced_top5", "profile", "epochs", "seed", "device", "status"]


def status(reported: float | None, reproduced: float | None, note: str = "", paper: str = "") -> str:
    if reproduced is None:
        return note
    if reported is None:
        return "ours (no paper has it)" if paper == "ours" else "no paper number retrievable for this setting"
    gap = reported - reproduced
    verdict = "reproduced" if gap <= TOLERANCE else f"short of the paper by {gap:.2f}"
    return f"{verdict}{' (' + note + ')' if note else ''}"


def run_row(metrics: dict[str, Any]) -> dict[str, Any]:
    reported = metrics.get("reported", {}).get("top1")
    common = {"paper": metrics["paper"], "experiment": metrics["run"], "model": metrics["model"],
              "dataset": metrics["dataset"], "method": metrics["method"], "optimizer": metrics.get("optimizer"),
              "reported_top1": reported, "reported_top5": metrics.get("reported", {}).get("top5")}
    if metrics["status"] == "skipped":
        return {**common, "profile": metrics["profile"],
                "status": f"not run: {metrics['reason']}"}
    top1 = metrics["test_top1"]
    note = f"{metrics['profile']} profile, {metrics['epochs']} epochs" if metrics["profile"] != "paper" else ""
    return {**common, "reproduced_top1": top1,
            "difference": round(top1 - reported, 2) if reported is not None else None,
            "reproduced_top5": metrics.get("test_top5"), "profile": metrics["profile"], "epochs": metrics["epochs"],
            "seed": metrics["seed"], "device": _device(metrics), "status": status(reported, top1, note, metrics["paper"])}


def _device(metrics: dict[str, Any]) -> str:
    """"cpu (AMD EPYC)": the kind of processor matters for the last digits (README, determinism)."""
    name = metrics.get("device_name")
    return f"{metrics['device']} ({name})" if name else metrics["device"]


def pretrained_row(name: str, metadata: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    cfg = metadata["config"]
    reported = cfg["reported"].get("top1")
    top1 = result["accuracy"]
    return {"paper": cfg["paper"], "experiment": f"pretrained/{name}", "model": cfg["model"]["arch"],
            "dataset": result["dataset"], "method": ModelConfig(**cfg["model"]).describe(),
            "optimizer": cfg["optim"]["name"], "reported_top1": reported,
            "reproduced_top1": top1, "difference": round(top1 - reported, 2) if reported is not None else None,
            "reproduced_top5": result.get("top5"), "profile": f"shipped ({metadata['profile']} recipe)",
            "epochs": metadata["epochs_trained"], "seed": metadata["seed"], "device": "cpu",
            "status": status(reported, top1, f"{metadata['epochs_trained']} of {metadata['published_epochs']} epochs")}


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
            "reproduced_top5": result.get("top5"), "device": result["device"], "status": status(reported, top1)}


def collect(runs_dir: Path, pretrained_dir: Path, pretrained_results: Path,
            official_results: Path | None = None) -> pd.DataFrame:
    rows = []
    for metrics_file in sorted(runs_dir.glob("*/metrics.json")):
        rows.append(run_row(json.loads(metrics_file.read_text())))
    for result_file in sorted(pretrained_results.glob("*.json")):
        name = result_file.stem
        metadata = json.loads((pretrained_dir / name / "metadata.json").read_text())
        rows.append(pretrained_row(name, metadata, json.loads(result_file.read_text())))
    for result_file in sorted(official_results.glob("*.json")) if official_results else []:
        rows.append(official_row(result_file.stem, json.loads(result_file.read_text())))
    return pd.DataFrame(rows, columns=COLUMNS)


def to_markdown(table: pd.DataFrame) -> str:
    header = ("# Accuracy: reproduced vs reported\n\n"
              "Generated by `dvc repro` (stage `report`); do not edit. Accuracies are top-1 % on the test split, "
              f"of the best-validation checkpoint. \"reproduced\" means at most {TOLERANCE} points below the paper "
              "(one seed). Rows of the quick profile are short budgets that check the pipeline, not reproductions.\n\n")
    return header + markdown.to_markdown(table, 2, integer_columns=("epochs", "seed")) + "\n"
