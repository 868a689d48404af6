"""Data-parallel training through torchrun: two CPU processes (gloo) train the same config with the
shared training loop and end with identical weights on both ranks."""

from __future__ import annotations

import pytest

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

pytestmark = pytest.mark.slow  # real processes: seconds each

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from bnnrepro.config import load_experiment
    from bnnrepro.data.prepared import prepare_dataset, load_dataset
    from bnnrepro.engine.distributed import init_from_env
    from bnnrepro.engine.train import fit

    root, out, optimizer = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(1)
    ranks, device = init_from_env(torch.device("cpu"))
    if ranks.is_main:
        prepare_dataset("digits", out / "digits", out / "raw")
    ranks.barrier()
    overrides = {"train.epochs": 2, "model.hidden": 64, "data.batch_size": 64}
    if optimizer == "sgd":
        overrides.update({"optim.name": "sgd", "optim.lr": 0.01, "optim.args": {}, "train.pack_weights": False})
    if optimizer == "flip_published":  # BinSFO's order and per-step batch factor: 1296 images = 20 x 64 + 16
        overrides.update({"data.order": "fixed", "optim.lr_batch_reference": 96, "optim.lr_batch_per_step": True})
    cfg = load_experiment(root / "config" / "bws" / "digits_binary.yml", overrides, profile="quick")
    result = fit(cfg, load_dataset(out / "digits"), device, out / f"ckpt{ranks.rank}.pt", progress=False, ranks=ranks)
    torch.save(result.model.state_dict(), out / f"rank{ranks.rank}.pt")
""")


def run_two_ranks(tmp_path: Path, optimizer: str) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
                    str(ROOT), str(tmp_path), optimizer], check=True, cwd=ROOT, timeout=300,
                   env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_two_ranks_hold_identical_weights_flip(tmp_path):
    rank0, rank1 = run_two_ranks(tmp_path, "flip")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name


def test_two_ranks_hold_identical_weights_latent_sgd(tmp_path):
    rank0, rank1 = run_two_ranks(tmp_path, "sgd")
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name


def test_two_ranks_hold_identical_weights_with_published_order_and_batch_factor(tmp_path):
    rank0, rank1 = run_two_ranks(tmp_path, "flip_published")
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
