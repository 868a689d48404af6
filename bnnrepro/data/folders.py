"""Class-folder image datasets of BinSFO's fine-tuning (docs/binsfo.md#folder-datasets): Caltech-101/256, Oxford Pets and Flowers.

BinSFO reads `<root>/<class>/*.jpg` with the classes and files sorted, splits the list with scikit-learn's
`train_test_split(indices, test_size=0.15, random_state=42)`, and feeds every image through
Resize((256, 256)) -> ToTensor -> Normalize(ImageNet mean, std), with no augmentation. Here the listing
uses torchvision's ImageFolder helpers (find_classes, make_dataset: the same sorted order), and the resize
is done once, when the dataset is prepared: with no random transform, the uint8 images at 256 x 256 are
exactly what every epoch of the official loader sees (the normalisation happens per batch, as for every
dataset of the project). Prepared sizes: Caltech-101 1.7 GB, Caltech-256 5.9 GB, Pets 1.4 GB, Flowers 1.6 GB.

Class folders: Caltech-101 without BACKGROUND_Google (101 classes), Caltech-256 without 257.clutter (256).
Pets and Flowers are released flat, so they are first sorted into class folders: Pets by the breed in each
file name (Abyssinian_1.jpg -> Abyssinian; 37 classes), Flowers by imagelabels.mat, folder 001-102 for
label 1-102. BinSFO's own rearrangement is not published; its folder order fixes which images the seeded
split puts in test, so for Pets and Flowers the split is the same rule on possibly another order.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

IMAGE_SIZE = 256
TEST_SIZE = 0.15
SPLIT_SEED = 42


def list_class_folders(root: str | os.PathLike, exclude: tuple[str, ...] = ()) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, [(path, label)]): class folders sorted, `exclude`d ones left out, and in each the *.jpg
    files directly inside it, sorted (BinSFO's glob("<class>/*.jpg"): no subfolders, no other extension)."""
    from torchvision.datasets.folder import find_classes, make_dataset  # imported here: seconds, needed only here

    root = Path(root)
    classes = [c for c in find_classes(root)[0] if c not in exclude]
    samples = make_dataset(root, {c: i for i, c in enumerate(classes)},
                           is_valid_file=lambda path: path.endswith(".jpg") and Path(path).parent.parent == root)
    return classes, samples


def split_indices(n: int) -> tuple[list[int], list[int]]:
    """BinSFO's 85/15 split, in the order scikit-learn returns (the test order sets the test batches,
    which matters for batch-statistics BatchNorm)."""
    from sklearn.model_selection import train_test_split  # imported here: about a second, needed only here

    train, test = train_test_split(list(range(n)), test_size=TEST_SIZE, random_state=SPLIT_SEED)
    return train, test


def read_image(path: str, size: int) -> np.ndarray:
    """RGB (greyscale and CMYK files converted, as BinSFO's .convert("RGB")), resized to size x size with
    torchvision's Resize on the PIL image (bilinear, antialiased), as uint8 H x W x 3."""
    from PIL import Image
    from torchvision.transforms.functional import resize

    with Image.open(path) as im:
        return np.array(resize(im.convert("RGB"), [size, size]), dtype=np.uint8)  # a writable copy


def read_images(paths: list[str], size: int) -> torch.Tensor:
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, path in enumerate(paths):
        images[i] = torch.from_numpy(read_image(path, size)).permute(2, 0, 1)
    return images


def load_class_folders(root: str | os.PathLike, exclude: tuple[str, ...] = (), size: int = IMAGE_SIZE,
                       num_classes: int | None = None) -> dict[str, torch.Tensor]:
    """Split tensors of a class-folder dataset: uint8 N x 3 x size x size images, int64 labels."""
    classes, samples = list_class_folders(root, exclude)
    if num_classes is not None and len(classes) != num_classes:
        raise ValueError(f"'{root}' has {len(classes)} class folders (after leaving out {list(exclude)}), "
                         f"expected {num_classes}")
    paths, labels = zip(*samples)
    train, test = split_indices(len(samples))
    labels = torch.tensor(labels, dtype=torch.int64)
    return {"train_images": read_images([paths[i] for i in train], size), "train_labels": labels[train],
            "test_images": read_images([paths[i] for i in test], size), "test_labels": labels[test]}


def sort_into_class_folders(files: dict[str, str], out: str | os.PathLike) -> Path:
    """Move each file (path -> class name) into `out/<class>/`; returns `out`."""
    out = Path(out)
    for path, cls in files.items():
        (out / cls).mkdir(parents=True, exist_ok=True)
        shutil.move(path, out / cls / Path(path).name)
    return out


def pets_breed(filename: str) -> str:
    """Oxford-IIIT Pets names files <Breed>_<n>.jpg; breeds contain underscores (american_bulldog_12.jpg)."""
    return Path(filename).stem.rsplit("_", 1)[0]
