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
from safetensors.torch import save as save_safetensors

from bnnrepro.config import ExperimentConfig
from bnnrepro.errors import BadFileError, InputError, MissingFileError, one_line
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


MAX_METADATA_BYTES = 1 << 20  # a metadata.json is a few KB: config, provenance, results
# input sizes a model folder may declare; far beyond every dataset here, small enough that the
# network built from them cannot exhaust memory before its weights are compared with the file
INPUT_LIMITS = {"channels": 64, "image_size": 1024, "num_classes": 100_000}


def read_metadata(path: Path) -> dict[str, Any]:
    """A model folder's metadata.json: JSON of bounded size holding `config` and `input`."""
    size = path.stat().st_size
    if size > MAX_METADATA_BYTES:
        raise BadFileError(f"{path}: {size} bytes, more than a metadata file's limit of {MAX_METADATA_BYTES} - "
                           "export the model again")
    try:
        metadata = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BadFileError(f"{path}: not valid JSON ({e}) - export the model again") from None
    if not isinstance(metadata, dict):
        raise BadFileError(f"{path}: expected a JSON object - export the model again")
    if metadata.get("status") == "skipped":
        raise BadFileError(f"{path}: the run was skipped ({metadata.get('reason')}), so there is no model - "
                           "train it in a profile that runs it")
    for key in ("config", "input"):
        if key not in metadata:
            raise BadFileError(f"{path}: no '{key}' entry - not a bnnrepro model folder's metadata; export the model again")
    dims = metadata["input"]
    if (not isinstance(dims, dict) or set(dims) != set(INPUT_LIMITS)
            or not all(type(dims[k]) is int and 0 < dims[k] <= limit for k, limit in INPUT_LIMITS.items())):
        raise BadFileError(f"{path}: input must hold positive integers {INPUT_LIMITS} (at most), got {dims!r} - "
                           "export the model again")
    return metadata


# safetensors' dtype names (header) -> torch dtypes
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


ENCODED_DTYPES = {"sign_bits": torch.uint8, "ternary_int8": torch.int8}


def _logical_entries(f, weights_path: Path) -> tuple[dict[str, tuple[Any, tuple]], dict[str, Any]]:
    """{name: (dtype, shape)} of the tensors the file holds once decoded, from its header alone, and
    the encodings. A packed tensor must be stored as its encoding says (else the file is damaged);
    it then counts as the float tensor of the shape it encodes."""
    entries = {k: (_DTYPES.get(dtype := f.get_slice(k).get_dtype(), dtype), tuple(f.get_slice(k).get_shape()))
               for k in f.keys()}
    try:
        encodings = json.loads((f.metadata() or {}).get("encodings", "{}"))
    except json.JSONDecodeError as e:
        raise BadFileError(f"{weights_path}: the header's encodings are not JSON ({e}) - export the model again") from None
    if not isinstance(encodings, dict):
        raise BadFileError(f"{weights_path}: the header's encodings are not a mapping - export the model again")
    for key, enc in encodings.items():
        shape = enc.get("shape") if isinstance(enc, dict) else None
        encoding = enc.get("encoding") if isinstance(enc, dict) else None
        valid = (key in entries and encoding in ENCODED_DTYPES and isinstance(shape, list)
                 and all(type(n) is int and n >= 0 for n in shape) and entries[key][0] == ENCODED_DTYPES[encoding])
        if valid:
            numel = torch.Size(shape).numel()
            valid = entries[key][1] == ((-(-numel // 8),) if encoding == "sign_bits" else tuple(shape))
        if not valid:
            raise BadFileError(f"{weights_path}: '{key}' is not stored as its encoding {enc!r} says: the file is "
                               "damaged - export the model again")
        entries[key] = (torch.float32, tuple(shape))
    return entries, encodings


def load_model(model_dir: str | os.PathLike, device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, ExperimentConfig, dict[str, Any]]:
    """Rebuild the network of a saved model folder and load its weights (never unpickles).

    Nothing is read before it is checked: the safetensors header (read lazily by safe_open, which
    also checks that every declared tensor lies inside the file) must declare exactly the names,
    dtypes and shapes of the network built from the metadata's config, so a file cannot make us
    allocate more than the network needs; that network is first built on the meta device (no memory)."""
    model_dir = Path(model_dir)
    meta_path, weights_path = model_dir / "metadata.json", model_dir / "model.safetensors"
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise MissingFileError(f"{model_dir}: not a bnnrepro model folder: '{p.name}' is missing - "
                                   "give a folder written by stages/train.py or stages/export_pretrained.py")
    metadata = read_metadata(meta_path)
    config = ExperimentConfig.from_dict(metadata["config"], str(meta_path))
    dims = metadata["input"]
    try:
        with torch.device("meta"):
            skeleton = build_model(config.model, dims["channels"], dims["num_classes"], dims["image_size"])
    except ValueError as e:
        raise BadFileError(f"{meta_path}: its config and input do not give a network ({e}) - export the model again") from None
    expected = skeleton.state_dict()
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            found, encodings = _logical_entries(f, weights_path)
            _check_fits(type(skeleton).__name__, {k: (v.dtype, tuple(v.shape)) for k, v in expected.items()}, found,
                        str(weights_path))
            state = {k: f.get_tensor(k) for k in expected}
    except (InputError, MemoryError):
        raise
    except Exception as e:  # safetensors reports damage as SafetensorError, OSError or ValueError
        raise BadFileError(f"{weights_path}: cannot be read ({one_line(str(e))}): the file is truncated or "
                           "corrupted - export the model again") from None
    for key, enc in encodings.items():
        if enc["encoding"] == "sign_bits":
            state[key] = unpack_signs(state[key], tuple(enc["shape"]))
        else:
            state[key] = state[key].float()
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise BadFileError(f"{weights_path}: {bad[:5]} hold NaN or infinite values - retrain or export a finite model")
    model = build_model(config.model, dims["channels"], dims["num_classes"], dims["image_size"])
    model.load_state_dict(state)
    return model.to(device).eval(), config, metadata


def _check_fits(model_name: str, expected: dict[str, tuple[torch.dtype, tuple]], found: dict[str, tuple[Any, tuple]],
                source: str) -> None:
    """Refuse weights whose names, shapes or dtypes are not those of the model (the first few of each)."""
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    common = sorted(set(expected) & set(found))
    wrong = [k for k in common if expected[k][1] != found[k][1]]
    dtypes = [k for k in common if expected[k][0] != found[k][0] and k not in wrong]
    if missing or unexpected or wrong or dtypes:
        details = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
                   "shape mismatch " + ", ".join(f"{k}: file {found[k][1]} vs model {expected[k][1]}" for k in wrong[:5])
                   if wrong else "",
                   "dtype mismatch " + ", ".join(f"{k}: file {found[k][0]} vs model {expected[k][0]}" for k in dtypes[:5])
                   if dtypes else ""]
        raise BadFileError(f"{source}: does not fit the {model_name} built from its config: "
                           + "; ".join(d for d in details if d) + " - use the weights saved with this config")


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with an explanation when the checkpoint belongs to another architecture."""
    expected = {k: (None, tuple(v.shape)) for k, v in model.state_dict().items()}  # dtypes are cast on loading
    _check_fits(type(model).__name__, expected, {k: (None, tuple(v.shape)) for k, v in state.items()}, source)
    model.load_state_dict(state)
