"""The front page and the accuracy table, rendered from fixture results, against committed snapshots.

The fixtures cover every kind of claim and every verdict: a shipped model, a trained run within seed
noise, a collapsed run, a grid the profile skips, a memory ratio and a geometry value. After an intended
change of the rendering, regenerate the snapshots with
    BNNREPRO_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/test_report_snapshot.py
and review the diff of tests/snapshots/.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from bnnrepro.report import claims
from bnnrepro.report.accuracy import collect, to_markdown

SNAPSHOTS = Path(__file__).parent / "snapshots"

CLAIMS = {
    "papers": {"rwth": {"title": "RWTH", "docs": "docs/rwth.md"}, "sgdat": {"title": "SGDAT", "docs": "docs/sgdat.md"},
               "bws": {"title": "BWS", "docs": "docs/bws.md"}, "hd": {"title": "HD", "docs": "docs/hd-geometry.md"}},
    "claims": [
        {"id": "shipped", "paper": "rwth", "claim": "LeNet5 binary", "kind": "accuracy", "shipped": "lenet",
         "official": "rwth_lenet", "detail": "accuracy.md"},
        {"id": "noise", "paper": "rwth", "claim": "LeNet5 float", "kind": "accuracy", "run": "rwth_float",
         "detail": "accuracy.md"},
        {"id": "grid", "paper": "sgdat", "claim": "Table 2, CIFAR-10", "kind": "grid", "runs": "sgdat_*_cifar10",
         "detail": "accuracy.md"},
        {"id": "comparable", "paper": "bws", "claim": "binary vs real", "kind": "comparable",
         "binary": "bws_digits_emp_*", "baseline": "bws_digits_real", "detail": "comparison.md"},
        {"id": "memory", "paper": "bws", "claim": "33x less memory", "kind": "memory", "published": 33, "as": "times",
         "model": "fcn", "column": "measured_state_kib", "baseline": "latent SGD", "method": "flip",
         "detail": "memory.md", "note": "what 33 counts"},
        {"id": "memory_peak", "paper": "bws", "claim": "33x less memory at the peak", "kind": "memory",
         "published": 33, "as": "times", "model": "fcn", "column": "peak_step_kib", "baseline": "latent SGD",
         "method": "flip", "detail": "memory.md"},
        {"id": "angle", "paper": "hd", "claim": "37 degrees", "kind": "value", "published": 37.07, "tolerance": 0.1,
         "unit": "deg", "file": "hd/theory.json", "key": ["sign_angle", "d=4608", "mean_deg"], "detail": "hd/README.md"},
    ]}


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) if path.suffix == ".json" else obj)


def trained(run: str, paper: str, top1: float, **extra) -> dict:
    return {"run": run, "paper": paper, "status": "trained", "profile": "quick", "epochs": 2, "seed": 2020,
            "device": "cpu", "device_name": "AMD EPYC", "dataset": "mnist", "num_classes": 10, "model": "mlp",
            "method": "binary, STE bnn", "optimizer": "sgd", "test_top1": top1, "test_top5": 99.0, "test_n": 10000,
            "best_epoch": 2, "reported": {}, **extra}


def skipped(run: str, paper: str, reported: float) -> dict:
    return {"run": run, "paper": paper, "status": "skipped", "profile": "quick", "dataset": "cifar10",
            "model": "binarynet", "method": "binary, STE bnn", "optimizer": run.split("_")[1],
            "reported": {"top1": reported}, "reason": "needs CIFAR and a GPU: about 1-3 GPU hours per recipe"}


@pytest.fixture
def results(tmp_path) -> claims.Results:
    runs = tmp_path / "reports" / "runs"
    write(runs / "rwth_float" / "metrics.json", trained("rwth_float", "rwth", 99.35, reported={"top1": 99.5}))
    write(runs / "bws_digits_emp_const" / "metrics.json", trained("bws_digits_emp_const", "bws", 85.43))
    write(runs / "bws_digits_real" / "metrics.json", trained("bws_digits_real", "bws", 12.04))
    for recipe, reported in (("sgd", 88.44), ("bop", 88.74)):
        write(runs / f"sgdat_{recipe}_cifar10" / "metrics.json", skipped(f"sgdat_{recipe}_cifar10", "sgdat", reported))
    model_cfg = {"arch": "lenet5", "weights": "binary"}
    write(tmp_path / "pretrained" / "lenet" / "metadata.json",
          {"config": {"paper": "rwth", "reported": {"top1": 99.16}, "model": model_cfg, "optim": {"name": "sgd"}},
           "profile": "paper", "epochs_trained": 500, "published_epochs": 500, "seed": 2,
           "budget": "500 epochs (the published recipe: 500); CPU, 2 thread(s); seed 2"})
    write(tmp_path / "reports" / "pretrained" / "lenet.json", {"accuracy": 99.12, "n": 10000, "dataset": "mnist"})
    write(tmp_path / "reports" / "official" / "rwth_lenet.json", {"status": "not run", "reason": "not fetched: offline"})
    write(tmp_path / "reports" / "official" / "rwth_vgg.json",
          {"status": "not run", "reason": "cifar10 not prepared in the quick profile", "paper": "rwth"})
    write(tmp_path / "reports" / "official" / "fetch" / "adambnn.json",
          {"name": "adambnn", "status": "not fetched", "reason": "no source has AdamBNN.pth.tar; put it in data/pretrained/"})
    write(tmp_path / "reports" / "memory_training_state.csv",
          "model,method,measured_state_kib,peak_step_kib,peak_step_batch,peak_weights_kib,peak_activations_kib\n"
          "fcn,latent SGD,525.0,1000.0,16384,525.0,475.0\nfcn,flip,16.5,990.0,16384,16.5,973.5\n")
    write(tmp_path / "reports" / "hd" / "theory.json", {"seed": 0, "n_mc": 10000,
                                                         "sign_angle": {"d=4608": {"mean_deg": 37.0661}}})
    claims_file = tmp_path / "claims.yml"
    claims_file.write_text(yaml.safe_dump(CLAIMS))
    return claims.Results(runs, tmp_path / "pretrained", tmp_path / "reports" / "pretrained", tmp_path / "reports")


def check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("BNNREPRO_UPDATE_SNAPSHOTS"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from tests/snapshots/{name} (see the module docstring)"


def test_front_page_matches_its_snapshot(results, tmp_path):
    papers, claim_list = claims.load_claims(tmp_path / "claims.yml")
    table = claims.evaluate(claim_list, results)
    assert list(table["verdict"]) == ["reproduced", "reproduced", "within seed noise", "ours", "short", "short",
                                      "not run here"]  # reproduced rows first
    assert "its largest part is activations (974 KiB, 98 % of its peak)" in table["how_far"].iloc[5]
    check_snapshot("front_page.md", claims.front_page(table, papers, "plots/claims.png", claims.fetch_statuses(results)))
    assert claims.summary(table)["claims"]["grid"] is None


def test_accuracy_table_matches_its_snapshot(results):
    table = collect(results.runs, results.pretrained, results.pretrained_results, results.reports / "official")
    text = to_markdown(table)
    assert "official/rwth_lenet" in text and "official/rwth_vgg" in text  # not-run rows without a paper stay
    assert "2,020" not in text and "| 2020 " in text or "seed = 2020" in text  # plain numbers
    check_snapshot("accuracy.md", text)


def test_not_run_rows_fold_into_one_row_per_reason(results):
    text = to_markdown(collect(results.runs, results.pretrained, results.pretrained_results))
    assert text.count("needs CIFAR and a GPU") == 1
    assert "sgdat_* (2 runs)" in text


def test_a_run_at_chance_level_is_flagged_collapsed(results):
    table = collect(results.runs, results.pretrained, results.pretrained_results).set_index("experiment")
    assert table.loc["bws_digits_real", "status"].startswith("collapsed")
    assert not table.loc["bws_digits_emp_const", "status"].startswith("collapsed")


def test_comparable_sets_runs_of_one_dataset_and_model_against_each_other(tmp_path):
    """BinSFO's fine-tuning grid: each binary run faces the baseline on its own dataset and model, never the best
    baseline of another dataset (Pets' 37 classes against Caltech-256's 256 would make any gap)."""
    runs = tmp_path / "runs"
    cells = {("oxford-pets", "reactnet_a"): (60.0, 55.0), ("caltech256", "reactnet_a"): (20.0, 30.0),
             ("caltech256", "bcdnet"): (25.0, None)}  # the bcdnet baseline was not run: a missing cell
    for (dataset, model), (binary, adam) in cells.items():
        for recipe, top1 in (("binary", binary), ("adam", adam)):
            name = f"ft_{recipe}_{dataset}_{model}"
            metrics = (trained(name, "binsfo", top1, dataset=dataset, model=model, num_classes=37) if top1 is not None
                       else {**skipped(name, "binsfo", 0.0), "dataset": dataset, "model": model})
            write(runs / name / "metrics.json", metrics)
    claim = {"binary": "ft_binary_*", "baseline": "ft_adam_*"}
    row = claims.from_comparable(claim, claims.Results(runs, tmp_path, tmp_path, tmp_path))
    assert row["ours"] == -2.5  # mean of +5 and -10, not 60 - 55 (best against best)
    assert row["how_far"].startswith("mean gap over 2 dataset x model cells, from -10.00 (binary 20.00 "
                                     "(ft_binary_caltech256_reactnet_a) vs baseline 30.00 (ft_adam_caltech256_reactnet_a))")
    assert row["how_far"].endswith("; 1 of 3 dataset x model cells not run")


def test_comparable_from_shipped_models_uses_this_commits_evaluation(tmp_path):
    """`shipped: true`: the runs are pretrained/<name> models; the accuracy is the one stage infer@<name> measured
    (reports/pretrained/<name>.json), the budget the one the metadata records."""
    pretrained, evaluated = tmp_path / "pretrained", tmp_path / "reports" / "pretrained"
    for name, top1 in (("digit_flip_a", 86.5), ("digit_flip_b", 88.0), ("digit_real", 90.25)):
        write(pretrained / name / "metadata.json",
              {"config": {"paper": "bws", "reported": {}, "optim": {"name": "flip"}}, "profile": "paper",
               "epochs_trained": 100, "seed": 1, "input": {"channels": 1, "image_size": 8, "num_classes": 10}})
        write(evaluated / f"{name}.json", {"accuracy": top1, "n": 357, "dataset": "digits", "device": "cpu",
                                           "model": "mlp", "method": "binary, STE bnn"})
    write(pretrained / "not_evaluated" / "metadata.json", {})  # no infer@ result yet: not counted
    claim = {"binary": "digit_flip_*", "baseline": "digit_real", "shipped": True}
    row = claims.from_comparable(claim, claims.Results(tmp_path / "runs", pretrained, evaluated, tmp_path))
    assert row["ours"] == -2.25
    assert row["how_far"] == "binary 88.00 (digit_flip_b) vs baseline 90.25 (digit_real)"
    assert row["budget"] == "shipped models: 100 epochs, seed 1, cpu, paper profile"
    assert row["source"] == "pretrained/digit_flip_*"
