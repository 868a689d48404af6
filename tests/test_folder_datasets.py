"""BinSFO's class-folder datasets (docs/binsfo.md#folder-datasets), on tiny folders and archives written here with PIL."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.model_selection import train_test_split

from bnnrepro.data.folders import list_class_folders, load_class_folders, pets_breed
from bnnrepro.data.sources import SOURCES

from standins import jpeg, tar_bytes


def write_image(path: Path, size=(12, 9), color=(200, 30, 60), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)


@pytest.fixture
def caltech_like(tmp_path) -> Path:
    """Three classes (unsorted on disk), a background class, and files BinSFO's *.jpg glob skips."""
    root = tmp_path / "101_ObjectCategories"
    counts = {"zebra": 5, "Faces": 4, "accordion": 6, "BACKGROUND_Google": 3}
    for cls, n in counts.items():
        for i in range(n):
            write_image(root / cls / f"image_{i:04d}.jpg", size=(10 + i, 7 + 2 * i))
    write_image(root / "zebra" / "grey_0099.jpg", mode="L", color=(90,))  # greyscale: converted to RGB
    write_image(root / "zebra" / "not_a_jpeg.png")
    write_image(root / "zebra" / "nested" / "deeper.jpg")
    return root


def test_listing_sorted_without_background(caltech_like):
    classes, samples = list_class_folders(caltech_like, exclude=("BACKGROUND_Google",))
    assert classes == ["Faces", "accordion", "zebra"]  # sorted as ImageFolder (upper case first)
    assert len(samples) == 4 + 6 + 6
    assert [Path(p).name for p, label in samples if label == 2][-1] == "image_0004.jpg"  # sorted within the class
    assert not any("BACKGROUND" in p or p.endswith(".png") or "nested" in p for p, _ in samples)


def test_split_and_image_shapes(caltech_like):
    tensors = load_class_folders(caltech_like, exclude=("BACKGROUND_Google",), size=16, num_classes=3)
    train, test = train_test_split(list(range(16)), test_size=0.15, random_state=42)
    _, samples = list_class_folders(caltech_like, exclude=("BACKGROUND_Google",))
    labels = torch.tensor([label for _, label in samples])
    assert torch.equal(tensors["train_labels"], labels[train]) and torch.equal(tensors["test_labels"], labels[test])
    assert len(test) == 3 and len(train) == 13
    for split in ("train", "test"):
        images = tensors[f"{split}_images"]
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 16, 16)
    with pytest.raises(ValueError, match="expected 101"):
        load_class_folders(caltech_like, exclude=("BACKGROUND_Google",), size=16, num_classes=101)


def test_caltech101_archive_gives_101_classes_at_256(tmp_path):
    """The official zip nests 101_ObjectCategories.tar.gz; BACKGROUND_Google (here bright white) is dropped."""
    files = {f"101_ObjectCategories/class_{c:03d}/image_0001.jpg": jpeg() for c in range(101)}
    files |= {f"101_ObjectCategories/BACKGROUND_Google/image_{i:04d}.jpg": jpeg((255, 255, 255)) for i in range(3)}
    with zipfile.ZipFile(tmp_path / "caltech-101.zip", "w") as z:
        z.writestr("caltech-101/101_ObjectCategories.tar.gz", tar_bytes(files, compress=True))
    tensors = SOURCES["caltech101"].parse(tmp_path)
    assert len(tensors["train_labels"]) + len(tensors["test_labels"]) == 101
    assert tensors["train_images"].shape[1:] == (3, 256, 256) == SOURCES["caltech101"].image_shape
    assert torch.cat([tensors["train_images"], tensors["test_images"]]).float().mean((1, 2, 3)).max() < 200
    assert not list(tmp_path.glob("tmp*"))  # the extracted images are removed


def test_pets_are_sorted_into_breed_folders(tmp_path):
    assert pets_breed("american_bulldog_12.jpg") == "american_bulldog" and pets_breed("Abyssinian_1.jpg") == "Abyssinian"
    breeds = [f"Breed_{b}" if b % 2 else f"dog_breed_{b}" for b in range(37)]
    files = {f"images/{breed}_{i}.jpg": jpeg() for breed in breeds for i in (1, 2)}
    files["images/Abyssinian_100.mat"] = b"not an image"
    (tmp_path / "images.tar.gz").write_bytes(tar_bytes(files, compress=True))
    tensors = SOURCES["oxford-pets"].parse(tmp_path)
    labels = torch.cat([tensors["train_labels"], tensors["test_labels"]])
    assert torch.equal(labels.bincount(), torch.full((37,), 2))


def test_flowers_follow_imagelabels(tmp_path):
    from scipy.io import savemat

    labels = np.arange(204) % 102 + 1  # 1..102, two images each
    savemat(tmp_path / "imagelabels.mat", {"labels": labels[None, :]})
    files = {f"jpg/image_{i + 1:05d}.jpg": jpeg() for i in range(204)}
    (tmp_path / "102flowers.tgz").write_bytes(tar_bytes(files, compress=True))
    tensors = SOURCES["oxford-flowers"].parse(tmp_path)
    assert len(tensors["test_labels"]) == 31 and tensors["test_images"].shape[1:] == (3, 256, 256)
    all_labels = torch.cat([tensors["train_labels"], tensors["test_labels"]])
    assert torch.equal(all_labels.bincount(), torch.full((102,), 2))  # folder 001 -> label 0, ... 102 -> 101
