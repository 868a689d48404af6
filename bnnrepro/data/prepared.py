"""The prepared form of a dataset: one safetensors file of uint8 images and int64 labels.

Written once by the `data@<name>` stage, it loads in a fraction of a second (MNIST: 55 MB) and
training batches are then drawn from these in-memory tensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from bnnrepro.data import DATA_FILE, SKIP_FILE  # noqa: F401  (re-exported)
from bnnrepro.data.download import Resource, fetch, mirror_from_env
from bnnrepro.data.sources import get_source
from bnnrepro.errors import BadFileError, MissingFileError
from bnnrepro.io import atomic_write, file_digest
from bnnrepro.plain_yaml import ConfigError

SPLIT_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class Dataset:
    name: str
    num_classes: int
    max_value: int
    train_images: torch.Tensor  # uint8, N x C x H x W
    train_labels: torch.Tensor  # int64, N
    test_images: torch.Tensor
    test_labels: torch.Tensor
    sha256: str  # of the prepared file, recorded next to every result trained on it

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])


META_KEY = "bnnrepro"


def prepare_dataset(name: str, out_dir: str | os.PathLike, raw_dir: str | os.PathLike,
                    mirror: str | None = None, md5: dict[str, str] | None = None, md5_source: str = "md5") -> Path:
    """Fetch (verified) and parse the raw files of `name`, then write `out_dir/data.safetensors` atomically.

    `md5` (file name -> MD5) declares other checksums for some raw files than the official ones: stand-in
    files in the official format (the pipeline's dry run) are verified against those. `md5_source` names
    where they were declared (e.g. "params.yaml: datasets.mnist.md5"); the prepared file records it beside every
    MD5 that was checked."""
    source = get_source(name)
    raw_dir = Path(raw_dir)
    mirror = mirror if mirror is not None else mirror_from_env()
    resources = with_md5(source.resources, md5 or {}, md5_source)
    for resource in resources:
        fetch(resource, name, raw_dir, mirror)
    checksums = {r.filename: r.md5 for r in resources}
    return write_prepared(name, source.parse(raw_dir), out_dir, checksums, md5_source if md5 else None)


def with_md5(resources: tuple[Resource, ...], md5: dict[str, str], where: str) -> tuple[Resource, ...]:
    """`resources` with the MD5s that `md5` declares in place of the official ones; every name in `md5`
    must be one of the files and every value an MD5 (32 hex digits), so a typo cannot go unnoticed."""
    names = [r.filename for r in resources]
    for filename, value in md5.items():
        if filename not in names:
            raise ConfigError(f"{where}: '{filename}' is not a raw file of this dataset - use one of {names}")
        if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{32}", value):
            raise ConfigError(f"{where}.{filename}: {value!r} is not an MD5 - give 32 lowercase hex digits")
    return tuple(dataclasses.replace(r, md5=md5.get(r.filename, r.md5)) for r in resources)


def write_prepared(name: str, tensors: dict[str, torch.Tensor], out_dir: str | os.PathLike,
                   raw_md5: dict[str, str] | None = None, md5_source: str | None = None) -> Path:
    """Write parsed split tensors as `out_dir/data.safetensors` (atomically). `md5_source`: where the MD5s
    of stand-in raw files were declared; None (the official MD5s) adds no key, so that an official dataset
    prepares to the bytes it always has (shipped models record their SHA-256)."""
    source = get_source(name)
    _check_tensors(name, tensors)
    info = {"name": name, "num_classes": source.num_classes, "max_value": source.max_value, "raw_md5": raw_md5 or {}}
    if md5_source is not None:
        info["md5_source"] = md5_source
    # one metadata key holding sorted JSON: safetensors writes several keys in a random order,
    # which would change the file's bytes (and DVC's hash) from run to run
    blob = save({k: tensors[k].contiguous() for k in SPLIT_KEYS}, metadata={META_KEY: json.dumps(info, sort_keys=True)})
    out_file = Path(out_dir) / DATA_FILE
    with atomic_write(out_file) as f:
        f.write(blob)
    return out_file


def _check_tensors(name: str, tensors: dict[str, torch.Tensor]) -> None:
    for split in ("train", "test"):
        images, labels = tensors[f"{split}_images"], tensors[f"{split}_labels"]
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"{name}/{split}: images must be uint8 N x C x H x W, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{name}/{split}: {len(images)} images but {len(labels)} labels")


def load_dataset(folder: str | os.PathLike) -> Dataset:
    """Load a prepared dataset folder (written by `prepare_dataset`)."""
    folder = Path(folder)
    path = folder / DATA_FILE
    if (folder / SKIP_FILE).is_file():
        reason = json.loads((folder / SKIP_FILE).read_text())["reason"]
        raise MissingFileError(f"{folder}: dataset '{folder.name}' was not prepared: {reason}")
    if not path.is_file():
        raise MissingFileError(f"{path}: prepared dataset not found - build it with `dvc repro data@{folder.name}` "
                               f"or `python stages/prepare_data.py {folder.name}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()[META_KEY])
        tensors = load_file(str(path))
    except Exception as e:  # safetensors reports damage as SafetensorError, a missing key as KeyError/TypeError
        raise BadFileError(f"{path}: cannot read the prepared dataset ({e}) - delete it and rebuild it with "
                           f"`dvc repro data@{folder.name}`") from e
    return Dataset(name=meta["name"], num_classes=meta["num_classes"], max_value=meta["max_value"],
                   sha256=file_digest(path, "sha256"), **{k: tensors[k] for k in SPLIT_KEYS})
