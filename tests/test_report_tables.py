"""The tables of reports/, built from metrics files as stages/train.py writes them."""

from __future__ import annotations

import json

import pandas as pd

from bnnrepro.report.accuracy import run_row
from bnnrepro.report.comparison import bws_table, comparison_table, finetune_table, method_table, plot_comparison
from bnnrepro.run_metrics import RunMetrics

TRAINED_DEFAULTS = {"device": "cpu", "test_n": 10000}


def write_metrics(runs, run, **fields):
    """A metrics file as stages/train.py writes it (RunMetrics), with the fields a table does not read filled in."""
    defaults = {"method": "binary", **(TRAINED_DEFAULTS if fields.get("status") == "trained" else {})}
    metrics = RunMetrics(run=run, **{**defaults, **fields})
    (runs / run).mkdir(parents=True)
    (runs / run / "metrics.json").write_text(json.dumps(metrics.to_json()))


def test_finetune_table_has_a_cell_per_dataset_trained_or_not(tmp_path):
    common = {"model": "reactnet_a", "optimizer": "BinSFO", "paper": "binsfo"}
    write_metrics(tmp_path, "binsfo_finetune_binary_cifar10_adambnn", dataset="cifar10", status="trained",
                  test_top1=91.234, epochs=100, seed=1, profile="paper", **common)
    write_metrics(tmp_path, "binsfo_finetune_binary_caltech101_adambnn", dataset="caltech101", status="skipped",
                  profile="quick", reason="needs a GPU", **common)
    write_metrics(tmp_path, "binsfo_finetune_adam_cifar10_bcdnet", dataset="cifar10", status="skipped",
                  profile="quick", reason="needs a GPU", model="bcdnet", optimizer="Adam", paper="binsfo")
    write_metrics(tmp_path, "binsfo_mnist_binary", dataset="mnist", status="trained", test_top1=90.0, epochs=1, seed=1,
                  profile="quick", **common)

    table = finetune_table(tmp_path).set_index(["model", "algorithm"])
    assert table.loc[("reactnet_a", "BinSFO"), "cifar10"] == "91.23 (100 epochs, seed 1)"
    assert table.loc[("reactnet_a", "BinSFO"), "caltech101"] == "not run (quick profile)"
    assert table.loc[("bcdnet", "Adam"), "cifar10"] == "not run (quick profile)"
    assert "mnist" not in table.columns  # the MNIST MLP runs are another table


def test_accuracy_rows_name_the_processor_when_the_run_recorded_it():
    metrics = dict(paper="rwth", run="r", model="lenet5", dataset="mnist", method="binary", optimizer="sgd",
                   status="trained", test_top1=99.0, test_top5=99.9, test_n=10000, profile="quick", epochs=2, seed=2,
                   device="cpu")
    assert run_row(RunMetrics(**metrics))["device"] == "cpu"  # metrics written before device_name was recorded
    assert run_row(RunMetrics(**metrics, device_name="AMD EPYC"))["device"] == "cpu (AMD EPYC)"


def test_bws_table_puts_the_shipped_model_beside_each_run(tmp_path):
    runs, pretrained, results = tmp_path / "runs", tmp_path / "pretrained", tmp_path / "results"
    runs.mkdir()
    for run in ("bws_digits_emp_const", "bws_digits_real"):
        write_metrics(runs, run, dataset="digits", status="trained", test_top1=80.0, epochs=10, seed=1,
                      profile="quick", model="mlp", optimizer="flip", paper="bws")
        (runs / run / "history.csv").write_text("epoch,flips\n1,5\n")
    (pretrained / "bws_digits_emp_const").mkdir(parents=True)
    (pretrained / "bws_digits_emp_const" / "metadata.json").write_text(json.dumps({"epochs_trained": 100,
                                                                                   "best_epoch": 35}))
    results.mkdir()
    (results / "bws_digits_emp_const.json").write_text(json.dumps({"accuracy": 86.55}))

    table = bws_table(runs, pretrained, results).set_index("mask")
    assert table.loc["emp", ["top1", "shipped top1", "shipped epochs", "shipped best_epoch"]].tolist() == [80.0, 86.55,
                                                                                                       100, 35]
    assert table.loc["real space (latent SGD)", ["shipped top1", "shipped epochs"]].isna().all()  # none shipped
    assert "shipped top1" not in bws_table(runs).columns  # without the shipped models' folders


