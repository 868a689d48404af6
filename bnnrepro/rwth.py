"""Read the official checkpoints of the RWTH "Efficient Binary Neural Networks" code (seed 002).

A run folder holds `params.yml` (the merged settings), `results.pt`, whose `model_best` is a
plain state_dict, and `test_accuracy.txt` (the published test accuracy of those weights); binary layers hold +-1 weights (docs/rwth.md#official-checkpoints). `results.pt` is read with
`weights_only=True`, so no pickled code runs; `params.pt` (a pickled argparse.Namespace) is never read.
The layer names of our LeNet5/VGGNet7 follow the RWTH modules (conv1.., bn1.., fc1..); a
`module.` prefix left by nn.DataParallel is removed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from bnnrepro.config import (MAX_CONFIG_BYTES, ConfigError, DataConfig, ExperimentConfig, OptimConfig, TrainConfig,
                             check_values, parse_yaml)
from bnnrepro.errors import BadFileError, MissingFileError
from bnnrepro.io import torch_load
from bnnrepro.models.common import ModelConfig

# dataset -> (network, normalization) as the RWTH code pairs them (docs/rwth.md#data)
DATASETS = {"mnist": ("lenet5", [0.0], [1.0]), "cifar10": ("vggnet7", [0.5] * 3, [0.5] * 3)}


def is_rwth_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / "results.pt").is_file()


def config_from_params(params: dict[str, Any], name: str, source: str = "RWTH params") -> ExperimentConfig:
    """The config of an RWTH run from its params.yml; any value that does not fit is a BadFileError
    naming `source`."""
    if not isinstance(params, dict):
        raise BadFileError(f"{source}: expected a mapping of settings - not an RWTH params.yml")
    try:
        cfg = _config_from_params(params, name)
        check_values({"data": cfg.data, "model": cfg.model, "optim": cfg.optim, "train": cfg.train}, source)
    except ConfigError as e:
        raise BadFileError(f"{e} - not a params.yml of the RWTH code") from None
    except (TypeError, ValueError) as e:
        raise BadFileError(f"{source}: {e} - not a params.yml of the RWTH code") from None
    return cfg


def _config_from_params(params: dict[str, Any], name: str) -> ExperimentConfig:
    dataset = params.get("dataset")
    if not isinstance(dataset, str) or dataset not in DATASETS:
        raise ValueError(f"dataset '{dataset}' is not one of {sorted(DATASETS)}")
    arch, mean, std = DATASETS[dataset]
    if str(params.get("net", "")).lower() != arch:
        raise ValueError(f"net '{params.get('net')}' does not go with dataset '{dataset}'")
    if params.get("binarize"):
        model = ModelConfig(
            arch=arch, weights="binary", activations="binary", estimator=params.get("gradient_estimator", "bnn"),
            swish_beta=float(params.get("swish_beta", 10)), layer_order=params.get("layer_order", "CPBA"),
            bias=not params.get("no_biases", False), batchnorm=not params.get("no_batchnorm", False),
            width=float(params.get("width_infl" if arch == "lenet5" else "width_scale", 1)),
            first_layer_fp=bool(params.get("first_weights_fullprecision") or params.get("l1_fp")),
            last_layer_fp=bool(params.get("last_weights_fullprecision") or params.get("ln_fp")),
            ternary_weights=str(params.get("tern_weights", "") or ""), ternary_acts=str(params.get("tern_acts", "") or ""),
            sign_rule="round_half_even")  # the RWTH binarizer (see bnnrepro.nn.quantizers)
    else:  # the float networks ignore the binary options (docs/rwth.md#float-networks)
        model = ModelConfig(arch=arch, weights="fp", activations="relu", layer_order="CBAP", bias=True)
    return ExperimentConfig(
        name=name, paper="rwth", description=f"official RWTH checkpoint ({name})",
        data=DataConfig(dataset=dataset, batch_size=int(params.get("batch_size", 50)), mean=mean, std=std),
        model=model, optim=OptimConfig(name=str(params.get("optimizer", "sgd")).lower(), lr=float(params.get("lr", 0.01))),
        train=TrainConfig(epochs=int(params.get("epochs", 0)), seed=int(params.get("seed", 0)),
                          tie_break="first_max"))  # the RWTH code counts correct predictions with output.max(1)


def load_rwth_state_dict(results_path: str | os.PathLike, key: str = "model_best") -> dict[str, torch.Tensor]:
    results = torch_load(results_path)
    if not isinstance(results, dict) or key not in results:
        raise BadFileError(f"{results_path}: no '{key}' entry - not an RWTH results.pt")
    state = results[key]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise BadFileError(f"{results_path}: '{key}' is not a state_dict (names -> tensors) - not an RWTH results.pt")
    return {k.removeprefix("module."): v for k, v in state.items()}


def read_published_accuracy(folder: str | os.PathLike) -> float | None:
    """The test accuracy (%) published beside the weights (`test_accuracy.txt`, one number), or None."""
    path = Path(folder) / "test_accuracy.txt"
    if not path.is_file():
        return None
    try:
        return round(float(path.read_text().strip()), 2)
    except ValueError as e:
        raise ValueError(f"'{path}' should hold one number (the published test accuracy): {e}") from e


def read_params(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / "params.yml"
    if not path.is_file():
        raise MissingFileError(f"{folder}: holds results.pt but no params.yml, so the network is unknown - "
                               "copy the run's params.yml beside it")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise BadFileError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes - not an RWTH params.yml")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadFileError(f"{path}: not UTF-8 text (byte {e.start}) - not an RWTH params.yml") from None
    return parse_yaml(text, str(path))
