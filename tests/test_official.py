"""Published pretrained weights as pipeline stages: fetch@<name> (verified, atomic, offline status) hands the
files to infer@official_<name>, which evaluates them like our own models. Files are written here in the official
layouts; every URL points at a dead loopback port (no test touches the network)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import bnnrepro.infer as infer
from bnnrepro.data.download import DownloadError, Resource, fetch, git_blob_id
from bnnrepro.data.prepared import SKIP_FILE
from bnnrepro.errors import run_cli
from bnnrepro.models.pretrained import OFFICIAL_CHECKPOINTS
from bnnrepro.official import STATUS_FILE, fetch_entry, parse_entry, read_pins
from bnnrepro.report.accuracy import OFFICIAL_PROFILE, official_row

from conftest import offline_env
from test_export import data_root, lenet, rwth_state, tiny_mnist, write_rwth_folder  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
DEAD_URL = "http://127.0.0.1:9/"
RWTH_FILES = ("results.pt", "params.yml", "test_accuracy.txt")


def git_hash_object(path: Path) -> str:
    """The blob id as git itself computes it: an implementation independent of ours."""
    return subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout.strip()


def rwth_mirror(root: Path, published_accuracy: str = "9.915999999999999659e+01\n") -> Path:
    """<root>/pretrained/LeNet5/binary/ in the official layout: results.pt, params.yml, test_accuracy.txt."""
    folder = write_rwth_folder(root / "pretrained" / "LeNet5" / "binary", rwth_state(lenet()))
    (folder / "test_accuracy.txt").write_text(published_accuracy)
    return folder


def rwth_entry(folder: Path, name: str = "rwth_lenet5_binary", **changes) -> dict:
    """A params entry for the files of `folder`, checksummed by git, official URLs unreachable."""
    return {"mirror": "pretrained/LeNet5/binary",
            "files": {f: {"git_blob": git_hash_object(folder / f), "url": DEAD_URL + f} for f in RWTH_FILES}, **changes}


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def run_stage(tmp: Path, name: str, entry: dict, mirror: Path | None) -> subprocess.CompletedProcess:
    (tmp / "params.yaml").write_text(yaml.safe_dump({"official": {name: entry}}))
    env = offline_env()
    env.pop("BNNREPRO_MIRROR", None)
    if mirror is not None:
        env["BNNREPRO_MIRROR"] = str(mirror)
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, str(REPO / "stages" / "fetch_official.py"), name,
                           "--out", f"data/official/{name}", "--status", f"reports/official/fetch/{name}.json",
                           "--pins", "official_sha256.yml"],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=120)


def test_git_blob_id_is_what_git_computes(tmp_path):
    for data in (b"", b"abc", bytes(range(256)) * 5000):  # the last one spans several read chunks
        (tmp_path / "f").write_bytes(data)
        by_hand = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        assert git_blob_id(tmp_path / "f") == by_hand == git_hash_object(tmp_path / "f")


def test_published_blob_ids_match_the_published_files_we_ship():
    """params.yml and test_accuracy.txt of each RWTH run are also in reference/rwth/: same bytes, same ids."""
    for name, folder in [("rwth_lenet5_binary", "lenet5_binary"), ("rwth_lenet5_float", "lenet5_float"),
                         ("rwth_vggnet7_binary", "vggnet7_binary"), ("rwth_vggnet7_float", "vggnet7_float")]:
        files = PARAMS["official"][name]["files"]
        for f in ("params.yml", "test_accuracy.txt"):
            assert git_blob_id(REPO / "reference" / "rwth" / folder / f) == files[f]["git_blob"], (name, f)
        assert files["results.pt"]["url"].endswith("/" + PARAMS["official"][name]["mirror"] + "/results.pt")


def test_params_entries_are_valid_and_agree_with_the_code():
    for name, raw in PARAMS["official"].items():
        parse_entry(name, raw)
    for name, checkpoint in OFFICIAL_CHECKPOINTS.items():  # BinSFO's checkpoints: one source of URLs and keys
        (filename, spec), = PARAMS["official"][name]["files"].items()
        assert (filename, spec["url"], spec["checkpoint_key"]) == (checkpoint.filename, checkpoint.url,
                                                                    checkpoint.state_key)
    for name, item in PARAMS["pretrained"].items():  # every official infer stage reads a fetch stage's folder
        if name.startswith("official_"):
            assert item["model"] == f"data/official/{name.removeprefix('official_')}"


@pytest.mark.parametrize("raw, words", [
    ({"mirror": "m", "files": {"a.pt": {"url": DEAD_URL}}}, ["no published checksum", "checkpoint_key"]),
    ({"mirror": "m", "files": {"a.pt": {"sha265": "0" * 64}}}, ["unknown key", "sha265"]),
    ({"files": {"a.pt": {"md5": "0"}}}, ["needs 'mirror'"]),
])
def test_bad_entries_are_refused(raw, words):
    with pytest.raises(ValueError) as e:
        parse_entry("x", raw)
    assert all(w in str(e.value) for w in words + ["official.x"])


def test_fetch_from_mirror_verifies_every_file_and_hands_it_on_intact(tmp_path):
    source = rwth_mirror(tmp_path / "mirror")
    out = tmp_path / "out"
    status = fetch_entry(parse_entry("rwth_lenet5_binary", rwth_entry(source)), out, tmp_path / "pins.yml",
                         tmp_path / "drop", str(tmp_path / "mirror"))
    assert status["status"] == "fetched"
    assert files_in(out) == sorted([*RWTH_FILES, STATUS_FILE])  # no temporary file left
    for f in RWTH_FILES:
        assert (out / f).read_bytes() == (source / f).read_bytes()
        assert status["files"][f]["sha256"] == hashlib.sha256((source / f).read_bytes()).hexdigest()
        assert "published git blob id" in status["files"][f]["verified"]
    assert json.loads((out / STATUS_FILE).read_text()) == status
    assert read_pins(tmp_path / "pins.yml") == {}  # published checksums are never pinned


def test_a_copy_in_the_drop_folder_comes_before_the_mirror(tmp_path):
    source = rwth_mirror(tmp_path / "drop")
    status = fetch_entry(parse_entry("rwth_lenet5_binary", rwth_entry(source)), tmp_path / "out",
                         tmp_path / "pins.yml", tmp_path / "drop", None)
    assert status["status"] == "fetched"


def test_sha256_verification_and_mismatch(tmp_path):
    (tmp_path / "mirror" / "w").mkdir(parents=True)
    data = b"weights" * 1000
    (tmp_path / "mirror" / "w" / "f.bin").write_bytes(data)
    good = Resource("f.bin", None, (DEAD_URL,), sha256=hashlib.sha256(data).hexdigest())
    assert fetch(good, "w", tmp_path / "ok", str(tmp_path / "mirror")).read_bytes() == data
    bad = Resource("f.bin", None, (DEAD_URL,), sha256=hashlib.sha256(data + b"x").hexdigest())
    with pytest.raises(DownloadError) as e:
        fetch(bad, "w", tmp_path / "bad", str(tmp_path / "mirror"))
    assert e.value.corrupt and "SHA-256" in str(e.value) and "checksum mismatch" in str(e.value)
    assert files_in(tmp_path / "bad") == []


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_mirror_copy_stops_the_stage_and_leaves_nothing(tmp_path, damage):
    source = rwth_mirror(tmp_path / "mirror")
    entry = rwth_entry(source)
    data = bytearray((source / "results.pt").read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2:]
    (source / "results.pt").write_bytes(bytes(data))
    proc = run_stage(tmp_path, "rwth_lenet5_binary", entry, tmp_path / "mirror")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "checksum mismatch" in proc.stderr and entry["files"]["results.pt"]["git_blob"] in proc.stderr
    assert "Traceback" not in proc.stderr
    assert files_in(tmp_path / "data" / "official" / "rwth_lenet5_binary") == []  # params.yml was not kept either
    assert not (tmp_path / "reports").exists()


def test_offline_without_a_copy_records_not_fetched_and_exits_0(tmp_path):
    source = rwth_mirror(tmp_path / "elsewhere")
    entry = rwth_entry(source)
    (tmp_path / "mirror" / "pretrained" / "LeNet5" / "binary").mkdir(parents=True)
    shutil.copy(source / "params.yml", tmp_path / "mirror" / "pretrained" / "LeNet5" / "binary")  # only one file
    proc = run_stage(tmp_path, "rwth_lenet5_binary", entry, tmp_path / "mirror")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "data" / "official" / "rwth_lenet5_binary"
    assert files_in(out) == [STATUS_FILE]  # all or nothing: the params.yml it did get is not kept
    status = json.loads((out / STATUS_FILE).read_text())
    assert status == json.loads((tmp_path / "reports" / "official" / "fetch" / "rwth_lenet5_binary.json").read_text())
    assert status["status"] == "not fetched"
    reason = status["reason"]
    assert "results.pt" in reason and "test_accuracy.txt" in reason and "params.yml" not in reason.split(";")[0]
    assert "data/pretrained/LeNet5/binary/" in reason and "<mirror>/pretrained/LeNet5/binary/" in reason
    assert "dvc repro -f fetch@rwth_lenet5_binary" in reason
    assert any(DEAD_URL in tried for tried in status["tried"]["results.pt"])
    assert "$BNNREPRO_MIRROR/pretrained/LeNet5/binary/results.pt: no such file" in status["tried"]["results.pt"]
    assert str(tmp_path) not in json.dumps(status)  # the same record on every machine
    assert "not fetched" in proc.stdout


def official_checkpoint_file(path: Path, key: str, seed: int) -> None:
    """A checkpoint in the AdamBNN / BCDNet nesting: {key: DataParallel state_dict, ...}."""
    gen = torch.Generator().manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 256, key: {"module.feature.0.conv1.weight": torch.randn(4, 3, 3, 3, generator=gen)}}, path)


@pytest.mark.parametrize("name", ["adambnn", "bcdnet"])
def test_unpublished_checksum_is_recorded_at_first_fetch_then_enforced(tmp_path, name):
    entry = {**PARAMS["official"][name]}
    (filename, spec), = entry["files"].items()
    entry["files"] = {filename: {**spec, "url": DEAD_URL + filename}}
    mirror_file = tmp_path / "mirror" / "pretrained" / filename
    official_checkpoint_file(mirror_file, spec["checkpoint_key"], seed=0)

    first = run_stage(tmp_path, name, entry, tmp_path / "mirror")
    assert first.returncode == 0, first.stderr
    sha = hashlib.sha256(mirror_file.read_bytes()).hexdigest()
    assert read_pins(tmp_path / "official_sha256.yml") == {f"{name}/{filename}": sha}
    status = json.loads((tmp_path / "data" / "official" / name / STATUS_FILE).read_text())
    assert status["files"][filename]["sha256"] == sha and "first fetch" in status["files"][filename]["verified"]
    again = run_stage(tmp_path, name, entry, tmp_path / "mirror")  # the same bytes: verified against the record
    assert again.returncode == 0, again.stderr
    assert "recorded at its first fetch" in again.stdout

    official_checkpoint_file(mirror_file, spec["checkpoint_key"], seed=1)  # another (valid) checkpoint
    shutil.rmtree(tmp_path / "data")
    changed = run_stage(tmp_path, name, entry, tmp_path / "mirror")
    assert changed.returncode == 2
    assert "checksum mismatch" in changed.stderr and sha in changed.stderr
    assert files_in(tmp_path / "data" / "official" / name) == []
    assert read_pins(tmp_path / "official_sha256.yml") == {f"{name}/{filename}": sha}  # the record is kept


@pytest.mark.parametrize("content", ["truncated", "web page", "other checkpoint"])
def test_first_fetch_refuses_what_is_not_the_checkpoint(tmp_path, content):
    entry = {**PARAMS["official"]["adambnn"]}
    (filename, spec), = entry["files"].items()
    entry["files"] = {filename: {**spec, "url": DEAD_URL + filename}}
    mirror_file = tmp_path / "mirror" / "pretrained" / filename
    official_checkpoint_file(mirror_file, "state_dict" if content != "other checkpoint" else "model", seed=0)
    if content == "truncated":
        mirror_file.write_bytes(mirror_file.read_bytes()[:-100])
    elif content == "web page":
        mirror_file.write_text("<!DOCTYPE html><html>Sign in to SharePoint</html>")
    proc = run_stage(tmp_path, "adambnn", entry, tmp_path / "mirror")
    assert proc.returncode == 2
    assert ("not a checkpoint" if content != "other checkpoint" else "without the 'state_dict' entry") in proc.stderr
    assert files_in(tmp_path / "data" / "official" / "adambnn") == []
    assert read_pins(tmp_path / "official_sha256.yml") == {}  # nothing recorded


def test_fetch_then_infer_gives_the_accuracy_of_the_published_file(tmp_path, data_root):
    source = rwth_mirror(tmp_path / "mirror")
    proc = run_stage(tmp_path, "rwth_lenet5_binary", rwth_entry(source), tmp_path / "mirror")
    assert proc.returncode == 0, proc.stderr
    fetched = tmp_path / "data" / "official" / "rwth_lenet5_binary"
    assert infer.main(["--model-path", str(fetched), "--data-root", str(data_root), "--device", "cpu",
                       "--record-not-run", "--out", str(tmp_path / "via_fetch.json")]) == 0
    assert infer.main(["--model-path", str(source), "--data-root", str(data_root), "--device", "cpu",
                       "--out", str(tmp_path / "direct.json")]) == 0
    via_fetch, direct = (json.loads((tmp_path / f).read_text()) for f in ("via_fetch.json", "direct.json"))
    assert via_fetch["accuracy"] == direct["accuracy"] and via_fetch["top5"] == direct["top5"]
    assert via_fetch["n"] == 100 and via_fetch["paper"] == "rwth" and via_fetch["model"] == "lenet5"
    assert via_fetch["reported_top1"] == 99.16  # the published test_accuracy.txt beside the weights
    row = official_row("rwth_lenet5_binary", via_fetch)
    assert row["experiment"] == "official/rwth_lenet5_binary" and row["profile"] == OFFICIAL_PROFILE
    assert row["reproduced_top1"] == via_fetch["accuracy"]
    assert row["difference"] == round(via_fetch["accuracy"] - 99.16, 2)


def test_infer_of_a_not_fetched_folder_records_not_run(tmp_path, data_root, capsys):
    proc = run_stage(tmp_path, "rwth_lenet5_binary", rwth_entry(rwth_mirror(tmp_path / "elsewhere")), None)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "data" / "official" / "rwth_lenet5_binary"
    out = tmp_path / "result.json"
    assert infer.main(["--model-path", str(folder), "--data-root", str(data_root), "--record-not-run",
                       "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["status"] == "not run" and result["reason"].startswith("not fetched: no source has ")
    assert "results.pt" in result["reason"] and "dvc repro -f fetch@rwth_lenet5_binary" in result["reason"]
    assert official_row("rwth_lenet5_binary", result)["status"] == f"not run: {result['reason']}"
    capsys.readouterr()
    assert run_cli(infer.main, ["--model-path", str(folder), "--data-root", str(data_root)]) == 2  # by hand: an error
    assert "not fetched" in capsys.readouterr().err


def test_infer_on_a_dataset_the_profile_left_out_records_not_run(tmp_path):
    folder = rwth_mirror(tmp_path / "mirror")
    root = tmp_path / "data"
    (root / "prepared" / "mnist").mkdir(parents=True)
    (root / "prepared" / "mnist" / SKIP_FILE).write_text(json.dumps({"reason": "not prepared in the quick profile"}))
    out = tmp_path / "result.json"
    assert infer.main(["--model-path", str(folder), "--data-root", str(root), "--record-not-run",
                       "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result == {"status": "not run", "reason": "mnist not prepared in the quick profile",
                      "model_path": str(folder), "paper": "rwth", "dataset": "mnist"}
    assert not (root / "raw").exists()  # nothing was downloaded


@pytest.fixture
def loopback_server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving tmp_path/www (files as octet-stream, *.html as a web page).
    Loopback only: the dead proxy stays in place for every other host."""
    import functools
    import http.server
    import threading

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    (tmp_path / "www").mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=tmp_path / "www"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    yield tmp_path / "www", f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_official_url_is_used_when_no_copy_exists(tmp_path, loopback_server):
    www, base = loopback_server
    source = rwth_mirror(tmp_path / "src")
    entry = rwth_entry(source)
    for f in RWTH_FILES:
        shutil.copy(source / f, www / f)
        entry["files"][f]["url"] = base + f
    status = fetch_entry(parse_entry("rwth_lenet5_binary", entry), tmp_path / "out", tmp_path / "pins.yml",
                         tmp_path / "drop", None)
    assert status["status"] == "fetched"
    assert all((tmp_path / "out" / f).read_bytes() == (source / f).read_bytes() for f in RWTH_FILES)


def test_a_share_link_serving_a_web_page_is_not_fetched_not_an_error(tmp_path, loopback_server):
    www, base = loopback_server
    (www / "share.html").write_text("<!DOCTYPE html><html>Sign in to view this file</html>")
    entry = {"mirror": "pretrained", "files": {"AdamBNN.mobilenet.pth.tar": {"url": base + "share.html",
                                                                            "checkpoint_key": "state_dict"}}}
    status = fetch_entry(parse_entry("adambnn", entry), tmp_path / "out", tmp_path / "pins.yml", tmp_path / "drop", None)
    assert status["status"] == "not fetched"
    assert "web page" in status["tried"]["AdamBNN.mobilenet.pth.tar"][-1]
    assert files_in(tmp_path / "out") == [STATUS_FILE] and read_pins(tmp_path / "pins.yml") == {}
