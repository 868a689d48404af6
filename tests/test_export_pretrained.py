"""stages/export_pretrained.py ships a finished run into pretrained/<name>: the model it writes reloads at the
run's own input size and evaluates to the accuracy its metadata records."""

import json
import subprocess
import sys

import pytest

from bnnrepro.infer import main as infer_main
from standins import write_learnable_mnist

pytestmark = pytest.mark.slow  # real processes: seconds each


def test_a_resized_run_without_validation_split_exports_and_reloads(tmp_path, repo_root):
    """BinSFO's MLP: images resized (28 -> 16 here) and no validation split, so the test split picks the epoch."""

    data, out = tmp_path / "data" / "prepared" / "mnist", tmp_path / "run"
    write_learnable_mnist(data, 500, 100)
    train = [sys.executable, "stages/train.py", "binsfo_tiny", "--config", "config/binsfo/mnist_mlp.yml",
             "--recipe", "config/binsfo/optimizers.yml:binary", "--data", str(data), "--profile", "paper",
             "--threads", "1", "--models", str(out / "models"), "--reports", str(out / "reports"),
             "--checkpoints", str(out / "checkpoints"), "--timing", str(out / "timing"),
             "-o", "train.epochs=2", "-o", "model.hidden=32", "-o", "data.resize=16", "-o", "data.batch_size=100",
             "-o", "data.eval_batch_size=100"]
    subprocess.run(train, cwd=repo_root, check=True, capture_output=True)
    export = [sys.executable, "stages/export_pretrained.py", "binsfo_tiny", "--run", str(out / "models" / "binsfo_tiny"),
              "--history", str(out / "reports" / "binsfo_tiny" / "history.csv"), "--timing", str(out / "timing"),
              "--config", "config/binsfo/mnist_mlp.yml", "--data", str(data), "--out-root", str(tmp_path / "pretrained"),
              "--command", "the training command"]
    subprocess.run(export, cwd=repo_root, check=True, capture_output=True)

    shipped = tmp_path / "pretrained" / "binsfo_tiny"
    meta = json.loads((shipped / "metadata.json").read_text())
    run_meta = json.loads((out / "models" / "binsfo_tiny" / "metadata.json").read_text())
    assert meta["input"] == {"channels": 1, "image_size": 16, "num_classes": 10}
    assert meta["format"] == "packed" and meta["epochs_trained"] == 2 and meta["training_command"] == "the training command"
    assert "best-test checkpoint from epoch" in meta["budget"]  # no validation split: the test split chose it
    assert meta["test_top1"] == round(run_meta["result"]["test_top1"], 2)  # the packing round trip changes nothing
    assert infer_main(["--model-path", str(shipped), "--data-root", str(tmp_path / "data"), "--out",
                       str(tmp_path / "infer.json")]) == 0
    assert json.loads((tmp_path / "infer.json").read_text())["accuracy"] == meta["test_top1"]  # what infer@ gives
