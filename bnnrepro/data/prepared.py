"""The prepared form of a dataset: one safetensors file of uint8 images and int64 labels.

Written once by the `data@<name>` stage, it loads in a fraction of a second (MNIST: 55 MB) and
training batches are then drawn from these in-memory tensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from bnnrepro.data import DATA_FILE, SKIP_FILE  # noqa: F401  (re-exported)
from bnnrepro.data.download import fetch, mirror_from_env
from bnnrepro.errors import BadFileError, MissingFileError
from bnnrepro.io import atomic_write, file_digest

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


def resized(dataset: Dataset, size: int) -> Dataset:
    """The dataset with every image resized to size x size (bilinear, antialiased, rounded back to uint8),
    once, before training: BinSFO feeds MNIST to its MLP at 64 x 64 (torchvision Resize on PIL images,
    also bilinear). size 0, or the native size, returns the dataset unchanged."""
    if size == 0 or dataset.image_shape[1:] == (size, size):
        return dataset
    from torchvision.transforms.v2.functional import resize

    def scale(images: torch.Tensor) -> torch.Tensor:
        return resize(images, [size, size], antialias=True)  # uint8 in, uint8 out

    return dataclasses.replace(dataset, train_images=scale(dataset.train_images), test_images=scale(dataset.test_images))


META_KEY = "bnnrepro"


def prepare_dataset(name: str, out_dir: str | os.PathLike, raw_dir: str | os.PathLike,
                    mirror: str | None = None) -> Path:
    """Fetch (verified) and parse the raw files of `name`, then write `out_dir/data.safetensors` atomically."""
    from bnnrepro.data.sources import get_source  # the parsers import torchvision: only preparing pays for it

    source = get_source(name)
    raw_dir = Path(raw_dir)
    mirror = mirror if mirror is not None else mirror_from_env()
    for resource in source.resources:
        fetch(resource, name, raw_dir, mirror)
    checksums = {r.filename: r.md5 for r in source.resources}
    return write_prepared(name, source.parse(raw_dir), out_dir, checksums)


def write_prepared(name: str, tensors: dict[str, torch.Tensor], out_dir: str | os.PathLike,
                   raw_md5: dict[str, str] | None = None) -> Path:
    """Write parsed split tensors as `out_dir/data.safetensors` (atomically)."""
    from bnnrepro.data.sources import get_source

    source = get_source(name)
    _check_tensors(name, tensors)
    info = {"name": name, "num_classes": source.num_classes, "max_value": source.max_value, "raw_md5": raw_md5 or {}}
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
