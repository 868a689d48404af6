"""Verified downloads (mirror first, MD5 checked before anything is kept) and MNIST-like preparation."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bnnrepro.config import ConfigError
from bnnrepro.data.download import MIRROR_ENV, DownloadError, Resource, fetch
from bnnrepro.data.prepared import DATA_FILE, load_dataset, prepare_dataset
from bnnrepro.data.sources import SOURCES
from bnnrepro.io import file_digest

from conftest import REPO_ROOT, offline_env
from standins import mnist_files

DEAD_URL = "http://127.0.0.1:9/x"
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
SMALL = "train-labels-idx1-ubyte.gz"  # 28 KB: cheap to copy and corrupt


def mnist_resource(filename: str) -> Resource:
    (res,) = [r for r in SOURCES["mnist"].resources if r.filename == filename]
    return res


def offline(res: Resource) -> Resource:
    """The same file and MD5, with the official URLs replaced by a refused loopback address."""
    return Resource(res.filename, res.md5, (DEAD_URL,))


def files_in(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


def test_sources_declare_the_official_mnist_files():
    assert {r.filename: r.md5 for r in SOURCES["mnist"].resources} == MNIST_MD5


def test_fetch_mnist_from_mirror(mirror, tmp_path):
    dest = tmp_path / "raw"
    resources = SOURCES["mnist"].resources
    assert len(resources) == 4
    for res in resources:
        path = fetch(offline(res), "mnist", dest, mirror=str(mirror))
        assert path == dest / res.filename
        assert file_digest(path) == res.md5 == MNIST_MD5[res.filename]
    assert sorted(p.name for p in dest.iterdir()) == sorted(MNIST_MD5)  # no temporary files left


def _corrupt_mirror(mirror: Path, root: Path, name: str, how: str) -> Path:
    bad = root / "mnist" / name
    bad.parent.mkdir(parents=True)
    data = bytearray((mirror / "mnist" / name).read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2:]
    bad.write_bytes(bytes(data))
    return root


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_corrupt_mirror_is_refused_and_leaves_nothing(mirror, tmp_path, how):
    bad_mirror = _corrupt_mirror(mirror, tmp_path / "mirror", SMALL, how)
    res = offline(mnist_resource(SMALL))
    dest = tmp_path / "raw"
    with pytest.raises(DownloadError) as info:
        fetch(res, "mnist", dest, mirror=str(bad_mirror))
    msg = str(info.value)
    assert SMALL in msg
    assert f"expected MD5 {res.md5}" in msg
    assert str(bad_mirror / "mnist" / SMALL) in msg  # the mirror copy was tried ...
    assert DEAD_URL in msg                             # ... and then the official URL
    assert "checksum mismatch" in msg
    assert MIRROR_ENV in msg
    assert files_in(dest) == []


def test_missing_mirror_file_is_refused_and_leaves_nothing(tmp_path):
    empty_mirror = tmp_path / "mirror"
    (empty_mirror / "mnist").mkdir(parents=True)
    res = offline(mnist_resource(SMALL))
    dest = tmp_path / "raw"
    with pytest.raises(DownloadError) as info:
        fetch(res, "mnist", dest, mirror=str(empty_mirror))
    msg = str(info.value)
    assert SMALL in msg and res.md5 in msg and MIRROR_ENV in msg
    assert str(empty_mirror / "mnist" / SMALL) in msg and DEAD_URL in msg
    assert files_in(dest) == []


def test_no_mirror_and_unreachable_url(tmp_path):
    res = offline(mnist_resource(SMALL))
    with pytest.raises(DownloadError, match=MIRROR_ENV):
        fetch(res, "mnist", tmp_path / "raw", mirror=None)
    assert files_in(tmp_path / "raw") == []


def test_existing_file_with_wrong_md5_is_replaced(mirror, tmp_path):
    res = offline(mnist_resource(SMALL))
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / SMALL).write_bytes(b"not the real file")
    path = fetch(res, "mnist", dest, mirror=str(mirror))
    assert file_digest(path) == res.md5
    assert path.read_bytes() == (mirror / "mnist" / SMALL).read_bytes()
    assert [p.name for p in dest.iterdir()] == [SMALL]


def test_existing_verified_file_is_kept_without_any_source(mirror, tmp_path):
    res = offline(mnist_resource(SMALL))
    dest = tmp_path / "raw"
    dest.mkdir()
    shutil.copy(mirror / "mnist" / SMALL, dest / SMALL)
    assert fetch(res, "mnist", dest, mirror=str(tmp_path / "nowhere")) == dest / SMALL


def test_prepare_data_stage_fails_cleanly_on_corrupt_mirror(mirror, tmp_path, repo_root):
    bad_mirror = _corrupt_mirror(mirror, tmp_path / "mirror", "train-images-idx3-ubyte.gz", "truncate")
    out, raw = tmp_path / "prepared", tmp_path / "raw"
    env = offline_env()  # official URLs go to a dead proxy: refused at once, never the internet
    env[MIRROR_ENV] = str(bad_mirror)
    env["PYTHONPATH"] = str(repo_root)
    proc = subprocess.run([sys.executable, "stages/prepare_data.py", "mnist", "--out", str(out), "--raw", str(raw)],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]  # one line
    assert error.startswith(f"error: {raw / 'train-images-idx3-ubyte.gz'}: ")
    assert "expected MD5" in proc.stderr
    assert MNIST_MD5["train-images-idx3-ubyte.gz"] in proc.stderr
    assert "checksum mismatch" in proc.stderr and MIRROR_ENV in proc.stderr
    for url in mnist_resource("train-images-idx3-ubyte.gz").urls:  # tried, and refused by the dead proxy
        assert url in proc.stderr
    assert not (out / DATA_FILE).exists()
    assert files_in(raw) == []


def test_prepare_and_load_mnist(mirror, tmp_path):
    out = prepare_dataset("mnist", tmp_path / "prepared", tmp_path / "raw", mirror=str(mirror))
    assert out == tmp_path / "prepared" / DATA_FILE
    assert [p.name for p in (tmp_path / "prepared").iterdir()] == [DATA_FILE]

    ds = load_dataset(tmp_path / "prepared")
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.max_value == 255
    assert ds.image_shape == (1, 28, 28)
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (10000, 1, 28, 28) and ds.test_images.dtype == torch.uint8
    for labels, n in ((ds.train_labels, 60000), (ds.test_labels, 10000)):
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert labels.min() == 0 and labels.max() == 9
    assert ds.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert ds.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert ds.train_images.max() == 255 and ds.train_images.min() == 0
    assert ds.sha256 == file_digest(out, "sha256")

    again = load_dataset(tmp_path / "prepared")  # a second load gives identical tensors
    assert torch.equal(again.train_images, ds.train_images) and torch.equal(again.test_labels, ds.test_labels)


def test_resize_batch_by_batch_matches_torchvision_and_the_whole_dataset(mirror, tmp_path):
    """The loader resizes each batch with torch's uint8 kernel as it draws it: torchvision's resize gives the
    same bytes (on an AVX2 CPU, where torchvision takes that kernel too), and so does resizing the whole
    dataset once; the loader keeps no resized copy."""
    from torchvision.transforms.v2.functional import resize

    from bnnrepro.data.batches import BatchLoader, resize_images

    prepare_dataset("mnist", tmp_path / "prepared", tmp_path / "raw", mirror=str(mirror))
    ds = load_dataset(tmp_path / "prepared")
    images, labels = ds.train_images[:1000], ds.train_labels[:1000]
    whole = resize_images(images, 64)
    assert whole.shape == (1000, 1, 64, 64) and whole.dtype == torch.uint8
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert torch.equal(whole, resize(images, [64, 64], antialias=True))
    common = dict(max_value=255, mean=(0.1307,), std=(0.3081,), shuffle=True, seed=3)
    by_batch = BatchLoader(images, labels, 7, resize=64, **common)  # batches that do not divide the count
    assert by_batch.images is images
    batches = list(by_batch)
    assert len(batches) == 143 and batches[0][0].shape == (7, 1, 64, 64)
    for (x, y), (x_whole, y_whole) in zip(batches, BatchLoader(whole, labels, 7, **common), strict=True):
        assert torch.equal(x, x_whole) and torch.equal(y, y_whole)
    assert resize_images(images, 28) is images and resize_images(images, 0) is images
    with pytest.raises(ValueError, match="resize must be 0"):
        BatchLoader(images, labels, 7, max_value=255, resize=-1)


def test_prepare_fashion_mnist(mirror, tmp_path):
    prepare_dataset("fashion-mnist", tmp_path / "prepared", tmp_path / "raw", mirror=str(mirror))
    ds = load_dataset(tmp_path / "prepared")
    assert ds.name == "fashion-mnist"
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.test_images.shape == (10000, 1, 28, 28)
    assert ds.train_labels.shape == (60000,) and ds.test_labels.shape == (10000,)
    assert sorted(ds.test_labels.unique().tolist()) == list(range(10))
    assert ds.test_labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]


def test_load_dataset_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_data.py"):
        load_dataset(tmp_path / "mnist")


# ------------------------------------------------- declared checksums of stand-in files (stages/prepare_data.py)

def standin_mnist(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A mirror holding tiny MNIST files in the official IDX format, and their MD5s."""
    raw = tmp_path / "mirror" / "mnist"
    raw.mkdir(parents=True)
    md5 = {}
    for name, data in mnist_files(6, 2, seed=0).items():
        (raw / name).write_bytes(data)
        md5[name] = file_digest(raw / name)
    return tmp_path / "mirror", md5


