"""Parsers of the official CIFAR binary releases, Tiny-ImageNet's zip and scikit-learn's digits,
checked on tiny archives built here in the official layouts."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from bnnrepro.data.sources import SOURCES

from standins import PIXELS, cifar10_archive, jpeg, make_image, marked_pixel, record, write_tar_gz


def test_cifar10_binary(tmp_path):
    train_labels, test_labels = cifar10_archive(tmp_path)
    t = SOURCES["cifar10"].parse(tmp_path)
    assert set(t) == {"train_images", "train_labels", "test_images", "test_labels"}
    assert t["train_images"].shape == (15, 3, 32, 32) and t["test_images"].shape == (3, 3, 32, 32)
    assert t["train_images"].dtype == torch.uint8 and t["test_images"].dtype == torch.uint8
    assert t["train_labels"].dtype == torch.int64 and t["test_labels"].dtype == torch.int64
    assert t["train_labels"].tolist() == train_labels  # batches 1..5 in order
    assert t["test_labels"].tolist() == test_labels
    images = torch.cat([t["train_images"], t["test_images"]])
    for k in range(18):
        c, h, w = marked_pixel(k)
        assert images[k, c, h, w] == 255 - k
        assert torch.equal(images[k], torch.from_numpy(make_image(k)))


def test_cifar10_pixel_position(tmp_path):
    """Byte 1 + c*1024 + h*32 + w of a record is pixel [c, h, w] (channel planes, rows, columns)."""
    flat = bytearray(PIXELS)
    flat[1 * 1024 + 2 * 32 + 3] = 77   # green, row 2, column 3
    flat[2 * 1024 + 31 * 32 + 0] = 99  # blue, bottom-left corner
    members = {f"cifar-10-batches-bin/data_batch_{i}.bin": bytes([i]) + bytes(flat) for i in range(1, 6)}
    members["cifar-10-batches-bin/test_batch.bin"] = bytes([9]) + bytes(flat)
    write_tar_gz(tmp_path / "cifar-10-binary.tar.gz", members)
    t = SOURCES["cifar10"].parse(tmp_path)
    img = t["test_images"][0]
    assert img[1, 2, 3] == 77 and img[2, 31, 0] == 99 and int(img.sum()) == 77 + 99
    assert t["train_labels"].tolist() == [1, 2, 3, 4, 5] and t["test_labels"].tolist() == [9]


def test_cifar100_binary_uses_fine_labels(tmp_path):
    def split(first_k: int, n: int):
        data, fine = b"", []
        for k in range(first_k, first_k + n):
            coarse, f = k % 20, (37 * k + 11) % 100
            fine.append(f)
            data += record(bytes([coarse, f]), k)
        return data, fine

    train, train_fine = split(0, 15)
    test, test_fine = split(15, 3)
    write_tar_gz(tmp_path / "cifar-100-binary.tar.gz",
                 {"cifar-100-binary/train.bin": train, "cifar-100-binary/test.bin": test,
                  "cifar-100-binary/fine_label_names.txt": b"apple\n"})
    t = SOURCES["cifar100"].parse(tmp_path)
    assert t["train_images"].shape == (15, 3, 32, 32) and t["test_images"].shape == (3, 3, 32, 32)
    assert t["train_images"].dtype == torch.uint8 and t["train_labels"].dtype == torch.int64
    assert t["train_labels"].tolist() == train_fine and t["test_labels"].tolist() == test_fine
    assert max(train_fine) > 20  # would be impossible with the 20 coarse labels
    for k in range(15):
        c, h, w = marked_pixel(k)
        assert t["train_images"][k, c, h, w] == 255 - k
    assert torch.equal(t["test_images"][0], torch.from_numpy(make_image(15)))
    assert SOURCES["cifar100"].num_classes == 100


def test_cifar_record_file_of_wrong_length(tmp_path):
    cifar10_archive(tmp_path, broken=True)
    with pytest.raises(ValueError, match="3073-byte records"):
        SOURCES["cifar10"].parse(tmp_path)


def test_cifar100_record_file_of_wrong_length(tmp_path):
    write_tar_gz(tmp_path / "cifar-100-binary.tar.gz",
                 {"cifar-100-binary/train.bin": record(b"\x01\x02", 0)[:-1],
                  "cifar-100-binary/test.bin": record(b"\x01\x02", 1)})
    with pytest.raises(ValueError, match="3074-byte records"):
        SOURCES["cifar100"].parse(tmp_path)


# ------------------------------------------------------------------------------------- Tiny-ImageNet
def test_tiny_imagenet(tmp_path):
    root = "tiny-imagenet-200"
    wnids = ["n02000002", "n01000001"]  # not sorted: labels follow the sorted order
    train = {  # name -> (wnid, colour)
        "n01000001_0.JPEG": ("n01000001", (200, 10, 10)),
        "n01000001_1.JPEG": ("n01000001", (10, 200, 10)),
        "n02000002_0.JPEG": ("n02000002", (10, 10, 200)),
        "n02000002_1.JPEG": ("n02000002", 120),  # greyscale
    }
    val = {"val_0.JPEG": ("n02000002", (250, 250, 0)), "val_1.JPEG": ("n01000001", 60),
           "val_2.JPEG": ("n02000002", (0, 250, 250))}
    with zipfile.ZipFile(tmp_path / "tiny-imagenet-200.zip", "w") as z:
        z.writestr(f"{root}/", b"")
        z.writestr(f"{root}/wnids.txt", "\n".join(wnids) + "\n")
        z.writestr(f"{root}/words.txt", "n01000001\tthing\nn02000002\tother\n")
        for name, (wnid, colour) in train.items():
            z.writestr(f"{root}/train/{wnid}/images/{name}",
                       jpeg(colour, "L" if isinstance(colour, int) else "RGB", (64, 64)))
        for wnid in wnids:
            z.writestr(f"{root}/train/{wnid}/{wnid}_boxes.txt", "x\t0\t0\t63\t63\n")
        lines = []
        for name, (wnid, colour) in reversed(list(val.items())):  # annotation order differs from file order
            z.writestr(f"{root}/val/images/{name}", jpeg(colour, "L" if isinstance(colour, int) else "RGB", (64, 64)))
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
        z.writestr(f"{root}/val/val_annotations.txt", "\n".join(lines) + "\n")
        z.writestr(f"{root}/test/images/test_0.JPEG", jpeg((1, 2, 3), size=(64, 64)))  # unlabeled: unused

    t = SOURCES["tiny-imagenet"].parse(tmp_path)
    assert t["train_images"].shape == (4, 3, 64, 64) and t["test_images"].shape == (3, 3, 64, 64)
    assert t["train_images"].dtype == torch.uint8 and t["test_images"].dtype == torch.uint8
    assert t["train_images"].is_contiguous() and t["test_images"].is_contiguous()
    assert t["train_labels"].dtype == torch.int64 and t["test_labels"].dtype == torch.int64
    assert t["train_labels"].tolist() == [0, 0, 1, 1]
    assert t["test_labels"].tolist() == [1, 0, 1]  # val_0, val_1, val_2

    def mean_colour(img):
        return img.float().mean(dim=(1, 2))

    expected_train = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (120, 120, 120)]
    for img, colour in zip(t["train_images"], expected_train):
        assert torch.allclose(mean_colour(img), torch.tensor(colour, dtype=torch.float32), atol=4)
    grey = t["train_images"][3]  # the 'L' image became three equal channels
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    for img, colour in zip(t["test_images"], [(250, 250, 0), (60, 60, 60), (0, 250, 250)]):
        assert torch.allclose(mean_colour(img), torch.tensor(colour, dtype=torch.float32), atol=4)


# ---------------------------------------------------------------------------------------------- Digit
def test_digits_split(tmp_path):
    from sklearn.datasets import load_digits

    t = SOURCES["digits"].parse(tmp_path)  # no raw files: scikit-learn ships the data
    assert t["train_images"].shape == (1440, 1, 8, 8) and t["test_images"].shape == (357, 1, 8, 8)
    assert t["train_images"].dtype == torch.uint8 and t["train_labels"].dtype == torch.int64
    assert int(torch.cat([t["train_images"], t["test_images"]]).max()) == 16
    assert SOURCES["digits"].max_value == 16

    # The rule, computed independently: order the samples by label (stable), number them 0..1796,
    # and put those numbered n with n % 180 >= 144 into the test split.
    digits = load_digits()
    labels = digits.target
    order = sorted(range(len(labels)), key=lambda i: labels[i])  # Python's sort is stable
    test_idx = sorted(i for pos, i in enumerate(order) if pos % 180 >= 144)
    train_idx = sorted(set(range(len(labels))) - set(test_idx))
    assert len(test_idx) == 357 and len(train_idx) == 1440

    images = torch.from_numpy(digits.images.astype(np.uint8)).unsqueeze(1)
    assert torch.equal(t["test_images"], images[test_idx])
    assert torch.equal(t["train_images"], images[train_idx])
    assert t["test_labels"].tolist() == labels[test_idx].tolist()
    assert t["train_labels"].tolist() == labels[train_idx].tolist()

    counts = np.bincount(t["test_labels"].numpy(), minlength=10)
    expected = np.bincount(labels[test_idx], minlength=10)
    assert counts.tolist() == expected.tolist() and counts.sum() == 357
    assert (counts > 0).all()  # every class is represented in the test split
