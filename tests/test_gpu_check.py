"""python -m bnnrepro.gpu_check on the CPU: which recipes it checks, the twice-run comparison (identical, and a
deliberately non-deterministic run reported as a mismatch), the JSON it writes, the data and checkpoints it uses.
Training runs take synthetic CIFAR of 8 images, batches of 4 and one step per epoch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

import bnnrepro.engine.train as train_mod
from bnnrepro import gpu_check
from bnnrepro.config import load_experiment
from bnnrepro.data.prepared import write_prepared
from bnnrepro.errors import run_cli

REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
TINY = ["--device", "cpu", "--synthetic", "--synthetic-images", "8", "--max-steps", "1",
        "-o", "data.batch_size=4", "-o", "data.eval_batch_size=8", "--no-progress", "--root", str(REPO_ROOT)]


@pytest.fixture(autouse=True)
def _restore_determinism(monkeypatch):
    """main() switches deterministic kernels on and sets CUBLAS_WORKSPACE_CONFIG: give both back afterwards."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "unset-by-the-test")  # recorded, so the undo restores the original
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def run_check(tmp_path, *recipes: str) -> tuple[int, dict]:
    out = tmp_path / "gpu_check.json"
    code = gpu_check.main([*TINY, "--recipes", *recipes, "--out", str(out)])
    return code, json.loads(out.read_text())


def by_name(recipes) -> dict:
    return {r["name"] if isinstance(r, dict) else r.name: r for r in recipes}


# ------------------------------------------------------------------------------- which recipes

def test_gpu_recipes_are_the_stages_the_quick_profile_skips():
    every = by_name(gpu_check.gpu_recipes(REPO_ROOT))
    sgdat, finetune = PARAMS["sgdat"], PARAMS["binsfo_finetune"]
    grid_cells = len(sgdat["recipes"]) * len(sgdat["datasets"]) + math.prod(len(v) for v in finetune.values())
    assert {"train@rwth_float_cifar10", "train@rwth_binary_cifar10", "train@hd_bnn_vgg7_cifar10"} < set(every)
    assert len(every) == 3 + grid_cells  # no MNIST run, no cell of the CPU grids (compare, bws_digits, binsfo)
    assert not any(name.startswith(("compare@", "bws_digits@", "binsfo@")) or "mnist" in name for name in every)
    cell = every["sgdat@bop-cifar100"]
    assert cell.cells == len(sgdat["recipes"]) and cell.recipe.endswith("optimizers.yml:bop")
    assert cell.config.name == "binarynet_cifar100.yml" and cell.data == REPO_ROOT / "data/prepared/cifar100"
    tuned = every["binsfo_finetune@adam-oxford-pets-bcdnet"]
    assert tuned.overrides == {"data.dataset": "oxford-pets"} and tuned.pretrained_dir.name == "bcdnet"
    assert tuned.cells == len(finetune["recipes"])


def test_default_selection_is_one_cell_per_config_and_dataset():
    every = gpu_check.gpu_recipes(REPO_ROOT)
    chosen = gpu_check.select(every, None, all_cells=False)
    groups = PARAMS["sgdat"]["datasets"], PARAMS["binsfo_finetune"]["datasets"], PARAMS["binsfo_finetune"]["models"]
    assert len(chosen) == 3 + len(groups[0]) + len(groups[1]) * len(groups[2])
    assert f"sgdat@{PARAMS['sgdat']['recipes'][0]}-cifar10" in by_name(chosen)
    assert gpu_check.select(every, None, all_cells=True) == every
    assert list(by_name(gpu_check.select(every, ["sgdat@*-tiny-imagenet"], False))) == [
        f"sgdat@{r}-tiny-imagenet" for r in PARAMS["sgdat"]["recipes"]]


