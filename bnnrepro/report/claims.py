"""The front page: each paper's headline claims (config/claims.yml) next to the result of ours that answers
them, with the budget behind ours and a verdict.

A claim's result comes from the pipeline's own outputs: a run's metrics.json, a shipped model's evaluation
(reports/pretrained/<name>.json with pretrained/<name>/metadata.json), the memory table or a geometry report.
Nothing here trains or measures; a missing result is reported as missing, with the reason the run recorded.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from bnnrepro.run_metrics import RunMetrics

# A single-seed accuracy counts as reproducing the paper when it is at most this far below it (points)...
TOLERANCE = 0.1
# ...and as within seed noise when the gap is inside two binomial standard errors of a test set of n images.
NOISE_SIGMAS = 2.0

# verdicts, in the order the front page lists them
REPRODUCED, NOISE, OURS, SHORT, NOT_RUN = "reproduced", "within seed noise", "ours", "short", "not run here"
ORDER = [REPRODUCED, NOISE, OURS, SHORT, NOT_RUN]


@dataclass(frozen=True)
class Results:
    """Where the pipeline's outputs are."""

    runs: Path                  # reports/runs/<run>/metrics.json
    pretrained: Path            # pretrained/<name>/metadata.json
    pretrained_results: Path    # reports/pretrained/<name>.json (stage infer@<name>)
    reports: Path               # reports/ (memory_training_state.csv, hd/..., official/<name>.json)

    def run(self, name: str) -> RunMetrics | None:
        path = self.runs / name / "metrics.json"
        return RunMetrics.read(path) if path.is_file() else None

    def runs_matching(self, pattern: str) -> list[RunMetrics]:
        return [RunMetrics.read(p) for p in sorted(self.runs.glob("*/metrics.json"))
                if fnmatch.fnmatchcase(p.parent.name, pattern)]

    def shipped_matching(self, pattern: str) -> list[RunMetrics]:
        """The shipped models (pretrained/<name>) named by `pattern`, as runs: their recipe and budget from the
        metadata, their test accuracy from this commit's evaluation (stage infer@<name>)."""
        return [shipped_as_run(p.parent.name, self) for p in sorted(self.pretrained.glob("*/metadata.json"))
                if fnmatch.fnmatchcase(p.parent.name, pattern)
                and (self.pretrained_results / f"{p.parent.name}.json").is_file()]


def shipped_as_run(name: str, results: Results) -> RunMetrics:
    meta = json.loads((results.pretrained / name / "metadata.json").read_text())
    result = json.loads((results.pretrained_results / f"{name}.json").read_text())
    cfg = meta["config"]
    return RunMetrics(run=name, paper=cfg["paper"], status="trained", profile=meta["profile"],
                      epochs=meta["epochs_trained"], seed=meta["seed"], device=result["device"],
                      dataset=result["dataset"], num_classes=meta["input"]["num_classes"], model=result["model"],
                      method=result["method"], optimizer=cfg["optim"]["name"], reported=cfg.get("reported", {}),
                      test_top1=result["accuracy"], test_top5=result.get("top5"), test_n=result["n"])


def official_weights(name: str, results: Results) -> str:
    """The publisher's own weights evaluated by our code (stage infer@official_<name>), or why not."""
    path = results.reports / "official" / f"{name}.json"
    if not path.is_file():
        return "no result (run `dvc repro`)"
    result = json.loads(path.read_text())
    if result.get("status") == "not run":  # where to put a file not fetched is listed below the table
        return "not fetched (see below)" if result["reason"].startswith("not fetched") else f"not run: {result['reason']}"
    return f"{result['accuracy']:.2f} %"


def noise_points(top1: float, n: int) -> float:
    """NOISE_SIGMAS binomial standard errors of an accuracy (%) measured on n images, in points."""
    p = top1 / 100
    return NOISE_SIGMAS * 100 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def accuracy_verdict(published: float | None, ours: float, n: int) -> tuple[str, str]:
    """(verdict, how far): reproduced within TOLERANCE, within seed noise, or short by the gap."""
    if published is None:
        return OURS, "no paper number for this setting"
    gap = published - ours
    if gap <= TOLERANCE:
        return REPRODUCED, f"{-gap:+.2f} points"
    noise = noise_points(ours, n)
    if gap <= noise:
        return NOISE, f"{-gap:+.2f} points (2 sigma at n = {n}: {noise:.2f})"
    return SHORT, f"short by {gap:.2f} points"


