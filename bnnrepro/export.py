"""Saved models: a folder with `model.safetensors` and `metadata.json` (config and provenance).

Two weight formats:
- "latent": every tensor as trained (latent fp32 weights of binary layers included), for analysis
  and fine-tuning; written by the training stage.
- "packed": binary weights as their signs, 8 per byte; ternary weights as int8 in {-1, 0, 1};
  everything else as trained. This is the real 1-bit checkpoint, and loading it restores a
  network with identical outputs (sign(sign(w)) = sign(w)).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from bnnrepro.config import OPTIONAL_SECTIONS, SECTIONS, ExperimentConfig, _build
from bnnrepro.io import atomic_write, write_json
from bnnrepro.models import build_model
from bnnrepro.nn.layers import quantized_layers
from bnnrepro.nn.packing import pack_signs, unpack_signs
from bnnrepro.nn.quantizers import TERNARY_WEIGHT_K, sign, ternarize

FORMATS = ("latent", "packed")


def _packed_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    encodings = {}
    quantized = set(map(id, quantized_layers(model)))
    for name, module in model.named_modules():
        if id(module) in quantized:
            key = f"{name}.weight"
            w = state[key]
            if module.precision == "binary":
                # the signs the forward uses: under round_half_even a latent 0 is -1, not pack_signs' +1
                signs = sign(w, module.sign_rule)
                state[key], encodings[key] = pack_signs(signs), {"encoding": "sign_bits", "shape": list(w.shape)}
            else:
                state[key] = ternarize(w, TERNARY_WEIGHT_K).to(torch.int8)
                encodings[key] = {"encoding": "ternary_int8", "shape": list(w.shape)}
    return state, encodings


def save_model(model: nn.Module, out_dir: str | os.PathLike, config: ExperimentConfig, input_spec: dict[str, int],
               fmt: str = "latent", metadata: dict[str, Any] | None = None) -> Path:
    """input_spec: {"channels", "image_size", "num_classes"} of the data the model was built for."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown model format '{fmt}'. Valid: {FORMATS}")
    out_dir = Path(out_dir)
    if fmt == "packed":
        state, encodings = _packed_state(model)
    else:
        state, encodings = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, {}
    # a single metadata key: safetensors writes several in a random order (non-reproducible bytes)
    blob = save_safetensors(state, metadata={"encodings": json.dumps(encodings, sort_keys=True)})
    with atomic_write(out_dir / "model.safetensors") as f:
        f.write(blob)
    write_json(out_dir / "metadata.json",
               {"format": fmt, "input": input_spec, "config": config.to_dict(), **(metadata or {})})
    return out_dir


def config_from_dict(d: dict[str, Any]) -> ExperimentConfig:
    sections = {name: _build(cls, d[name], f"metadata.json: {name}") for name, cls in SECTIONS.items()}
    sections.update({name: _build(cls, d[name], f"metadata.json: {name}")
                     for name, cls in OPTIONAL_SECTIONS.items() if d.get(name) is not None})
    top = {k: d[k] for k in ("name", "paper", "description", "reported", "profiles", "recipe") if k in d}
    return _build(ExperimentConfig, {**top, **sections}, "metadata.json")


def load_model(model_dir: str | os.PathLike, device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, ExperimentConfig, dict[str, Any]]:
    """Rebuild the network of a saved model folder and load its weights (never unpickles)."""
    model_dir = Path(model_dir)
    meta_path, weights_path = model_dir / "metadata.json", model_dir / "model.safetensors"
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"'{model_dir}' is not a bnnrepro model folder: '{p.name}' is missing")
    metadata = json.loads(meta_path.read_text())
    config = config_from_dict(metadata["config"])
    try:
        state = load_safetensors(weights_path.read_bytes())
        with safe_open(str(weights_path), framework="pt") as f:
            encodings = json.loads(f.metadata().get("encodings", "{}"))
    except Exception as e:
        raise RuntimeError(f"Cannot read '{weights_path}': {e}. The file is truncated or corrupted.") from e
    for key, enc in encodings.items():
        if enc["encoding"] == "sign_bits":
            state[key] = unpack_signs(state[key], tuple(enc["shape"]))
        else:
            state[key] = state[key].float()
    dims = metadata["input"]
    model = build_model(config.model, dims["channels"], dims["num_classes"], dims["image_size"])
    load_state_dict_checked(model, state, str(weights_path))
    return model.to(device).eval(), config, metadata


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with an explanation when the checkpoint belongs to another architecture."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
                   "shape mismatch " + ", ".join(f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                                                 for k in wrong[:5]) if wrong else ""]
        raise RuntimeError(f"'{source}' does not fit the {type(model).__name__} built from its config: "
                           + "; ".join(d for d in details if d))
    model.load_state_dict(state)