def test_unknown_recipe_is_one_clear_error(capsys):
    assert run_cli(gpu_check.main, [*TINY, "--recipes", "sgdat@nope-cifar10"]) == 2
    assert "sgdat@nope-cifar10: matches no GPU recipe" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [
    ("needs CIFAR-10 and a GPU: about 2-6 GPU hours (estimate from FLOPs)", {"low": 2, "high": 6, "per": "run"}),
    ("needs CIFAR and a GPU: about 1-3 GPU hours per recipe (estimate)", {"low": 1, "high": 3, "per": "recipe"}),
    ("a GPU: about\n    1-6 GPU hours per recipe and dataset (estimate)",
     {"low": 1, "high": 6, "per": "recipe and dataset"}),
    ("needs a GPU", None),
])
def test_estimates_are_read_from_the_skip_reason(text, expected):
    assert gpu_check.parse_estimate(text) == expected
    if expected:
        assert [gpu_check.versus(h, expected) for h in (0.5, 2, 7)] == ["below", "within", "above"]


# --------------------------------------------------------------------------------- the twice-run check

def test_two_recipes_train_twice_identically_and_the_json_says_so(tmp_path, capsys):
    code, out = run_check(tmp_path, "train@rwth_binary_cifar10", "sgdat@bop-cifar10")
    assert code == 0 and out["all_identical"] is True
    assert out["determinism"] == {"CUBLAS_WORKSPACE_CONFIG": ":4096:8", "deterministic_algorithms": True,
                                  "cudnn_deterministic": True, "cudnn_benchmark": False, "set_before_cuda_init": True}
    assert out["settings"]["max_steps"] == 1 and out["device"]["device"].startswith("cpu")
    results = by_name(out["recipes"])
    assert set(results) == {"train@rwth_binary_cifar10", "sgdat@bop-cifar10"}
    for name, r in results.items():
        assert r["identical"] is True and r["differences"] == []
        assert r["data"]["source"] == "synthetic" and r["images_per_epoch"] == 4 and r["extrapolated"] is True
        assert len(r["epoch_seconds"]) == 2 and all(s > 0 for s in r["epoch_seconds"])
        assert r["seconds_per_epoch"] == pytest.approx(
            r["epoch_seconds"][1] * r["paper_images_per_epoch"] / r["images_per_epoch"], rel=1e-3)
        assert r["projected_gpu_hours"] == pytest.approx(r["seconds_per_epoch"] * r["paper_epochs"] / 3600, rel=1e-3)
        assert r["projected_gpu_hours_cells"] == pytest.approx(r["projected_gpu_hours"] * r["cells"], rel=1e-3)
        assert r["peak_gpu_memory_mib"] is None  # n/a on the CPU
        assert r["estimate"]["text"].startswith("needs CIFAR") and r["estimate"]["low"] < r["estimate"]["high"]
        assert r["versus_estimate"] in ("below", "within", "above")
        assert {"train_loss", "val_top1", "test_top1"} <= set(r["metrics"])
    paper = load_experiment(REPO_ROOT / "config/rwth/binary_cifar10.yml", profile="paper")
    rwth = results["train@rwth_binary_cifar10"]
    assert rwth["paper_epochs"] == paper.train.epochs
    assert rwth["paper_images_per_epoch"] == 50_000 - paper.data.val_size and rwth["data"]["val"] >= 1
    assert results["sgdat@bop-cifar10"]["cells"] == len(PARAMS["sgdat"]["recipes"])
    printed = capsys.readouterr().out
    assert "train@rwth_binary_cifar10" in printed and "sgdat@bop-cifar10" in printed and "MISMATCH" not in printed
    assert "n/a (cpu)" in printed


def test_a_non_deterministic_run_is_reported_as_a_mismatch(tmp_path, capsys, monkeypatch):
    seeds = iter(range(100))
    real = train_mod.seed_everything
    monkeypatch.setattr(train_mod, "seed_everything", lambda seed: real(seed + next(seeds)))  # each run its own init
    code, out = run_check(tmp_path, "sgdat@bop-cifar10")
    assert code == 1 and out["all_identical"] is False
    (r,) = out["recipes"]
    assert r["identical"] is False
    assert any(line.startswith("weights: ") and "entries differ" in line for line in r["differences"])
    assert "MISMATCH sgdat@bop-cifar10: weights:" in capsys.readouterr().out