def prepared_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["bnnrepro"])


def test_standin_files_are_refused_against_the_official_md5(tmp_path):
    mirror, _ = standin_mnist(tmp_path)
    with pytest.raises(DownloadError, match="checksum mismatch") as e:
        prepare_dataset("mnist", tmp_path / "prepared", tmp_path / "raw", mirror=str(mirror))
    assert e.value.corrupt


def test_declared_md5_verifies_standin_files_and_is_recorded(tmp_path):
    mirror, md5 = standin_mnist(tmp_path)
    out = prepare_dataset("mnist", tmp_path / "prepared", tmp_path / "raw", mirror=str(mirror), md5=md5,
                          md5_source="params.yaml: datasets.mnist.md5")
    ds = load_dataset(out.parent)
    assert ds.train_images.shape == (6, 1, 28, 28) and ds.test_labels.tolist() == [0, 1]
    meta = prepared_metadata(out)
    assert meta["raw_md5"] == md5 and meta["md5_source"] == "params.yaml: datasets.mnist.md5"

    one = {"train-images-idx3-ubyte.gz": md5["train-images-idx3-ubyte.gz"]}  # the other three keep the official MD5
    with pytest.raises(DownloadError, match=MNIST_MD5["train-labels-idx1-ubyte.gz"]):
        prepare_dataset("mnist", tmp_path / "p2", tmp_path / "raw2", mirror=str(mirror), md5=one)


