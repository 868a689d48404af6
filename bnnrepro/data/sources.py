"""Where each dataset comes from and how its official files become uint8 tensors.

Each `DatasetSource` declares its raw files (name, MD5, official URLs) and a parser that turns the
verified files into `{train_images, train_labels, test_images, test_labels}`: images as uint8
N x C x H x W, labels as int64. Parsers never unpickle: CIFAR is read from its binary release.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

import numpy as np
import torch

from bnnrepro.data.download import Resource
from bnnrepro.data.folders import IMAGE_SIZE, load_class_folders, pets_breed, sort_into_class_folders
from bnnrepro.errors import UsageError

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class DatasetSource:
    name: str
    num_classes: int
    max_value: int  # largest pixel value (255 for images, 16 for scikit-learn's digits)
    image_shape: tuple[int, int, int]  # C, H, W
    declared: tuple[Resource, ...] | Callable[[], tuple[Resource, ...]]  # the raw files, or what lists them
    parse: Callable[[Path], Tensors]  # raw folder -> tensors

    @property
    def resources(self) -> tuple[Resource, ...]:
        """The raw files: names, MD5s and official URLs."""
        return self.declared() if callable(self.declared) else self.declared


# ---------------------------------------------------------------------------------------------- MNIST
def _torchvision_resources(class_name: str) -> Callable[[], tuple[Resource, ...]]:
    """Official file names, MD5s and URLs exactly as torchvision's dataset class declares them, read when
    asked for: importing torchvision takes seconds, and a training run, which imports this module for the
    dataset names, never needs it."""
    def resources() -> tuple[Resource, ...]:
        from torchvision import datasets

        cls = getattr(datasets, class_name)
        return tuple(Resource(name, md5, tuple(m + name for m in cls.mirrors)) for name, md5 in cls.resources)

    return resources


def _parse_mnist_like(raw: Path) -> Tensors:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    # torchvision's IDX parsers read plain files: decompress into a scratch folder that is deleted after.
    with tempfile.TemporaryDirectory() as tmp:
        def read(stem: str, parser) -> torch.Tensor:
            plain = Path(tmp) / stem
            plain.write_bytes(gzip.decompress((raw / f"{stem}.gz").read_bytes()))
            return parser(str(plain))

        return {
            "train_images": read("train-images-idx3-ubyte", read_image_file).unsqueeze(1),
            "train_labels": read("train-labels-idx1-ubyte", read_label_file),
            "test_images": read("t10k-images-idx3-ubyte", read_image_file).unsqueeze(1),
            "test_labels": read("t10k-labels-idx1-ubyte", read_label_file),
        }


# ---------------------------------------------------------------------------------------------- CIFAR
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR_RECORD_PIXELS = 3 * 32 * 32


def _read_cifar_records(data: bytes, label_bytes: int, label_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR binary format: each record is `label_bytes` label bytes followed by 3072 pixels (C, H, W)."""
    record = label_bytes + CIFAR_RECORD_PIXELS
    if len(data) % record:
        raise ValueError(f"CIFAR binary batch of {len(data)} bytes is not a whole number of {record}-byte records")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    images = torch.from_numpy(rows[:, label_bytes:].reshape(-1, 3, 32, 32).copy())
    labels = torch.from_numpy(rows[:, label_index].astype(np.int64))
    return images, labels


def _parse_cifar(archive: str, train: list[str], test: list[str], label_bytes: int, label_index: int):
    def parse(raw: Path) -> Tensors:
        with tarfile.open(raw / archive, "r:gz") as tar:
            def split(members):
                parts = [_read_cifar_records(tar.extractfile(m).read(), label_bytes, label_index) for m in members]
                return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

            train_images, train_labels = split(train)
            test_images, test_labels = split(test)
        return {"train_images": train_images, "train_labels": train_labels,
                "test_images": test_images, "test_labels": test_labels}

    return parse


CIFAR10_TRAIN = [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)]
CIFAR10_TEST = ["cifar-10-batches-bin/test_batch.bin"]
CIFAR100_TRAIN = ["cifar-100-binary/train.bin"]
CIFAR100_TEST = ["cifar-100-binary/test.bin"]


# ----------------------------------------------------------------------------------------- Tiny-ImageNet
TINY_ROOT = "tiny-imagenet-200"


