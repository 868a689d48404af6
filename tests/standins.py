"""Tiny stand-ins of the raw files the pipeline reads, written in their official formats: the dataset
archives (MNIST IDX, CIFAR binary tar.gz, Tiny-ImageNet zip, Caltech-101/256, Oxford Pets and Flowers) and
the official AdamBNN / BCDNet checkpoints (key names and nesting of the public code, at 1/8 of the width).

The parser tests use the single writers; `write_mirror` lays every dataset and checkpoint out as a
BNNREPRO_MIRROR folder (<mirror>/<dataset>/<file>, <mirror>/pretrained/<file>) for the paper profile's
dry run (test_paper_dry_run.py). Stand-ins are small but have the official image shapes: 28 x 28, 32 x 32,
64 x 64; the class-folder datasets hold one small JPEG per class (each class folder must hold one), which
preparation resizes to 256 x 256 as for the real ones.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# ------------------------------------------------------------------------------------------- archives


def tar_bytes(members: dict[str, bytes], compress: bool = True) -> bytes:
    """A tar (gzip-compressed with `compress`) holding `members` (name -> bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if compress else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_tar_gz(path: Path, members: dict[str, bytes]) -> None:
    path.write_bytes(tar_bytes(members, compress=True))


def jpeg(color=(10, 200, 30), mode: str = "RGB", size: tuple[int, int] = (8, 6)) -> bytes:
    """A JPEG of one colour (an int for mode "L")."""
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def noise_jpeg(seed: int, size: tuple[int, int]) -> bytes:
    """A JPEG of random RGB pixels (W x H = `size`): every stand-in image differs from the others."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# -------------------------------------------------------------------------------------- MNIST (IDX)


def idx_gz(array: np.ndarray) -> bytes:
    """The IDX format of MNIST / Fashion-MNIST, gzipped: magic (0x08 = unsigned byte, then the number of
    dimensions), each dimension as a big-endian int32, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def mnist_files(n_train: int, n_test: int, seed: int) -> dict[str, bytes]:
    """The four files of torchvision's MNIST resources: 28 x 28 images, labels 0-9."""
    rng = np.random.default_rng(seed)
    files = {}
    for stem, n in (("train", n_train), ("t10k", n_test)):
        files[f"{stem}-images-idx3-ubyte.gz"] = idx_gz(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        files[f"{stem}-labels-idx1-ubyte.gz"] = idx_gz(np.arange(n) % 10)
    return files


# ------------------------------------------------------------------------------------------- CIFAR

PIXELS = 3 * 32 * 32


def write_learnable_mnist(folder: Path, n_train: int, n_test: int) -> None:
    """A prepared MNIST-shaped dataset (stages/train.py's input, not raw files) that a net learns in a few
    epochs: noise plus a bright row at a per-class height."""
    from bnnrepro.data.prepared import write_prepared

    n = n_train + n_test
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = (torch.rand(n, 1, 28, 28, generator=g) * 60).to(torch.uint8)
    images[torch.arange(n), 0, labels * 2, :] = 255  # a learnable stripe per class
    write_prepared("mnist", {"train_images": images[:n_train], "train_labels": labels[:n_train],
                             "test_images": images[n_train:], "test_labels": labels[n_train:]}, folder)


def make_image(k: int) -> np.ndarray:
    """A distinct 3x32x32 uint8 image for sample k: a background level plus one marked pixel."""
    img = np.full((3, 32, 32), k % 256, dtype=np.uint8)
    c, h, w = k % 3, (5 * k + 1) % 32, (7 * k + 2) % 32
    img[c, h, w] = 255 - k
    return img


def marked_pixel(k: int) -> tuple[int, int, int]:
    return k % 3, (5 * k + 1) % 32, (7 * k + 2) % 32


def record(label_bytes: bytes, k: int) -> bytes:
    """One record as the CIFAR binary release stores it: label byte(s), then red, green, blue planes,
    each row-major. The marked pixel is placed by explicit offset, not by numpy's reshape."""
    flat = bytearray([k % 256]) * PIXELS
    c, h, w = marked_pixel(k)
    flat[c * 1024 + h * 32 + w] = 255 - k
    return label_bytes + bytes(flat)


def cifar10_archive(raw: Path, per_file: int = 3, broken: bool = False) -> tuple[list[int], list[int]]:
    """cifar-10-binary.tar.gz with `per_file` records in each of the five training batches and the test
    batch; returns the train and test labels."""
    members, train_labels, test_labels, k = {}, [], [], 0
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        data = b""
        for _ in range(per_file):
            label = (3 * k + 1) % 10
            (test_labels if name == "test_batch.bin" else train_labels).append(label)
            data += record(bytes([label]), k)
            k += 1
        if broken and name == "data_batch_3.bin":
            data += b"\x00" * 5
        members[f"cifar-10-batches-bin/{name}"] = data
    members["cifar-10-batches-bin/batches.meta.txt"] = b"airplane\nautomobile\n"
    write_tar_gz(raw / "cifar-10-binary.tar.gz", members)
    return train_labels, test_labels


def cifar100_archive(raw: Path, n_train: int, n_test: int) -> None:
    """cifar-100-binary.tar.gz: records of (coarse, fine) label bytes and the pixels."""
    def split(first: int, n: int) -> bytes:
        return b"".join(record(bytes([k % 20, (37 * k + 11) % 100]), k) for k in range(first, first + n))

    write_tar_gz(raw / "cifar-100-binary.tar.gz", {"cifar-100-binary/train.bin": split(0, n_train),
                                                   "cifar-100-binary/test.bin": split(n_train, n_test),
                                                   "cifar-100-binary/fine_label_names.txt": b"apple\n"})


# ----------------------------------------------------------------------------------- Tiny-ImageNet

TINY_ROOT = "tiny-imagenet-200"


def tiny_imagenet_archive(raw: Path, n_train: int, n_val: int) -> None:
    """tiny-imagenet-200.zip: wnids.txt naming 200 classes, `n_train` 64 x 64 JPEGs under
    train/<wnid>/images/, `n_val` under val/images/ labelled by val/val_annotations.txt."""
    wnids = [f"n{i:08d}" for i in range(200)]
    with zipfile.ZipFile(raw / "tiny-imagenet-200.zip", "w") as z:
        z.writestr(f"{TINY_ROOT}/wnids.txt", "\n".join(wnids) + "\n")
        for i in range(n_train):
            wnid = wnids[i % len(wnids)]
            z.writestr(f"{TINY_ROOT}/train/{wnid}/images/{wnid}_{i}.JPEG", noise_jpeg(i, (64, 64)))
        lines = []
        for i in range(n_val):
            z.writestr(f"{TINY_ROOT}/val/images/val_{i}.JPEG", noise_jpeg(10_000 + i, (64, 64)))
            lines.append(f"val_{i}.JPEG\t{wnids[(7 * i) % len(wnids)]}\t0\t0\t63\t63")
        z.writestr(f"{TINY_ROOT}/val/val_annotations.txt", "\n".join(lines) + "\n")


# ------------------------------------------------------------------- Caltech-101/256, Oxford Pets and Flowers

FOLDER_IMAGE = (12, 9)  # W x H of each class-folder JPEG: preparation resizes it to 256 x 256


def caltech101_archive(raw: Path) -> None:
    """caltech-101.zip holding caltech-101/101_ObjectCategories.tar.gz: 101 class folders and
    BACKGROUND_Google (left out by the parser), one JPEG each."""
    classes = [f"class_{c:03d}" for c in range(101)] + ["BACKGROUND_Google"]
    files = {f"101_ObjectCategories/{cls}/image_0001.jpg": noise_jpeg(c, FOLDER_IMAGE) for c, cls in enumerate(classes)}
    with zipfile.ZipFile(raw / "caltech-101.zip", "w") as z:
        z.writestr("caltech-101/101_ObjectCategories.tar.gz", tar_bytes(files, compress=True))


def caltech256_archive(raw: Path) -> None:
    """256_ObjectCategories.tar (not compressed): folders 001.<name> ... 256.<name> and 257.clutter."""
    folders = [f"{c:03d}.class{c}" for c in range(1, 257)] + ["257.clutter"]
    files = {f"256_ObjectCategories/{folder}/{folder[:3]}_0001.jpg": noise_jpeg(c, FOLDER_IMAGE)
             for c, folder in enumerate(folders)}
    (raw / "256_ObjectCategories.tar").write_bytes(tar_bytes(files, compress=False))


def pets_archive(raw: Path) -> None:
    """images.tar.gz: images/<Breed>_<n>.jpg, 37 breeds (dog breeds lower case, cats capitalised)."""
    breeds = [f"Cat_breed_{b}" if b % 2 else f"dog_breed_{b}" for b in range(37)]
    files = {f"images/{breed}_1.jpg": noise_jpeg(b, FOLDER_IMAGE) for b, breed in enumerate(breeds)}
    (raw / "images.tar.gz").write_bytes(tar_bytes(files, compress=True))


def flowers_archive(raw: Path) -> None:
    """102flowers.tgz (jpg/image_00001.jpg ...) and imagelabels.mat (label 1-102 of each image)."""
    from scipy.io import savemat

    labels = np.arange(102) + 1
    savemat(raw / "imagelabels.mat", {"labels": labels[None, :]})
    files = {f"jpg/image_{i + 1:05d}.jpg": noise_jpeg(i, FOLDER_IMAGE) for i in range(len(labels))}
    (raw / "102flowers.tgz").write_bytes(tar_bytes(files, compress=True))


# ------------------------------------------------------------------ official AdamBNN / BCDNet checkpoints

WIDTH = 0.125  # the official layout at 1/8 of the channels: same names and nesting, small tensors
ADAMBNN_STAGES = [32, 64, 128, 128, 256, 256] + [512] * 6 + [1024] * 2
BCDNET_STAGES = [32, 64, 128, 128, 256, 256] + [512] * 4 + [1024]
CHECKPOINT_FILES = {"adambnn": "AdamBNN.mobilenet.pth.tar", "bcdnet": "BCDNet.pth.tar"}


def bn(prefix: str, c: int) -> dict[str, tuple]:
    """An official nn.BatchNorm2d: parameters and the running statistics (buffers) a checkpoint also holds."""
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def move_prelu_move(prefix: str, names: tuple[str, str, str], c: int) -> dict[str, tuple]:
    a, p, b = names
    return {f"{prefix}.{a}.bias": (1, c, 1, 1), f"{prefix}.{p}.weight": (c,), f"{prefix}.{b}.bias": (1, c, 1, 1)}


def official_stem(stages: list[int]) -> dict[str, tuple]:
    """Names and shapes of reactnet's `feature` list (liuzechun/AdamBNN step2/reactnet.py)."""
    w = [int(c * WIDTH) for c in stages]
    keys = {"feature.0.conv1.weight": (w[0], 3, 3, 3), **bn("feature.0.bn1", w[0])}
    for i in range(1, len(w)):
        cin, cout, f = w[i - 1], w[i], f"feature.{i}"
        keys |= {f"{f}.move11.bias": (1, cin, 1, 1), f"{f}.binary_3x3.weight": (cin, cin, 3, 3), **bn(f"{f}.bn1", cin)}
        keys |= move_prelu_move(f, ("move12", "prelu1", "move13"), cin) | {f"{f}.move21.bias": (1, cin, 1, 1)}
        if cin == cout:
            keys |= {f"{f}.binary_pw.weight": (cout, cin, 1, 1), **bn(f"{f}.bn2", cout)}
        else:
            keys |= {f"{f}.binary_pw_down1.weight": (cin, cin, 1, 1), f"{f}.binary_pw_down2.weight": (cin, cin, 1, 1),
                     **bn(f"{f}.bn2_1", cin), **bn(f"{f}.bn2_2", cin)}
        keys |= move_prelu_move(f, ("move22", "prelu2", "move23"), cout)
    return keys


def official_bcdnet_mlp() -> dict[str, tuple]:
    """Names and shapes of BCDNet's mlp_layer (Sense-GVT/BCDNet prototype/model/a_3.py)."""
    c, keys = int(1024 * WIDTH), {}
    for b in range(3):
        for k in range(4):
            f = f"mlp_layer.{b}.mlp_layer.{k}"
            convs = ("binary_conv", "binary_conv1", "binary_conv2") if k < 3 else ("binary_conv",)
            keys |= {f"{f}.move0.bias": (1, c, 1, 1), **{f"{f}.{n}.weight": (c, c, 1, 1) for n in convs}, **bn(f"{f}.bn1", c)}
            keys |= move_prelu_move(f, ("move1", "prelu", "move2"), c)
    return keys


def official_shapes(name: str) -> dict[str, tuple]:
    c = int(1024 * WIDTH)
    if name == "adambnn":
        return official_stem(ADAMBNN_STAGES) | {"fc.weight": (1000, c), "fc.bias": (1000,)}
    return (official_stem(BCDNET_STAGES) | official_bcdnet_mlp()
            | {"fc.weight": (1000, c), "fc.bias": (1000,), "fc_dist.weight": (1000, c), "fc_dist.bias": (1000,)})


def write_official(name: str, folder: Path) -> dict[str, torch.Tensor]:
    """torch.save of the official nesting: AdamBNN {"epoch", "state_dict", ...}, BCDNet {"model", ...};
    returns the state without the "module." prefix."""
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randint(0, 100, s, generator=gen) if k.endswith("num_batches_tracked")
                 else torch.randn(s, generator=gen)) for k, s in official_shapes(name).items()}
    wrapped = {f"module.{k}": v for k, v in state.items()}  # saved from DataParallel
    saved = ({"epoch": 256, "state_dict": wrapped, "best_top1_acc": 70.5, "optimizer": {"state": {}, "param_groups": []}}
             if name == "adambnn" else {"model": wrapped, "last_iter": 640000})
    torch.save(saved, Path(folder) / CHECKPOINT_FILES[name])
    return state


