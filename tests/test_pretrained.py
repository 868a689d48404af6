"""The shipped models in pretrained/: loadable, provenance recorded, and the recorded accuracy is
what evaluating them on their dataset's test set gives (no number is typed by hand)."""

import io
from pathlib import Path

import pytest
import torch

from bnnrepro.data.prepared import load_dataset, prepare_dataset
from bnnrepro.export import load_model
from bnnrepro.infer import evaluate_on_test

PRETRAINED = sorted(p for p in (Path(__file__).resolve().parents[1] / "pretrained").iterdir() if p.is_dir())
PROVENANCE = ("budget", "profile", "seed", "epochs_trained", "export_commit", "data_sha256", "training_command",
              "test_top1", "config", "training_commit")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """name -> the prepared dataset, made once per module (MNIST from the mirror, Digit from scikit-learn)."""
    from conftest import MIRROR

    made = {}

    def get(name: str):
        if name not in made:
            if name != "digits" and MIRROR is None:
                pytest.skip("no dataset mirror")
            root = tmp_path_factory.mktemp(name)
            prepare_dataset(name, root / "prepared", root / "raw", mirror=str(MIRROR) if MIRROR else None)
            made[name] = load_dataset(root / "prepared")
        return made[name]

    return get


@pytest.mark.parametrize("folder", PRETRAINED, ids=lambda p: p.name)
def test_shipped_model_matches_its_metadata(folder, prepared):
    torch.set_num_threads(2)
    model, cfg, meta = load_model(folder)
    assert all(key in meta for key in PROVENANCE)
    dataset = prepared(cfg.data.dataset)
    assert meta["data_sha256"] == dataset.sha256  # trained and evaluated on these exact bytes
    result = evaluate_on_test(model, cfg, dataset, torch.device("cpu"))
    assert result["n"] == meta["test_n"] == len(dataset.test_labels)
    assert round(result["top1"], 2) == meta["test_top1"]


@pytest.mark.parametrize("folder", PRETRAINED, ids=lambda p: p.name)
def test_shipped_binary_model_is_packed(folder):
    model, cfg, meta = load_model(folder)
    if cfg.model.weights != "binary":
        pytest.skip("a float model")
    assert meta["format"] == "packed"
    fp32 = io.BytesIO()
    torch.save(model.state_dict(), fp32)
    assert (folder / "model.safetensors").stat().st_size * 20 <= len(fp32.getvalue())
