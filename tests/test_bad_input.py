"""Hostile input to every entry point (issue 19): one line `error: <file>: <what> - <what to do>`, exit 2,
nothing written; and the eight cases that did not hold before, each reproduced here."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pathspec
import pytest
import torch
from safetensors.torch import save as save_safetensors

from bnnrepro.cli import entry_point
from bnnrepro.config import ConfigError, load_experiment, load_recipe, parse_override, skip_reason
from bnnrepro.errors import EXIT_BAD_INPUT, BadFileError, MissingFileError, run_cli
from bnnrepro.export import load_model, save_model
from bnnrepro.models import build_model
from bnnrepro.runtime import git_commit

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO / "config" / "rwth" / "binary_mnist.yml"
LENET_INPUT = {"channels": 1, "image_size": 28, "num_classes": 10}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The command in a fresh process: the entry point as a user starts it."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def cli(*args: str) -> subprocess.CompletedProcess:
    """`run(*args)` in this process (no second torch import: seconds per case), through the same run_cli."""
    target, *argv = args[1:] if args[0] == "-m" else args
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = run_cli(entry_point(target), argv)
    return subprocess.CompletedProcess(args, code, "", stderr.getvalue())


def assert_clean_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, and stderr's last line is the one error line (logging may precede it), naming `words`."""
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and " - " in line, line
    for word in words:
        assert word in line, (word, line)
    return line


def train_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["stages/train.py", "run", "--config", str(MNIST), "--data", str(tmp_path / "no_data"),
            "--models", str(tmp_path / "models"), "--reports", str(tmp_path / "reports"),
            "--checkpoints", str(tmp_path / "checkpoints"), "--timing", str(tmp_path / "timing"), *extra]


def lenet_folder(tmp_path: Path, name: str = "m", fmt: str = "latent") -> Path:
    cfg = load_experiment(MNIST)
    torch.manual_seed(0)
    return save_model(build_model(cfg.model, 1, 10, 28), tmp_path / name, cfg, LENET_INPUT, fmt)


# ------------------------------------------------------------------- 1. YAML alias bomb

ALIAS_BOMB = """\
a: &a [x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
"""


def test_alias_bomb_is_refused_before_it_expands(tmp_path):
    path = tmp_path / "bomb.yml"
    path.write_text(ALIAS_BOMB + MNIST.read_text())  # 2 KB that would expand to 9^5 strings
    with pytest.raises(ConfigError, match="anchors and aliases") as info:
        load_experiment(path)
    assert str(path) in str(info.value)


def test_anchors_aliases_and_merge_keys_are_refused_everywhere(tmp_path):
    anchor_only = tmp_path / "anchor.yml"
    anchor_only.write_text(MNIST.read_text().replace("optim:", "optim: &opt", 1))
    merge = tmp_path / "recipes.yml"
    merge.write_text("base: &base {label: b}\nother: {<<: *base, overrides: {}}\n")
    for load in (lambda: load_experiment(anchor_only), lambda: load_recipe(f"{merge}:other"),
                 lambda: parse_override("optim.args=*x")):
        with pytest.raises(ConfigError, match="anchors and aliases"):
            load()


def test_alias_bomb_on_the_train_command_line_writes_nothing(tmp_path):
    path = tmp_path / "bomb.yml"
    path.write_text(MNIST.read_text() + ALIAS_BOMB)
    proc = cli(*train_args(tmp_path)[:3], str(path), *train_args(tmp_path)[4:])
    assert_clean_error(proc, str(path), "anchors and aliases")
    assert not (tmp_path / "models").exists() and not (tmp_path / "reports").exists()


# ------------------------------------------------------------------- 2. misspelt profile

def test_misspelt_profile_is_refused():
    for call in (lambda: load_experiment(MNIST, profile="quik"), lambda: skip_reason(MNIST, "quik")):
        with pytest.raises(ConfigError, match=r"unknown profile 'quik' - use one of \['quick', 'paper'\]"):
            call()