def budget(m: RunMetrics) -> str:
    device = f"{m.device} ({m.device_name})" if m.device_name else m.device
    return f"{m.epochs_text()}, seed {m.seed}, {device}, {m.profile} profile"


def not_run(m: RunMetrics | None, what: str) -> dict[str, Any]:
    reason = (m.reason or "no result") if m else f"no result for {what} (run `dvc repro`)"
    return {"ours": None, "verdict": NOT_RUN, "how_far": reason}


def from_accuracy(claim: dict, results: Results) -> dict[str, Any]:
    if "shipped" in claim:
        return _shipped(claim["shipped"], results)
    m = results.run(claim["run"])
    published = m.reported.get("top1") if m else None
    if not m or not m.trained:
        return {"published": published, **not_run(m, claim["run"])}
    verdict, how_far = accuracy_verdict(published, m.test_top1, m.test_n)
    return {"published": published, "ours": m.test_top1, "verdict": verdict, "how_far": how_far,
            "budget": budget(m), "source": f"runs/{claim['run']}"}


def _shipped(name: str, results: Results) -> dict[str, Any]:
    meta_file, result_file = results.pretrained / name / "metadata.json", results.pretrained_results / f"{name}.json"
    if not meta_file.is_file() or not result_file.is_file():
        return not_run(None, f"the shipped model {name}")
    meta, result = json.loads(meta_file.read_text()), json.loads(result_file.read_text())
    published = meta["config"].get("reported", {}).get("top1")
    verdict, how_far = accuracy_verdict(published, result["accuracy"], result["n"])
    return {"published": published, "ours": result["accuracy"], "verdict": verdict, "how_far": how_far,
            "budget": f"shipped model: {meta['budget']}", "source": f"pretrained/{name}"}


def from_grid(claim: dict, results: Results) -> dict[str, Any]:
    runs = results.runs_matching(claim["runs"])
    reported = [r.reported["top1"] for r in runs if r.reported.get("top1") is not None]
    published = max(reported, default=None)
    trained = [r for r in runs if r.trained]
    if not trained:
        return {"published": published, **not_run(runs[0] if runs else None, claim["runs"]),
                "budget": f"{len(runs)} runs"}
    best = max(trained, key=lambda r: r.test_top1)
    verdict, how_far = accuracy_verdict(published, best.test_top1, best.test_n)
    missing = f"; {len(runs) - len(trained)} of {len(runs)} not run" if len(trained) < len(runs) else ""
    return {"published": published, "ours": best.test_top1, "verdict": verdict,
            "how_far": f"{how_far} (ours: {best.optimizer})", "budget": budget(best) + missing,
            "source": claim["runs"]}


def from_comparable(claim: dict, results: Results) -> dict[str, Any]:
    """Our binary runs against the baseline runs on the same dataset and model (the papers say "comparable"
    without a number): in each such cell the best binary run against the best baseline run. One cell (Digit,
    BinSFO's MNIST MLP) gives that gap; several (the fine-tuning grid: datasets x models) give the mean gap and
    its range. Runs on different datasets are never set against each other: their accuracies do not compare.
    `shipped: true`: the runs are shipped models (pretrained/<name>, trained at the paper's budget), not this
    profile's runs."""
    runs_matching = results.shipped_matching if claim.get("shipped") else results.runs_matching
    shipped = "shipped models: " if claim.get("shipped") else ""

    def best_per_cell(pattern: str) -> dict[tuple[str, str], RunMetrics]:
        cells: dict[tuple[str, str], RunMetrics] = {}
        for m in runs_matching(pattern):
            cell = (m.dataset, m.model)
            if m.trained and (cell not in cells or m.test_top1 > cells[cell].test_top1):
                cells[cell] = m
        return cells

    binary, baseline = best_per_cell(claim["binary"]), best_per_cell(claim["baseline"])
    pairs = [(binary[cell], baseline[cell]) for cell in sorted(binary) if cell in baseline]
    if not pairs:
        skipped = runs_matching(claim["binary"]) + runs_matching(claim["baseline"])
        return {"published": None, **not_run(skipped[0] if skipped else None, claim["binary"])}
    gaps = [round(b.test_top1 - r.test_top1, 2) for b, r in pairs]
    collapsed = sorted({m.run for pair in pairs for m in pair if m.collapsed})
    note = f"; collapsed to chance: {', '.join(collapsed)}" if collapsed else ""
    cells = {(m.dataset, m.model) for m in runs_matching(claim["binary"])}
    missing = f"; {len(cells) - len(pairs)} of {len(cells)} dataset x model cells not run" if len(pairs) < len(cells) else ""

    def versus(i: int) -> str:
        b, r = pairs[i]
        return f"binary {b.test_top1:.2f} ({b.run}) vs baseline {r.test_top1:.2f} ({r.run})"

    if len(pairs) == 1:
        how_far = versus(0)
    else:
        lo, hi = gaps.index(min(gaps)), gaps.index(max(gaps))
        how_far = (f"mean gap over {len(pairs)} dataset x model cells, from {gaps[lo]:+.2f} ({versus(lo)}) "
                   f"to {gaps[hi]:+.2f} ({versus(hi)})")
    return {"published": None, "ours": round(sum(gaps) / len(gaps), 2), "verdict": OURS,
            "how_far": how_far + note + missing, "budget": shipped + budget(pairs[0][0]),
            "source": ("pretrained/" if shipped else "") + claim["binary"],
            "unit": "points"}


