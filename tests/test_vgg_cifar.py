"""VGGNet7 on CIFAR-format data written by the test: one training epoch and one inference, both configs."""

import json
import subprocess
import sys

import pytest
import torch

from bnnrepro.config import load_experiment
from bnnrepro.data.prepared import load_dataset, write_prepared
from bnnrepro.data.sources import SOURCES
from bnnrepro.engine.train import fit
from bnnrepro.export import save_model
from standins import cifar10_archive


@pytest.fixture
def cifar_root(tmp_path):
    raw = tmp_path / "raw" / "cifar10"
    raw.mkdir(parents=True)
    cifar10_archive(raw, per_file=4)  # 20 train, 4 test images
    write_prepared("cifar10", SOURCES["cifar10"].parse(raw), tmp_path / "prepared" / "cifar10")
    return tmp_path


@pytest.mark.parametrize("config", ["float_cifar10", "binary_cifar10"])
def test_vggnet7_trains_one_epoch_and_infers(cifar_root, tmp_path, repo_root, config):
    torch.set_num_threads(2)
    overrides = {"train.epochs": 1, "data.batch_size": 10, "data.val_size": 5, "data.eval_batch_size": 10}
    cfg = load_experiment(repo_root / "config" / "rwth" / f"{config}.yml", overrides)
    data = load_dataset(cifar_root / "prepared" / "cifar10")
    result = fit(cfg, data, torch.device("cpu"), tmp_path / "ckpt.pt", progress=False)
    assert len(result.history) == 1 and result.test["n"] == 4
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))

    model_dir = tmp_path / "model"
    save_model(result.model, model_dir, cfg, {"channels": 3, "image_size": 32, "num_classes": 10},
               "packed" if cfg.model.weights == "binary" else "latent")
    out = subprocess.run([sys.executable, "-m", "bnnrepro.infer", "--model-path", str(model_dir),
                          "--data-root", str(cifar_root), "--json"], capture_output=True, text=True, cwd=repo_root)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["dataset"] == "cifar10" and report["n"] == 4
    assert report["accuracy"] == pytest.approx(result.test["top1"])