def _decode_jpeg(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)  # a few images are greyscale


def _parse_tiny_imagenet(raw: Path) -> Tensors:
    """Train: train/<wnid>/images/*.JPEG. The unlabeled test split is not used; val (labels in
    val/val_annotations.txt) serves as the test split, as in the SGDAT code."""
    with zipfile.ZipFile(raw / "tiny-imagenet-200.zip") as z:
        wnids = z.read(f"{TINY_ROOT}/wnids.txt").decode().split()
        label_of = {w: i for i, w in enumerate(sorted(wnids))}  # ImageFolder's sorted class order
        train = sorted(n for n in z.namelist() if n.startswith(f"{TINY_ROOT}/train/") and n.endswith(".JPEG"))
        train_labels = [label_of[n.split("/")[2]] for n in train]
        annotations = z.read(f"{TINY_ROOT}/val/val_annotations.txt").decode().splitlines()
        val = sorted(line.split("\t")[:2] for line in annotations if line.strip())
        stack = lambda names: torch.from_numpy(np.stack([_decode_jpeg(z.read(n)) for n in names])).permute(0, 3, 1, 2)  # noqa: E731
        return {
            "train_images": stack(train).contiguous(),
            "train_labels": torch.tensor(train_labels, dtype=torch.int64),
            "test_images": stack([f"{TINY_ROOT}/val/images/{f}" for f, _ in val]).contiguous(),
            "test_labels": torch.tensor([label_of[w] for _, w in val], dtype=torch.int64),
        }


# ---------------------------------------------------------------------------------------------- Digit
def digits_split(labels: np.ndarray) -> np.ndarray:
    """Test mask of the binary-weight-space code's Digit split (docs/bws.md#digit-split): sort the indices by label,
    lay them row by row over a 10 x 180 grid, and take grid columns 144-179 as test.
    That gives 1440 train / 357 test. A stable sort fixes the order inside each class."""
    order = np.argsort(labels, kind="stable")
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[order[(np.arange(len(labels)) % 180) >= 144]] = True
    return is_test


def _parse_digits(raw: Path) -> Tensors:
    from sklearn.datasets import load_digits

    digits = load_digits()  # shipped inside scikit-learn: 1797 8x8 images, values 0..16
    images = torch.from_numpy(digits.images.astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    test = torch.from_numpy(digits_split(digits.target))
    return {"train_images": images[~test], "train_labels": labels[~test],
            "test_images": images[test], "test_labels": labels[test]}


# ------------------------------------------------------------- Caltech-101/256, Oxford Pets and Flowers
def _extract_tar(archive: Path | IO[bytes], dest: Path) -> None:
    """Extract a (compressed) tar, a path or a stream, with the "data" filter: no absolute paths, no links
    out of `dest`, no devices. Read as a stream ("r|*"), so a zip member needs no seeking."""
    source = {"name": archive} if isinstance(archive, Path) else {"fileobj": archive}
    with tarfile.open(mode="r|*", **source) as tar:
        tar.extractall(dest, filter="data")


def _parse_caltech101(raw: Path) -> Tensors:
    # the official zip holds caltech-101/101_ObjectCategories.tar.gz (and the annotations, unused)
    with tempfile.TemporaryDirectory(dir=raw) as tmp, zipfile.ZipFile(raw / "caltech-101.zip") as z:
        with z.open("caltech-101/101_ObjectCategories.tar.gz") as inner:
            _extract_tar(inner, Path(tmp))
        return load_class_folders(Path(tmp) / "101_ObjectCategories", exclude=("BACKGROUND_Google",), num_classes=101)


def _parse_caltech256(raw: Path) -> Tensors:
    with tempfile.TemporaryDirectory(dir=raw) as tmp:
        _extract_tar(raw / "256_ObjectCategories.tar", Path(tmp))
        return load_class_folders(Path(tmp) / "256_ObjectCategories", exclude=("257.clutter",), num_classes=256)


def _parse_pets(raw: Path) -> Tensors:
    with tempfile.TemporaryDirectory(dir=raw) as tmp:
        _extract_tar(raw / "images.tar.gz", Path(tmp))
        files = {str(p): pets_breed(p.name) for p in sorted((Path(tmp) / "images").glob("*.jpg"))}
        return load_class_folders(sort_into_class_folders(files, Path(tmp) / "classes"), num_classes=37)


def _parse_flowers(raw: Path) -> Tensors:
    from scipy.io import loadmat  # a MATLAB file (not a pickle), checksum verified

    labels = loadmat(raw / "imagelabels.mat")["labels"].ravel()  # label of image_{i+1:05d}.jpg, 1..102
    with tempfile.TemporaryDirectory(dir=raw) as tmp:
        _extract_tar(raw / "102flowers.tgz", Path(tmp))
        files = {str(Path(tmp) / "jpg" / f"image_{i + 1:05d}.jpg"): f"{label:03d}" for i, label in enumerate(labels)}
        return load_class_folders(sort_into_class_folders(files, Path(tmp) / "classes"), num_classes=102)


CALTECH_URL = "https://data.caltech.edu/records/"
VGG_URL = "https://www.robots.ox.ac.uk/~vgg/data/"
FINETUNE_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)  # BinSFO's Resize((256, 256)), applied when preparing