@pytest.mark.parametrize("md5, message", [({"train-images.gz": "0" * 32}, "not a raw file of this dataset"),
                                          ({"train-images-idx3-ubyte.gz": "F" * 32}, "is not an MD5"),
                                          ({"train-images-idx3-ubyte.gz": 5}, "is not an MD5")])
def test_bad_declared_md5_is_a_config_error(tmp_path, md5, message):
    with pytest.raises(ConfigError, match=message):
        prepare_dataset("mnist", tmp_path / "prepared", tmp_path / "raw", mirror=str(tmp_path), md5=md5)
    assert not (tmp_path / "raw").exists()


def test_prepare_stage_reads_its_params_entry(tmp_path):
    """stages/prepare_data.py takes `quick` and `md5` from datasets.<name> of the params file; the prepared
    file of the official MNIST (no md5 in params.yaml) says "official"."""
    mirror, md5 = standin_mnist(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(f"datasets:\n  mnist: {{quick: false, md5: {json.dumps(md5)}}}\n")
    stage = [sys.executable, str(REPO_ROOT / "stages" / "prepare_data.py"), "mnist", "--out", "out",
             "--raw", "raw", "--params", str(params)]
    env = offline_env() | {MIRROR_ENV: str(mirror), "PYTHONPATH": str(REPO_ROOT)}
    quick = subprocess.run(stage + ["--profile", "quick"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert quick.returncode == 0 and (tmp_path / "out" / "skipped.json").is_file()
    paper = subprocess.run(stage + ["--profile", "paper"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert paper.returncode == 0, paper.stderr
    assert "not the official ones" in paper.stdout
    assert prepared_metadata(tmp_path / "out" / DATA_FILE)["md5_source"] == f"{params}: datasets.mnist.md5"

    params.write_text("datasets:\n  mnist: {quick: true, md5s: {}}\n")
    bad = subprocess.run(stage + ["--profile", "paper"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown key(s) ['md5s']" in bad.stderr