def from_memory(claim: dict, results: Results) -> dict[str, Any]:
    path = results.reports / "memory_training_state.csv"
    if not path.is_file():
        return {"published": claim["published"], **not_run(None, "the memory table")}
    table = pd.read_csv(path)
    rows = table[table["model"] == claim["model"]].set_index("method")
    ours_kib, base_kib = rows.loc[claim["method"], claim["column"]], rows.loc[claim["baseline"], claim["column"]]
    if claim["as"] == "times":
        ours, unit = base_kib / ours_kib, "x"
    else:
        ours, unit = 100 * (1 - ours_kib / base_kib), "% smaller"
    reached = ours >= claim["published"]
    batch = int(rows.loc[claim["method"], "peak_step_batch"])
    how_far = f"{claim['method']}: {ours_kib:.0f} KiB vs {claim['baseline']}: {base_kib:.0f} KiB"
    if claim["column"] == "peak_step_kib" and "peak_activations_kib" in rows:
        how_far += f"; {largest_part(table[table['model'] == claim['model']], claim['method'])}"
    return {"published": claim["published"], "ours": round(float(ours), 2), "unit": unit,
            "verdict": REPRODUCED if reached else SHORT, "how_far": how_far,
            "budget": f"tensor bytes of one training step (MemTracker), batch {batch}", "source": "memory_training_state.csv"}


def largest_part(states: pd.DataFrame, method: str) -> str:
    """The component (a `peak_<part>_kib` column of the memory table) that holds most of `method`'s peak of
    one training step, in words."""
    row = states.set_index("method").loc[method]
    parts = [c for c in states.columns if c.startswith("peak_") and c.endswith("_kib") and c != "peak_step_kib"]
    part = max(parts, key=lambda c: row[c])
    name = part.removeprefix("peak_").removesuffix("_kib").replace("_", " ")
    return f"its largest part is {name} ({row[part]:.0f} KiB, {100 * row[part] / row['peak_step_kib']:.0f} % of its peak)"


def from_value(claim: dict, results: Results) -> dict[str, Any]:
    path = results.reports / claim["file"]
    if not path.is_file():
        return {"published": claim["published"], **not_run(None, claim["file"])}
    report = json.loads(path.read_text())
    value: Any = report
    for part in claim["key"]:
        value = value[part]
    gap = value - claim["published"]
    verdict = REPRODUCED if abs(gap) <= claim["tolerance"] else SHORT
    seed = f", seed {report['seed']}" if "seed" in report else ""
    return {"published": claim["published"], "ours": value, "unit": claim.get("unit", ""), "verdict": verdict,
            "how_far": f"{gap:+.4g} {claim.get('unit', '')} (tolerance {claim['tolerance']})".strip(),
            "budget": f"Monte Carlo, {report.get('n_mc', '?')} draws{seed}", "source": claim["file"]}


KINDS = {"accuracy": from_accuracy, "grid": from_grid, "comparable": from_comparable, "memory": from_memory,
         "value": from_value}


def load_claims(path: Path) -> tuple[dict[str, dict], list[dict[str, Any]]]:
    """(papers, claims) of config/claims.yml; every claim names a known paper and kind."""
    raw = yaml.safe_load(path.read_text())
    papers, claims = raw["papers"], raw["claims"]
    for claim in claims:
        if claim.get("kind") not in KINDS or claim.get("paper") not in papers:
            raise ValueError(f"{path}: claim {claim.get('id')!r}: kind must be one of {sorted(KINDS)} and "
                             f"paper one of {sorted(papers)}")
    return papers, claims


