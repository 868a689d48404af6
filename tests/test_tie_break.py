"""How accuracy ranks exactly tied logits (train.tie_break), on hand-made logits.

Binary networks produce exactly tied logits often (integer dot products through a BatchNorm), so the rule
changes counted accuracy. first_max ranks ties by class index, lowest first: its top-1 is torch.max(1)'s
index, which the RWTH code counts correct predictions with (`output.max(1)`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bnnrepro.config import ConfigError, load_experiment
from bnnrepro.data.batches import BatchLoader
from bnnrepro.data.prepared import Dataset
from bnnrepro.engine.train import evaluate, top_classes
from bnnrepro.infer import evaluate_on_test

RWTH = Path(__file__).resolve().parents[1] / "config" / "rwth"

# five samples, ten classes
TIED = torch.zeros(5, 10)
TIED[1, [1, 2]] = 5.0          # classes 1 and 2 tie for the maximum
TIED[2, [7, 3]] = 2.0          # classes 3 and 7 tie; the other eight tie at 0
TIED[3] = torch.arange(10.0)   # no ties
LABELS = torch.tensor([0, 2, 7, 9, 5])
# first_max, best first (hand-ranked): ties by class index
FIRST_MAX_TOP5 = [[0, 1, 2, 3, 4], [1, 2, 0, 3, 4], [3, 7, 0, 1, 2], [9, 8, 7, 6, 5], [0, 1, 2, 3, 4]]


class FixedLogits(nn.Module):
    """Ignores its input: the logits of the i-th image are LOGITS[i] (one batch holds every image)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[:x.shape[0]]


def test_first_max_ranks_ties_by_class_index():
    assert top_classes(TIED, 5, "first_max").tolist() == FIRST_MAX_TOP5


def test_first_max_top1_is_torch_max_on_heavily_tied_logits():
    logits = torch.randint(0, 3, (2000, 10), generator=torch.Generator().manual_seed(0)).float()
    top = top_classes(logits, 5, "first_max")
    assert torch.equal(top[:, 0], logits.max(1).indices)
    assert torch.equal(top[:, 0], logits.argmax(1))
    ranked = logits.gather(1, top)  # scores never increase along a row
    assert (ranked[:, :-1] >= ranked[:, 1:]).all()


def test_the_rules_agree_without_ties():
    logits = torch.randn(500, 10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(top_classes(logits, 5, "first_max"), top_classes(logits, 5, "topk"))


def test_unknown_tie_break_is_an_error():
    with pytest.raises(ValueError, match="Unknown tie break"):
        top_classes(TIED, 5, "last_max")
    with pytest.raises(ConfigError, match="train.tie_break"):
        load_experiment(RWTH / "binary_mnist.yml", {"train.tie_break": "last_max"})


def images(n: int) -> torch.Tensor:
    return torch.zeros(n, 1, 28, 28, dtype=torch.uint8)


def test_evaluate_counts_ties_as_first_max():
    """top-1: samples 0 (class 0 first among ten ties) and 3; top-5: all but sample 4 (label 5 ranks 6th)."""
    loader = BatchLoader(images(5), LABELS, 5, max_value=255)
    result = evaluate(FixedLogits(TIED), loader, "first_max")
    assert result == {"top1": 40.0, "top5": 80.0, "n": 5}


def test_infer_takes_the_tie_break_from_the_saved_config():
    """evaluate_on_test (used by bnnrepro.infer and the export stage) follows cfg.train.tie_break: with every
    logit tied, first_max predicts class 0 for every image."""
    labels = torch.tensor([0, 0, 3, 0, 9, 1, 0, 2])
    data = Dataset(name="mnist", num_classes=10, max_value=255, train_images=images(8), train_labels=labels,
                   test_images=images(8), test_labels=labels, sha256="x")
    cfg = load_experiment(RWTH / "binary_mnist.yml")
    assert cfg.train.tie_break == "first_max"
    result = evaluate_on_test(FixedLogits(torch.zeros(8, 10)), cfg, data, torch.device("cpu"))
    assert result["top1"] == 50.0 and result["top5"] == 87.5  # four labels 0; seven labels in classes 0-4


@pytest.mark.parametrize("name", ["binary_mnist", "binary_cifar10", "float_mnist", "float_cifar10"])
def test_rwth_configs_count_ties_as_the_published_code(name):
    assert load_experiment(RWTH / f"{name}.yml").train.tie_break == "first_max"