# ---------------------------------------------------------------------------- data and checkpoints

def plan_for(name: str, root, argv=()) -> gpu_check.Plan:
    recipe = by_name(gpu_check.gpu_recipes(root))[name]
    return gpu_check.plan(recipe, gpu_check.parse_args(["--root", str(root), *argv]))


def test_fine_tuning_without_the_official_checkpoint_starts_from_random_init():
    p = plan_for("binsfo_finetune@binary-cifar10-adambnn", REPO_ROOT, ["--synthetic", "--synthetic-images", "8"])
    assert p.cfg.model.arch == "reactnet_a" and p.cfg.model.pretrained == ""
    assert any(note.startswith("random init: the official adambnn checkpoint") for note in p.notes)
    assert p.paper_epochs == 100 and p.cfg.train.epochs == 1


def test_a_prepared_dataset_is_used_when_present_else_synthetic_of_the_official_size(tmp_path):
    for item in ("params.yaml", "dvc.yaml", "grids", "config"):  # the repository, with a data/ folder of its own
        (tmp_path / item).symlink_to(REPO_ROOT / item)
    (tmp_path / ".dvc").mkdir()  # a DVC project of its own, outside git
    (tmp_path / ".dvc/config").write_text("[core]\n    no_scm = true\n")
    synthetic = plan_for("train@rwth_float_cifar10", tmp_path)
    assert synthetic.data["source"] == "synthetic" and len(synthetic.dataset.train_labels) == 50_000
    assert synthetic.dataset.image_shape == (3, 32, 32) and len(synthetic.dataset.test_labels) == 10_000
    assert synthetic.images_per_epoch == synthetic.paper_images_per_epoch == 50_000 - synthetic.cfg.data.val_size

    gen = torch.Generator().manual_seed(0)
    images = lambda n: torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)  # noqa: E731
    labels = lambda n: torch.randint(0, 10, (n,), generator=gen)  # noqa: E731
    write_prepared("cifar10", {"train_images": images(6000), "train_labels": labels(6000), "test_images": images(10),
                               "test_labels": labels(10)}, tmp_path / "data/prepared/cifar10")
    prepared = plan_for("train@rwth_float_cifar10", tmp_path, ["--max-steps", "3"])
    assert prepared.data["source"] == "prepared" and prepared.data["train"] == 6000 - 5000
    assert prepared.paper_images_per_epoch == 1000 and prepared.images_per_epoch == 3 * prepared.cfg.data.batch_size
    forced = plan_for("train@rwth_float_cifar10", tmp_path, ["--synthetic", "--synthetic-images", "500"])
    assert forced.data["source"] == "synthetic" and forced.cfg.data.val_size == 50  # 5000 of 50,000, scaled


def test_fingerprints_tell_tensors_apart_by_their_bytes():
    a = {"w": torch.tensor([0.0, 1.0]), "state": {"step": 3, "m": [torch.zeros(2, 2)]}}
    b = {"w": torch.tensor([-0.0, 1.0]), "state": {"step": 3, "m": [torch.zeros(2, 2)]}}  # -0.0 == 0.0, other bytes
    fa, fb = gpu_check.fingerprint(a), gpu_check.fingerprint(b)
    assert fa.keys() == {"/w", "/state/step", "/state/m/0"}
    assert [k for k in fa if fa[k] != fb[k]] == ["/w"]


def test_a_root_that_is_not_a_dvc_project_is_one_clear_error(tmp_path, capsys):
    assert run_cli(gpu_check.main, ["--root", str(tmp_path), "--list"]) == 2
    assert "DVC cannot read the pipeline" in capsys.readouterr().err