# ------------------------------------------------------------------------------- the whole mirror

# train / test images of each stand-in that the pipeline trains on (scikit-learn's digits are real: 1440 / 357)
MNIST_TRAIN, MNIST_TEST = 10, 4
CIFAR_PER_FILE = 2                  # CIFAR-10: 2 records in each of 5 training batches and the test batch
CIFAR100_TRAIN, CIFAR100_TEST = 10, 4
TINY_TRAIN, TINY_VAL = 4, 2


def write_datasets(mirror: Path) -> dict[str, dict[str, str]]:
    """Every downloaded dataset as <mirror>/<dataset>/<official file names>; returns dataset -> {file: MD5}."""
    writers = {
        "mnist": lambda raw: _write_files(raw, mnist_files(MNIST_TRAIN, MNIST_TEST, seed=0)),
        "fashion-mnist": lambda raw: _write_files(raw, mnist_files(MNIST_TRAIN, MNIST_TEST, seed=1)),
        "cifar10": lambda raw: cifar10_archive(raw, per_file=CIFAR_PER_FILE),
        "cifar100": lambda raw: cifar100_archive(raw, CIFAR100_TRAIN, CIFAR100_TEST),
        "tiny-imagenet": lambda raw: tiny_imagenet_archive(raw, TINY_TRAIN, TINY_VAL),
        "caltech101": caltech101_archive,
        "caltech256": caltech256_archive,
        "oxford-pets": pets_archive,
        "oxford-flowers": flowers_archive,
    }
    checksums = {}
    for name, write in writers.items():
        raw = mirror / name
        raw.mkdir(parents=True)
        write(raw)
        checksums[name] = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in sorted(raw.iterdir())}
    return checksums


def write_checkpoints(mirror: Path) -> None:
    """The official AdamBNN and BCDNet checkpoints (1/8 width) as <mirror>/pretrained/<file>."""
    folder = mirror / "pretrained"
    folder.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINT_FILES:
        write_official(name, folder)


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).write_bytes(data)