def evaluate(claims: list[dict[str, Any]], results: Results) -> pd.DataFrame:
    """One row per claim, reproduced rows first (then within noise, ours, short, not run), file order within."""
    rows = []
    for claim in claims:
        result = {"budget": "", "source": "", "unit": "%", **KINDS[claim["kind"]](claim, results)}
        result["published_weights"] = official_weights(claim["official"], results) if "official" in claim else ""
        result["note"] = claim.get("note", "")  # what the paper's number counts, where ours counts something else
        rows.append({"id": claim["id"], "paper": claim["paper"], "claim": claim["claim"], **result,
                     "detail": claim["detail"]})
    table = pd.DataFrame(rows)
    order = table["verdict"].map(ORDER.index)
    return table.assign(_order=order).sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def summary(table: pd.DataFrame) -> dict[str, Any]:
    """The pipeline's one declared metric: our number per claim (None when not run) and the verdict counts."""
    return {"claims": {row.id: (None if row.ours is None or pd.isna(row.ours) else row.ours)
                       for row in table.itertuples()},
            "verdicts": {verdict: int((table["verdict"] == verdict).sum()) for verdict in ORDER}}


def _number(value: Any, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:g}" if unit in ("x", "r", "rad") else f"{value:.2f}"
    return {"%": f"{text} %", "% smaller": f"{text} % smaller", "x": f"{text}x", "deg": f"{text} deg",
            "points": f"{value:+.2f} points", "r": text}.get(unit, f"{text} {unit}".strip())


def fetch_statuses(results: Results) -> list[str]:
    """One line per published checkpoint (stage fetch@<name>): fetched, or why not and where to put it."""
    lines = []
    for path in sorted((results.reports / "official" / "fetch").glob("*.json")):
        status = json.loads(path.read_text())
        detail = f": {status['reason']}" if status.get("reason") else ""
        lines.append(f"- `{status.get('name', path.stem)}`: {status['status']}{detail}")
    return lines


def front_page(table: pd.DataFrame, papers: dict[str, dict], figure: str, fetched: list[str] = ()) -> str:
    """reports/README.md: the claims table, the figure above it, what each verdict means, and the status of
    every published checkpoint."""
    notes = list(dict.fromkeys(n for n in table["note"] if n)) if "note" in table else []
    rows = [{"paper": f"[{row.paper}](../{papers[row.paper]['docs']})", "claim": row.claim,
             "paper's number": _number(row.published, row.unit), "ours": _number(row.ours, row.unit),
             "published weights, evaluated here": row.published_weights,
             "verdict": row.verdict, "how far": row.how_far + (f" (note {notes.index(row.note) + 1})"
                                                             if getattr(row, "note", "") else ""),
             "budget of ours": row.budget, "details": f"[{row.detail}]({row.detail})"} for row in table.itertuples()]
    numbered = [f"{i}. {note}" for i, note in enumerate(notes, 1)]
    counts = ", ".join(f"{int((table['verdict'] == v).sum())} {v}" for v in ORDER)
    legend = "\n".join(f"- **{key}**: {p['title']} ([our notes](../{p['docs']}))" for key, p in papers.items())
    return "\n".join([
        "# What bnnrepro reproduces",
        "",
        "Generated by `dvc repro` (stage `report`) from `config/claims.yml`; do not edit. One row per headline "
        "claim of the five papers, next to the result of ours that answers it and the budget behind it.",
        "",
        f"![paper against ours]({figure})",
        "",
        f"**{len(table)} claims: {counts}.**",
        "",
        pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True),
        "",
        *(["Notes (what a paper's number counts where ours counts something else):", *numbered, ""] if notes else []),
        "Verdicts:",
        f"- **{REPRODUCED}**: an accuracy at most {TOLERANCE} points below the paper's; a memory ratio at least "
        "the paper's; a value within the claim's tolerance.",
        f"- **{NOISE}**: below the paper's accuracy by less than {NOISE_SIGMAS:g} binomial standard errors of the "
        "test set (one seed cannot tell such a gap from chance).",
        f"- **{OURS}**: the paper gives no number for this setting; ours is shown for the record.",
        f"- **{SHORT}**: further from the paper than the above.",
        f"- **{NOT_RUN}**: this profile does not run it; the reason (and the GPU time it needs) is given.",
        "",
        "\"Published weights, evaluated here\": the weights the paper's authors published, fetched and verified "
        "(stage `fetch@<name>`) and evaluated by our loader and model code (`infer@official_<name>`); when this "
        "matches the paper's number, our model code computes what theirs did.",
        "",
        "Papers:",
        legend,
        "",
        "## Published weights (stages `fetch@<name>`)",
        "",
        *(fetched or ["- no fetch stage has run"]),
        ""])