SOURCES: dict[str, DatasetSource] = {
    "digits": DatasetSource("digits", 10, 16, (1, 8, 8), (), _parse_digits),
    "mnist": DatasetSource("mnist", 10, 255, (1, 28, 28), _torchvision_resources("MNIST"), _parse_mnist_like),
    "fashion-mnist": DatasetSource("fashion-mnist", 10, 255, (1, 28, 28), _torchvision_resources("FashionMNIST"),
                                   _parse_mnist_like),
    "cifar10": DatasetSource(
        "cifar10", 10, 255, (3, 32, 32),
        (Resource("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", (CIFAR_URL + "cifar-10-binary.tar.gz",)),),
        _parse_cifar("cifar-10-binary.tar.gz", CIFAR10_TRAIN, CIFAR10_TEST, label_bytes=1, label_index=0)),
    "cifar100": DatasetSource(
        "cifar100", 100, 255, (3, 32, 32),
        (Resource("cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8", (CIFAR_URL + "cifar-100-binary.tar.gz",)),),
        # records hold (coarse, fine) label bytes; the papers use the 100 fine labels
        _parse_cifar("cifar-100-binary.tar.gz", CIFAR100_TRAIN, CIFAR100_TEST, label_bytes=2, label_index=1)),
    "tiny-imagenet": DatasetSource(
        "tiny-imagenet", 200, 255, (3, 64, 64),
        (Resource("tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de",
                  ("http://cs231n.stanford.edu/tiny-imagenet-200.zip",)),),
        _parse_tiny_imagenet),
    # file names, MD5s and URLs as torchvision's Caltech101 / Caltech256 / OxfordIIITPet / Flowers102 declare them
    "caltech101": DatasetSource(
        "caltech101", 101, 255, FINETUNE_SHAPE,
        (Resource("caltech-101.zip", "3138e1922a9193bfa496528edbbc45d0",
                  (CALTECH_URL + "mzrjq-6wc02/files/caltech-101.zip",)),),
        _parse_caltech101),
    "caltech256": DatasetSource(
        "caltech256", 256, 255, FINETUNE_SHAPE,
        (Resource("256_ObjectCategories.tar", "67b4f42ca05d46448c6bb8ecd2220f6d",
                  (CALTECH_URL + "nyy15-4j048/files/256_ObjectCategories.tar",)),),
        _parse_caltech256),
    "oxford-pets": DatasetSource(
        "oxford-pets", 37, 255, FINETUNE_SHAPE,
        (Resource("images.tar.gz", "5c4f3ee8e5d25df40f4fd59a7f44e54c", (VGG_URL + "pets/data/images.tar.gz",)),),
        _parse_pets),
    "oxford-flowers": DatasetSource(
        "oxford-flowers", 102, 255, FINETUNE_SHAPE,
        (Resource("102flowers.tgz", "52808999861908f626f3c1f4e79d11fa", (VGG_URL + "flowers/102/102flowers.tgz",)),
         Resource("imagelabels.mat", "e0620be6f572b9609742df49c70aed4d", (VGG_URL + "flowers/102/imagelabels.mat",))),
        _parse_flowers),
}


def get_source(name: str) -> DatasetSource:
    if name not in SOURCES:
        raise UsageError(f"{name}: unknown dataset - use one of {sorted(SOURCES)}")
    return SOURCES[name]
