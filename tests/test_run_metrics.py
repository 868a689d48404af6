"""reports/runs/<run>/metrics.json through RunMetrics: the writer's layout, the reader's checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnnrepro.errors import BadFileError
from bnnrepro.run_metrics import RunMetrics

REPO = Path(__file__).resolve().parents[1]
COMMON = dict(run="r", paper="rwth", profile="quick", dataset="mnist", model="lenet5", method="binary",
              optimizer="sgd", reported={"top1": 99.16})
TRAINED = dict(COMMON, status="trained", epochs=2, seed=2, device="cpu", num_classes=10, test_top1=98.5,
               test_top5=99.9, test_n=10000)


def test_a_trained_run_round_trips_in_field_order_without_unset_keys(tmp_path):
    m = RunMetrics(**TRAINED)
    d = m.to_json()
    assert "reason" not in d and "pretrained" not in d
    assert list(d)[:5] == ["run", "paper", "status", "profile", "epochs"]
    (tmp_path / "metrics.json").write_text(json.dumps(d))
    assert RunMetrics.read(tmp_path / "metrics.json") == m


def test_a_skipped_run_keeps_its_reason_and_no_results():
    m = RunMetrics(**COMMON, status="skipped", reason="needs a GPU")
    assert not m.trained and not m.collapsed and m.test_top1 is None
    assert m.to_json()["reason"] == "needs a GPU"


def test_collapsed_means_below_twice_chance():
    assert RunMetrics(**{**TRAINED, "test_top1": 19.9}).collapsed
    assert not RunMetrics(**{**TRAINED, "test_top1": 20.0}).collapsed


def test_the_budget_in_words_says_when_max_steps_cut_the_epochs_short():
    assert RunMetrics(**TRAINED).epochs_text() == "2 epochs"
    assert RunMetrics(**{**TRAINED, "epochs": 1}).epochs_text() == "1 epoch"
    assert RunMetrics(**{**TRAINED, "epochs": 1, "steps_per_epoch": 100}).epochs_text() == "1 epoch of 100 steps"


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "expected a JSON object"),
    ("{not json", "not JSON"),
    (json.dumps({**TRAINED, "accuracy": 1.0}), "unknown key(s) ['accuracy']"),
    (json.dumps({k: v for k, v in TRAINED.items() if k != "test_top1"}), "a trained run needs"),
    (json.dumps({**COMMON, "status": "skipped"}), "needs its reason"),
    (json.dumps({**TRAINED, "status": "done"}), "status must be"),
    (json.dumps({k: v for k, v in TRAINED.items() if k != "dataset"}), "dataset"),
])
def test_a_bad_metrics_file_is_one_clear_error(tmp_path, content, message):
    (tmp_path / "metrics.json").write_text(content)
    with pytest.raises(BadFileError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        RunMetrics.read(tmp_path / "metrics.json")


def test_every_metrics_file_of_the_workspace_reads():
    """The pipeline's own files (DVC-cached outputs: present after `dvc repro` or `dvc pull`)."""
    files = sorted((REPO / "reports" / "runs").glob("*/metrics.json"))
    if not files:
        pytest.skip("no reports/runs/*/metrics.json in this workspace: run `make repro` first")
    for path in files:
        m = RunMetrics.read(path)
        assert m.run == path.parent.name
        assert json.loads(path.read_text()) == m.to_json()  # the writer's layout, key for key
