"""Every config of the SGDAT paper's Table 2 grid (ten recipes x CIFAR-10, CIFAR-100, Tiny-ImageNet) and of
our MNIST comparison trains one step on small data of the right shape: the configs run unchanged on a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from bnnrepro.config import load_experiment
from bnnrepro.data.prepared import Dataset
from bnnrepro.engine.train import fit
from bnnrepro.nn.layers import quantized_layers

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "config" / "sgdat" / "optimizers.yml"
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
SHAPES = {"cifar10": (3, 32, 10), "cifar100": (3, 32, 100), "tiny-imagenet": (3, 64, 200),
          "mnist": (1, 28, 10), "fashion-mnist": (1, 28, 10)}
SMALL = {"train.epochs": 1, "data.batch_size": 4, "data.eval_batch_size": 8, "data.val_size": 0}


def small_dataset(name: str) -> Dataset:
    channels, size, classes = SHAPES[name]
    gen = torch.Generator().manual_seed(0)

    def split(n):
        images = torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)
        return images, torch.randint(0, classes, (n,), generator=gen)

    (train_x, train_y), (test_x, test_y) = split(4), split(8)
    return Dataset(name=name, num_classes=classes, max_value=255, train_images=train_x, train_labels=train_y,
                   test_images=test_x, test_labels=test_y, sha256="small")


def test_the_grid_covers_every_recipe():
    assert sorted(PARAMS["sgdat"]["recipes"]) == sorted(yaml.safe_load(RECIPES.read_text()))


@pytest.mark.parametrize("dataset", PARAMS["sgdat"]["datasets"])
@pytest.mark.parametrize("recipe", PARAMS["sgdat"]["recipes"])
def test_table2_config_trains_one_step(recipe, dataset, tmp_path):
    torch.set_num_threads(1)
    cfg = load_experiment(ROOT / "config" / "sgdat" / f"binarynet_{dataset}.yml", SMALL, profile="paper",
                          recipe=f"{RECIPES}:{recipe}")
    assert cfg.reported["top1"] > 0 and cfg.reported["top5"] > 0  # the paper's numbers travel with the run
    result = fit(cfg, small_dataset(dataset), torch.device("cpu"), tmp_path / "ckpt.pt", progress=False)
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))
    weights = [layer.weight for layer in quantized_layers(result.model)]
    assert len(weights) == 5 + 2  # conv2-6, fc1, fc2 binary; conv1 and fc3 full precision


@pytest.mark.parametrize("recipe", PARAMS["sgdat"]["recipes"])
def test_comparison_config_trains_one_step(recipe, tmp_path):
    torch.set_num_threads(1)
    cfg = load_experiment(ROOT / "config" / "compare" / "binary_mlp.yml", {**SMALL, "data.dataset": "fashion-mnist"},
                          profile="quick", recipe=f"{RECIPES}:{recipe}")
    assert cfg.reported == {}  # no paper has these rows
    result = fit(cfg, small_dataset("fashion-mnist"), torch.device("cpu"), tmp_path / "ckpt.pt", progress=False)
    assert "flips" in result.history[0]