def test_config_naming_an_unknown_profile_is_refused(tmp_path):
    path = tmp_path / "typo.yml"
    path.write_text(MNIST.read_text().replace("\n  quick:", "\n  quik:"))
    assert "quik:" in path.read_text()
    with pytest.raises(ConfigError, match="unknown profile 'quik'") as info:
        load_experiment(path)  # refused even when the profile asked for is another one
    assert str(path) in str(info.value)


def test_misspelt_profile_on_the_train_command_line(tmp_path):
    assert_clean_error(run(*train_args(tmp_path, "--profile", "quik")), "--profile", "quik", "quick")
    assert not (tmp_path / "models").exists()


# ------------------------------------------------------------------- 3. YAML 1.2 float spellings

@pytest.mark.parametrize("text,value", [("1e-3", 1e-3), ("1E-2", 1e-2), ("+2e1", 20.0), ("-1e+0", -1.0),
                                        ("1.0e-3", 1e-3), ("0.5", 0.5), ("3", 3.0)])
def test_float_spellings_in_overrides_and_files(tmp_path, text, value):
    key, parsed = parse_override(f"optim.momentum={text}")
    assert parsed == value
    if value > 0:
        assert load_experiment(MNIST, {"optim.lr": parse_override(f"optim.lr={text}")[1]}).optim.lr == value
        path = tmp_path / "lr.yml"
        path.write_text(MNIST.read_text().replace("lr: 0.01", f"lr: {text}"))
        assert load_experiment(path).optim.lr == value


def test_a_string_where_a_float_belongs_says_how_to_write_it():
    with pytest.raises(ConfigError, match=r"optim.lr: expected float, got str '1e-3x' \(write numbers unquoted"):
        load_experiment(MNIST, {"optim.lr": "1e-3x"})


# ------------------------------------------------------------------- 4. non-finite values

@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", ".NaN", "[1.0, .inf]", "{threshold: .nan}"])
def test_non_finite_values_are_refused(text):
    with pytest.raises(ConfigError, match="not a finite number - give a finite value"):
        parse_override(f"optim.lr={text}")


def test_infinite_lr_on_the_train_command_line(tmp_path):
    assert_clean_error(cli(*train_args(tmp_path, "-o", "optim.lr=.inf")), "optim.lr=.inf", "not a finite number")
    assert not (tmp_path / "models").exists()


# (training that reaches non-finite weights with a finite loss: tests/test_train.py
#  test_non_finite_weights_stop_training_though_the_loss_is_finite)

def test_a_model_file_with_nan_weights_is_refused(tmp_path):
    folder = lenet_folder(tmp_path)
    state = {k: v.clone() for k, v in load_model(folder)[0].state_dict().items()}
    state["fc2.weight"][0, 0] = float("nan")
    (folder / "model.safetensors").write_bytes(save_safetensors(state, metadata={"encodings": "{}"}))
    with pytest.raises(BadFileError, match=r"\['fc2.weight'\] hold NaN or infinite values"):
        load_model(folder)


# ------------------------------------------------------------------- 5. tracebacks become messages

