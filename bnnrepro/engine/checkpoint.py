"""Resumable training state: one versioned dict, written atomically after every epoch.

A checkpoint belongs to one config digest; a checkpoint of another config (or another schema) is
refused with an explanation instead of being half-loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bnnrepro.errors import BadFileError
from bnnrepro.io import torch_load, torch_save

SCHEMA_VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    torch_save({"schema_version": SCHEMA_VERSION, **state}, path)


def load_checkpoint(path: str | os.PathLike, digest: str) -> dict[str, Any] | None:
    """The state saved at `path` for the config `digest`, or None when there is none yet."""
    path = Path(path)
    if not path.exists():
        return None
    state = torch_load(path)
    if not isinstance(state, dict) or state.get("schema_version") != SCHEMA_VERSION:
        raise BadFileError(f"{path}: not a bnnrepro checkpoint of schema {SCHEMA_VERSION} - "
                           "delete it to train from scratch")
    if state.get("digest") != digest:
        raise BadFileError(f"{path}: written for another config (digest {state.get('digest')}, "
                           f"this run is {digest}) - delete it to train from scratch")
    return state
