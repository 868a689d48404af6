"""Every loader of the project refuses a crafted pickle that would run code, and its payload never runs."""

import os
import pickle

import pytest
import torch

from bnnrepro.data.prepared import load_dataset
from bnnrepro.engine.checkpoint import load_checkpoint
from bnnrepro.config import load_experiment
from bnnrepro.export import load_model, save_model
from bnnrepro.models import build_model
from bnnrepro.models.pretrained import read_official_state_dict
from bnnrepro.rwth import load_rwth_state_dict


class Payload:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_bomb(path, marker, as_torch: bool):
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"model_best": Payload(marker), "schema_version": Payload(marker)}
    if as_torch:
        torch.save(obj, path)  # the zip container torch.load reads
    else:
        path.write_bytes(pickle.dumps(obj))


@pytest.mark.parametrize("as_torch", [True, False], ids=["torch-zip", "raw-pickle"])
def test_every_loader_refuses_pickled_code(tmp_path, repo_root, as_torch):
    marker = tmp_path / "pwned"
    loaders = {
        "checkpoint": (tmp_path / "ckpt.pt", lambda p: load_checkpoint(p, "digest")),
        "rwth results.pt": (tmp_path / "rwth" / "results.pt", load_rwth_state_dict),
        "model folder": (tmp_path / "model" / "model.safetensors", lambda p: load_model(p.parent)),
        "prepared dataset": (tmp_path / "prepared" / "mnist" / "data.safetensors", lambda p: load_dataset(p.parent)),
        "official AdamBNN checkpoint": (tmp_path / "AdamBNN.mobilenet.pth.tar",
                                        lambda p: read_official_state_dict(p, "state_dict")),
    }
    cfg = load_experiment(repo_root / "config" / "rwth" / "binary_mnist.yml")
    save_model(build_model(cfg.model, 1, 10, 28), tmp_path / "model", cfg,
               {"channels": 1, "image_size": 28, "num_classes": 10})  # a valid folder whose weights get replaced
    for name, (path, load) in loaders.items():
        write_bomb(path, marker, as_torch)
        with pytest.raises(RuntimeError):
            load(path)
        assert not marker.exists(), f"the {name} loader ran pickled code"