def test_non_utf8_config_and_a_folder_as_config(tmp_path):
    latin1 = tmp_path / "latin1.yml"
    latin1.write_bytes(MNIST.read_bytes() + "description: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text") as info:
        load_experiment(latin1)
    assert str(latin1) in str(info.value)
    with pytest.raises(ConfigError, match="is a folder, not a config file") as info:
        load_experiment(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert_clean_error(cli(*train_args(tmp_path)[:3], str(latin1), *train_args(tmp_path)[4:]), str(latin1), "UTF-8")


def test_every_train_config_error_is_one_line(tmp_path):
    assert_clean_error(cli(*train_args(tmp_path, "-o", "optim.lrr=1")), str(MNIST), "lrr")
    assert_clean_error(cli(*train_args(tmp_path, "-o", "optim.lr=[1")), "optim.lr=[1", "not valid YAML")


def test_infer_on_metadata_without_config(tmp_path):
    folder = lenet_folder(tmp_path)
    meta = json.loads((folder / "metadata.json").read_text())
    del meta["config"]
    (folder / "metadata.json").write_text(json.dumps(meta))
    assert_clean_error(cli("-m", "bnnrepro.infer", "--model-path", str(folder)),
                       str(folder / "metadata.json"), "no 'config' entry")


def test_malformed_metadata_names_the_file(tmp_path):
    folder = lenet_folder(tmp_path)
    (folder / "metadata.json").write_text('{"format": "latent", "config": ')
    line = assert_clean_error(cli("-m", "bnnrepro.infer", "--model-path", str(folder)),
                              str(folder / "metadata.json"), "not valid JSON")
    assert "Expecting value" in line


@pytest.mark.parametrize("encodings", ["[1, 2]", '{"conv1.weight": 3}', '{"conv1.weight": {"encoding": "x"}}',
                                       '{"conv1.weight": {"encoding": "sign_bits", "shape": [2]}}',
                                       '{"nope": {"encoding": "sign_bits", "shape": [16, 1, 5, 5]}}', "{"])
def test_bad_encodings_entry_is_refused(tmp_path, encodings):
    folder = lenet_folder(tmp_path, fmt="packed")
    state = load_model(folder)[0].state_dict()
    (folder / "model.safetensors").write_bytes(save_safetensors(state, metadata={"encodings": encodings}))
    with pytest.raises(BadFileError) as info:
        load_model(folder)
    assert str(folder / "model.safetensors") in str(info.value)


def test_invalid_rwth_params_yml(tmp_path):
    folder = tmp_path / "rwth"
    folder.mkdir()
    torch.save({"model_best": {}}, folder / "results.pt")
    for text, words in [("net: [LeNet5\n", "not valid YAML"), ("- 1\n- 2\n", "expected a mapping"),
                        ("net: LeNet5\ndataset: mnist\nbinarize: 1\nswish_beta: [1]\n", "not a params.yml"),
                        ("net: LeNet5\ndataset: mnist\nbinarize: 1\ngradient_estimator: nope\n", "model.estimator")]:
        (folder / "params.yml").write_text(text)
        assert_clean_error(cli("-m", "bnnrepro.infer", "--model-path", str(folder)), str(folder / "params.yml"), words)


def test_missing_model_folder_and_unknown_device(tmp_path):
    assert_clean_error(cli("-m", "bnnrepro.infer", "--model-path", str(tmp_path / "nope")), str(tmp_path / "nope"))
    folder = lenet_folder(tmp_path)
    assert_clean_error(cli("-m", "bnnrepro.infer", "--model-path", str(folder), "--device", "gpu0"), "--device gpu0")


def test_run_cli_keeps_the_traceback_of_a_bug():
    def buggy(argv):
        raise KeyError("a bug, not bad input")

    with pytest.raises(KeyError):
        run_cli(buggy, [])


# ------------------------------------------------------------------- 6. temp files of killed writes
# (a training start removes them: tests/test_kill_resume.py)

def test_dvcignore_covers_temp_files():
    spec = pathspec.PathSpec.from_lines("gitwildmatch", (REPO / ".dvcignore").read_text().splitlines())
    for path in ("checkpoints/run/.0123abcd.pt.k2j3.tmp", "models/run/.model.safetensors.x8y.tmp",
                 "reports/runs/run/.metrics.json.abc.tmp"):
        assert spec.match_file(path), path
    assert not spec.match_file("models/run/model.safetensors")


# ------------------------------------------------------------------- 7. bounded reads

def sparse_safetensors(path: Path, name: str, shape: list[int]) -> int:
    """A valid safetensors file declaring one F32 tensor of `shape`, its data a hole (no disk, no memory)."""
    nbytes = 4 * int(torch.Size(shape).numel())
    header = json.dumps({name: {"dtype": "F32", "shape": shape, "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + nbytes)
    return nbytes


def test_eight_gigabyte_sparse_weights_are_refused_without_reading_them(tmp_path):
    folder = lenet_folder(tmp_path)
    nbytes = sparse_safetensors(folder / "model.safetensors", "conv1.weight", [2_000_000_000])
    assert nbytes == 8_000_000_000
    # in a fresh process, to measure its peak memory
    code = ("import resource, sys\nfrom bnnrepro.errors import run_cli\nimport bnnrepro.infer as infer\n"
            f"code = run_cli(infer.main, ['--model-path', {str(folder)!r}])\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(code)\n")
    proc = run("-c", code)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    error, peak_kb = proc.stderr.strip().splitlines()[-2:]
    assert error.startswith(f"error: {folder / 'model.safetensors'}: does not fit the LeNet5")
    assert "shape mismatch conv1.weight: file (2000000000,) vs model (32, 1, 5, 5)" in error
    assert int(peak_kb) < 1_500_000, f"peak RSS {int(peak_kb) // 1024} MB"


def test_declared_dtype_is_checked_against_the_architecture(tmp_path):
    folder = lenet_folder(tmp_path)
    state = dict(load_model(folder)[0].state_dict())
    state["fc1.weight"] = state["fc1.weight"].view(torch.int32)  # the same bytes, declared I32
    (folder / "model.safetensors").write_bytes(save_safetensors(state, metadata={"encodings": "{}"}))
    with pytest.raises(BadFileError, match=r"dtype mismatch fc1.weight: file torch.int32 vs model torch.float32"):
        load_model(folder)


def test_header_claiming_more_than_the_file_holds(tmp_path):
    folder = lenet_folder(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    for damaged in (struct.pack("<Q", 1 << 40) + data[8:], data[:8 + header_len + 10]):
        (folder / "model.safetensors").write_bytes(damaged)
        with pytest.raises(BadFileError, match="truncated or corrupted"):
            load_model(folder)


def test_metadata_declaring_a_huge_input_is_refused(tmp_path):
    folder = lenet_folder(tmp_path)
    meta = json.loads((folder / "metadata.json").read_text())
    meta["input"]["num_classes"] = 10 ** 9  # the network built from it would need gigabytes
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BadFileError, match="input must hold positive integers"):
        load_model(folder)


def test_missing_model_file(tmp_path):
    folder = lenet_folder(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(MissingFileError, match="'model.safetensors' is missing"):
        load_model(folder)


# ------------------------------------------------------------------- 8. true provenance

def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_only_code_changes_make_the_tree_dirty(tmp_path, monkeypatch):
    git("init", "-q", cwd=tmp_path)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "grids" / "g").mkdir(parents=True)
    (tmp_path / "grids" / "g" / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "code.py").write_text("x = 1\n")
    git("add", ".", cwd=tmp_path)
    git("commit", "-q", "-m", "c", cwd=tmp_path)
    monkeypatch.chdir(tmp_path / "sub")  # from a subfolder too: dvc.lock is the top-level one
    clean = git_commit()
    assert len(clean) >= 7 and not clean.endswith("-dirty")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")  # what dvc repro does mid-run
    (tmp_path / "grids" / "g" / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")  # a grid's lock too
    (tmp_path / "sub" / "untracked.txt").write_text("x")
    assert git_commit() == clean
    (tmp_path / "sub" / "code.py").write_text("x = 2\n")
    assert git_commit() == clean + "-dirty"


@pytest.mark.parametrize("batch", ["0", "x", "-3"])
def test_memory_stage_refuses_a_bad_step_batch(tmp_path, batch):
    proc = cli("stages/memory.py", "--configs", "config/rwth/binary_mnist.yml",
               "--step-configs", f"config/binsfo/finetune_adambnn.yml={batch}", "--out", str(tmp_path))
    assert_clean_error(proc, "--step-configs", "not a positive integer")
    assert not any(tmp_path.iterdir())  # nothing written