def test_binsfo_method_table_puts_the_shipped_model_beside_each_run(tmp_path):
    runs, pretrained, results = tmp_path / "runs", tmp_path / "pretrained", tmp_path / "results"
    runs.mkdir()
    for run, optimizer in (("binsfo_mnist_binary", "BinSFO"), ("binsfo_mnist_adam", "Adam")):
        write_metrics(runs, run, dataset="mnist", status="trained", test_top1=85.0, epochs=1, seed=1,
                      profile="quick", model="mlp", optimizer=optimizer, paper="binsfo")
        (runs / run / "history.csv").write_text("epoch,flips\n1,5\n")
    (pretrained / "binsfo_mnist_binary").mkdir(parents=True)
    (pretrained / "binsfo_mnist_binary" / "metadata.json").write_text(json.dumps({"epochs_trained": 100,
                                                                                  "best_epoch": 97}))
    results.mkdir()
    (results / "binsfo_mnist_binary.json").write_text(json.dumps({"accuracy": 91.5}))

    table = method_table(runs, "binsfo_mnist_", pretrained, results).set_index("method")
    assert table.loc["BinSFO", ["top1", "shipped top1", "shipped epochs", "shipped best_epoch"]].tolist() == [85.0, 91.5,
                                                                                                         100, 97]
    assert table.loc["Adam", ["shipped top1", "shipped epochs"]].isna().all()  # not shipped
    assert "shipped top1" not in method_table(runs, "binsfo_mnist_").columns


def test_comparison_table_puts_the_shipped_model_beside_each_dataset(tmp_path):
    runs, pretrained, results = tmp_path / "runs", tmp_path / "pretrained", tmp_path / "results"
    runs.mkdir()
    results.mkdir()
    for dataset in ("mnist", "fashion-mnist"):
        for recipe, optimizer in (("sgd", "SGD"), ("bop", "Bop")):
            run = f"compare_{recipe}_{dataset}"
            write_metrics(runs, run, dataset=dataset, status="trained", test_top1=70.0, test_top5=99.0, epochs=1,
                          seed=2020, profile="quick", model="mlp", optimizer=optimizer, paper="ours",
                          binary_weights=100)
            (runs / run / "history.csv").write_text("epoch,flips\n1,5\n")
    (pretrained / "compare_bop_mnist").mkdir(parents=True)
    (pretrained / "compare_bop_mnist" / "metadata.json").write_text(json.dumps({"epochs_trained": 20,
                                                                                "best_epoch": 18}))
    (results / "compare_bop_mnist.json").write_text(json.dumps({"accuracy": 90.5}))

    table = comparison_table(runs, ["SGD", "Bop"], pretrained, results)
    assert table["optimizer"].tolist() == ["SGD", "Bop"]  # the recipe file's order
    assert list(table.columns) == ["optimizer", "fashion-mnist top1", "fashion-mnist top5", "fashion-mnist flips_%",
                                   "mnist top1", "mnist top5", "mnist flips_%", "mnist shipped top1", "budget",
                                   "shipped epochs"]  # datasets in run-name order; nothing shipped on fashion-mnist
    bop = table.set_index("optimizer").loc["Bop"]
    assert (bop["mnist shipped top1"], bop["shipped epochs"], bop["mnist flips_%"]) == (90.5, 20, 5.0)
    assert pd.isna(table.set_index("optimizer").loc["SGD", "mnist shipped top1"])  # not shipped
    assert "mnist shipped top1" not in comparison_table(runs, ["SGD", "Bop"]).columns
    (results / "compare_bop_mnist.json").unlink()
    assert not [c for c in comparison_table(runs, ["SGD", "Bop"], pretrained, results).columns if "shipped" in c]


def test_comparison_table_shows_shipped_models_where_the_profile_trains_none(tmp_path):
    """The quick profile skips the grid: its rows are the shipped models alone, without empty run columns."""
    runs, pretrained, results = tmp_path / "runs", tmp_path / "pretrained", tmp_path / "results"
    runs.mkdir()
    results.mkdir()
    for recipe, optimizer, top1 in (("sgd", "SGD", 91.0), ("bop", "Bop", 92.5), ("adam", "Adam", None)):
        run = f"compare_{recipe}_mnist"
        write_metrics(runs, run, dataset="mnist", status="skipped", reason="shipped", profile="quick",
                      model="mlp", optimizer=optimizer, paper="ours")
        if top1 is not None:  # Adam: neither trained nor shipped, so no row
            (pretrained / run).mkdir(parents=True)
            (pretrained / run / "metadata.json").write_text(json.dumps({"epochs_trained": 20, "best_epoch": 19}))
            (results / f"{run}.json").write_text(json.dumps({"accuracy": top1}))

    table = comparison_table(runs, ["SGD", "Bop", "Adam"], pretrained, results)
    assert list(table.columns) == ["optimizer", "mnist shipped top1", "shipped epochs"]
    assert table.values.tolist() == [["SGD", 91.0, 20], ["Bop", 92.5, 20]]
    assert comparison_table(runs, ["SGD", "Bop", "Adam"]).empty  # without the shipped models: nothing to show
    plot_comparison(table, tmp_path / "comparison.png")
    assert (tmp_path / "comparison.png").stat().st_size > 0
