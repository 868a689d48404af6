"""The learning-rate schedule of an optimizer regime (bnnrepro.optim.lr_at_epoch): milestones, per-epoch
exponential decay, cosine annealing and batch-size scaling, each against the hand-computed value or torch's own
scheduler."""

from __future__ import annotations

import math

import pytest
import torch

from bnnrepro.config import OptimConfig
from bnnrepro.optim import lr_at_epoch


def test_lr_at_epoch_milestones():
    cfg = OptimConfig(name="sgd", lr=0.1, lr_milestones=[15, 25], lr_decay=[0.1, 0.1])
    assert lr_at_epoch(cfg, 1) == 0.1
    assert lr_at_epoch(cfg, 14) == 0.1
    assert lr_at_epoch(cfg, 15) == pytest.approx(0.01)
    assert lr_at_epoch(cfg, 24) == pytest.approx(0.01)
    assert lr_at_epoch(cfg, 25) == pytest.approx(0.001)
    assert lr_at_epoch(cfg, 500) == pytest.approx(0.001)
    assert lr_at_epoch(OptimConfig(name="sgd", lr=0.01), 400) == 0.01  # no milestones: constant


def test_exponential_lr_decay_per_epoch():
    cfg = OptimConfig(name="adam", lr=1e-3, lr_exp_decay=0.98391)
    assert lr_at_epoch(cfg, 1) == 1e-3
    assert lr_at_epoch(cfg, 2) == pytest.approx(1e-3 * 0.98391)
    assert lr_at_epoch(cfg, 500) == pytest.approx(3.05e-7, rel=0.01)  # the paper's 1e-3 -> 3e-7 over 500 epochs
    both = OptimConfig(name="sgd", lr=0.1, lr_milestones=[3], lr_decay=[0.1], lr_exp_decay=0.5)
    assert [lr_at_epoch(both, e) for e in (1, 2, 3)] == pytest.approx([0.1, 0.05, 0.1 * 0.1 * 0.25])
    old = OptimConfig(name="sgd", lr=0.01, lr_milestones=[15, 25], lr_decay=[0.1, 0.1])
    for epoch in range(1, 40):  # the default is exactly the milestone schedule of before
        assert lr_at_epoch(old, epoch) == old.lr * math.prod(d for m, d in zip([15, 25], [0.1, 0.1]) if epoch >= m)


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")
def test_lr_schedule_factors():
    cosine = OptimConfig(name="adam", lr=1e-3, lr_cosine_epochs=4)
    # torch's CosineAnnealingLR(T_max=4) stepped at the start of every epoch: epoch e uses step e
    scheduler_lrs = []
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    for _ in range(4):
        sched.step()
        scheduler_lrs.append(opt.param_groups[0]["lr"])
    assert [lr_at_epoch(cosine, e) for e in (1, 2, 3, 4)] == pytest.approx(scheduler_lrs)
    assert lr_at_epoch(cosine, 9) == 0.0  # stays at the end
    scaled = OptimConfig(name="sgd", lr=0.1, lr_batch_reference=96)
    assert lr_at_epoch(scaled, 1, batch_size=384) == pytest.approx(0.2)  # sqrt(384 / 96) = 2
    with pytest.raises(ValueError, match="batch size"):
        lr_at_epoch(scaled, 1)
