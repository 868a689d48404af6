"""Saved models (latent and 1-bit packed), official RWTH run folders, and the inference CLI
(docs/rwth.md#official-checkpoints)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml
from safetensors import safe_open

import bnnrepro.infer as infer
from bnnrepro.config import load_experiment
from bnnrepro.data.prepared import Dataset, write_prepared
from bnnrepro.engine.train import fit
from bnnrepro.errors import run_cli
from bnnrepro.export import load_model, pack_signs, save_model, unpack_signs
from bnnrepro.models import build_model
from bnnrepro.nn.layers import quantized_layers
from bnnrepro.nn.quantizers import sign

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "config" / "rwth"
LENET_INPUT = {"channels": 1, "image_size": 28, "num_classes": 10}
VGG_INPUT = {"channels": 3, "image_size": 32, "num_classes": 10}
RWTH_PARAMS = [REPO.parent / "shared" / "reference" / "rwth" / "lenet5_binary" / "params.yml",
               REPO / "reference" / "rwth" / "lenet5_binary" / "params.yml"]


def config(name: str = "binary_mnist", **model_changes):
    cfg = load_experiment(CONFIGS / f"{name}.yml")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model_changes))


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Latent weights in [-1, 1] with some exact zeros, and non-trivial BN parameters and running stats."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in quantized_layers(model):
            w = torch.rand(layer.weight.shape, generator=gen) * 2 - 1
            w.view(-1)[::97] = 0.0
            w.view(-1)[1::101] = -0.0
            layer.weight.copy_(w)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 2 + 0.1)
                m.num_batches_tracked.fill_(7)
                if m.affine:
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
    return model.eval()


def lenet(cfg=None, seed: int = 0) -> nn.Module:
    cfg = cfg or config()
    torch.manual_seed(seed)
    return randomize_(build_model(cfg.model, 1, 10, 28), seed)


def mnist_like_inputs(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def synthetic_split(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, 10, (n,), generator=gen)
    images = torch.randint(0, 60, (n, 1, 28, 28), generator=gen, dtype=torch.uint8)
    rows = torch.arange(28)
    band = (rows[None] >= 2 + 2 * labels[:, None]) & (rows[None] < 5 + 2 * labels[:, None])
    images[band[:, None, :, None].expand(-1, 1, -1, 28)] = 255
    return images, labels


@pytest.fixture(scope="module")
def tiny_mnist() -> Dataset:
    gen = torch.Generator().manual_seed(0)
    tr_x, tr_y = synthetic_split(300, gen)
    te_x, te_y = synthetic_split(100, gen)
    return Dataset("mnist", 10, 255, tr_x, tr_y, te_x, te_y, sha256="x")


@pytest.fixture(scope="module")
def trained(tiny_mnist, tmp_path_factory):
    """A binary LeNet5 trained for one epoch on the synthetic data (far above chance)."""
    before = torch.are_deterministic_algorithms_enabled()
    cfg = load_experiment(CONFIGS / "binary_mnist.yml",
                          {"train.epochs": 1, "data.val_size": 100, "data.batch_size": 50,
                           "data.eval_batch_size": 100, "optim.lr": 1.0})
    result = fit(cfg, tiny_mnist, torch.device("cpu"), tmp_path_factory.mktemp("fit") / "ckpt.pt", progress=False)
    torch.use_deterministic_algorithms(before)
    return result.model.eval(), cfg, result  # channels_last, as fit() leaves it


@pytest.fixture(scope="module")
def data_root(tiny_mnist, tmp_path_factory) -> Path:
    """A data root holding prepared/mnist/data.safetensors in the prepared-dataset format."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "prepared" / "mnist"
    folder.mkdir(parents=True)
    write_prepared("mnist", {"train_images": tiny_mnist.train_images, "train_labels": tiny_mnist.train_labels,
                             "test_images": tiny_mnist.test_images, "test_labels": tiny_mnist.test_labels}, folder)
    return root


def state_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


# --------------------------------------------------------------------------------- sign packing

@pytest.mark.parametrize("shape", [[13], [1], [8], [9], [3, 5, 7], [2, 1, 3, 3]])
def test_pack_unpack_signs_round_trip(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    w.view(-1)[0] = 0.0
    if w.numel() > 2:
        w.view(-1)[2] = -0.0
    packed = pack_signs(w)
    assert packed.dtype == torch.uint8
    assert packed.numel() == -(-w.numel() // 8)  # ceil(n / 8) bytes
    out = unpack_signs(packed, shape)
    assert out.dtype == torch.float32 and list(out.shape) == shape
    assert torch.equal(out, torch.where(w >= 0, 1.0, -1.0))  # zeros of either sign -> +1


def test_pack_signs_bit_order_is_little_endian():
    w = torch.tensor([1.0, -1, -1, -1, -1, -1, -1, -1, 1, -1, -1, -1, 1])
    assert pack_signs(w).tolist() == [0b00000001, 0b00010001]


# ---------------------------------------------------------------------------- save / load_model

@pytest.mark.parametrize("sign_rule", ["round_half_even", "zero_positive"])
def test_packed_model_reloads_with_identical_logits(tmp_path, sign_rule):
    saved_cfg = config(sign_rule=sign_rule)
    model = lenet(saved_cfg)
    x = mnist_like_inputs()
    with torch.no_grad():
        expected = model(x)
    save_model(model, tmp_path / "m", saved_cfg, LENET_INPUT, fmt="packed", metadata={"note": "test"})
    loaded, cfg, meta = load_model(tmp_path / "m")
    assert not loaded.training
    assert cfg == saved_cfg and meta["format"] == "packed" and meta["note"] == "test" and meta["input"] == LENET_INPUT
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    # the loaded latent weights are the signs the forward used (a latent 0 is -1 under round_half_even,
    # +1 under zero_positive); everything else is copied exactly
    state, loaded_state = model.state_dict(), loaded.state_dict()
    zero_gives = -1.0 if sign_rule == "round_half_even" else 1.0
    for key in state:
        if key in ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"):
            signs = torch.where(state[key] > 0, 1.0, torch.where(state[key] == 0, zero_gives, -1.0))
            assert (state[key] == 0).any(), key  # randomize_ put exact zeros there
            assert torch.equal(loaded_state[key], signs), key
        else:
            assert torch.equal(loaded_state[key], state[key]), key


def test_packed_trained_model_reloads_with_identical_logits(trained, tmp_path):
    model, cfg, _ = trained
    x = mnist_like_inputs(32, seed=5)
    with torch.no_grad():
        expected = model(x)
    save_model(model, tmp_path / "m", cfg, LENET_INPUT, fmt="packed")
    loaded, _, _ = load_model(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


def test_packed_file_is_small_and_holds_bits(tmp_path):
    model = lenet()
    save_model(model, tmp_path / "m", config(), LENET_INPUT, fmt="packed")
    path = tmp_path / "m" / "model.safetensors"
    assert path.stat().st_size * 20 < state_bytes(model)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert json.loads((tmp_path / "m" / "metadata.json").read_text())["format"] == "packed"
        encodings = json.loads(meta["encodings"])
        assert set(encodings) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
        assert encodings["fc1.weight"] == {"encoding": "sign_bits", "shape": [512, 1600]}
        assert f.get_tensor("fc1.weight").dtype == torch.uint8
        assert f.get_tensor("fc1.weight").numel() == 512 * 1600 // 8
        assert f.get_tensor("bn1.weight").dtype == torch.float32


def test_latent_model_round_trips_exactly(tmp_path):
    model = lenet()
    x = mnist_like_inputs()
    save_model(model, tmp_path / "m", config(), LENET_INPUT)  # default: latent
    loaded, _, meta = load_model(tmp_path / "m")
    assert meta["format"] == "latent"
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    for key in state:
        assert torch.equal(loaded_state[key], state[key]), key
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_float_model_round_trips_in_both_formats(tmp_path):
    cfg = config("float_mnist")
    model = lenet(cfg)
    x = mnist_like_inputs()
    with torch.no_grad():
        expected = model(x)
    for fmt in ("latent", "packed"):  # packing leaves fp layers alone
        save_model(model, tmp_path / fmt, cfg, LENET_INPUT, fmt=fmt)
        loaded, loaded_cfg, _ = load_model(tmp_path / fmt)
        assert loaded_cfg == cfg
        with torch.no_grad():
            assert torch.equal(loaded(x), expected), fmt


def test_ternary_model_packs_to_int8(tmp_path):
    cfg = config(ternary_weights="0110", ternary_acts="010")
    model = lenet(cfg)
    x = mnist_like_inputs()
    with torch.no_grad():
        expected = model(x)
    save_model(model, tmp_path / "m", cfg, LENET_INPUT, fmt="packed")
    path = tmp_path / "m" / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        encodings = json.loads(f.metadata()["encodings"])
        assert encodings["conv2.weight"]["encoding"] == "ternary_int8"
        assert encodings["conv1.weight"]["encoding"] == "sign_bits"
        for key in ("conv2.weight", "fc1.weight"):
            t = f.get_tensor(key)
            assert t.dtype == torch.int8 and set(t.unique().tolist()) == {-1, 0, 1}
        assert f.get_tensor("conv1.weight").dtype == torch.uint8
    loaded, loaded_cfg, _ = load_model(tmp_path / "m")
    assert loaded_cfg.model.ternary_weights == "0110"
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


def test_unknown_format_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="format"):
        save_model(lenet(), tmp_path / "m", config(), LENET_INPUT, fmt="int2")


def test_load_model_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        load_model(tmp_path)


def test_truncated_safetensors_is_a_runtime_error(tmp_path):
    save_model(lenet(), tmp_path / "m", config(), LENET_INPUT, fmt="packed")
    path = tmp_path / "m" / "model.safetensors"
    data = path.read_bytes()
    for cut in (len(data) // 2, 40, 3):
        path.write_bytes(data[:cut])
        with pytest.raises(RuntimeError, match="truncated or corrupted"):
            load_model(tmp_path / "m")


def test_weights_of_another_architecture_do_not_fit(tmp_path):
    # float LeNet5 weights (with biases) into a binary LeNet5 folder
    save_model(lenet(config("float_mnist")), tmp_path / "float", config("float_mnist"), LENET_INPUT)
    save_model(lenet(), tmp_path / "binary", config(), LENET_INPUT)
    shutil.copy(tmp_path / "float" / "model.safetensors", tmp_path / "binary" / "model.safetensors")
    with pytest.raises(RuntimeError, match="does not fit the LeNet5") as info:
        load_model(tmp_path / "binary")
    assert "conv1.bias" in str(info.value)
    # a half-width LeNet5 into a full-width one: same keys, other shapes
    half = config(width=0.5)
    save_model(lenet(half), tmp_path / "half", half, LENET_INPUT, fmt="packed")
    shutil.copy(tmp_path / "half" / "model.safetensors", tmp_path / "binary" / "model.safetensors")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        load_model(tmp_path / "binary")
    # (small) VGGNet7 weights into LeNet5 metadata
    vcfg = config("binary_cifar10", width=0.125)
    torch.manual_seed(0)
    save_model(build_model(vcfg.model, 3, 10, 32), tmp_path / "vgg", vcfg, VGG_INPUT, fmt="packed")
    shutil.copy(tmp_path / "vgg" / "model.safetensors", tmp_path / "binary" / "model.safetensors")
    with pytest.raises(RuntimeError, match="does not fit"):
        load_model(tmp_path / "binary")


# ------------------------------------------------------------------------- official RWTH folders

def write_rwth_folder(folder: Path, model_best) -> Path:
    folder.mkdir(parents=True)
    source = next((p for p in RWTH_PARAMS if p.is_file()), None)
    if source is not None:
        shutil.copy(source, folder / "params.yml")
    else:
        params = {"net": "LeNet5", "dataset": "mnist", "binarize": True, "gradient_estimator": "bnn",
                  "layer_order": "CPBA", "no_biases": True, "no_batchnorm": False, "width_infl": 1,
                  "swish_beta": 10, "tern_weights": "0000", "tern_acts": "000", "first_weights_fullprecision": False,
                  "last_weights_fullprecision": False, "batch_size": 50, "optimizer": "sgd", "lr": 0.01,
                  "epochs": 500, "seed": 2}
        (folder / "params.yml").write_text(yaml.safe_dump(params))
    torch.save({"losses": [], "accuracies": [96.5, 97.0], "model_best": model_best, "epoch_best": 2},
               folder / "results.pt")
    return folder


def rwth_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What the RWTH code saves: +-1 fp32 weights in binary layers (its binarizer's: a latent 0 is -1),
    keys prefixed by nn.DataParallel."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name in ("conv1", "conv2", "fc1", "fc2"):
        state[f"{name}.weight"] = sign(state[f"{name}.weight"], "round_half_even")
    return {f"module.{k}": v for k, v in state.items()}


def test_rwth_folder_loads_with_identical_logits(tmp_path):
    model = lenet()
    folder = write_rwth_folder(tmp_path / "lenet5_binary", rwth_state(model))
    loaded, cfg = infer.load_any(folder, torch.device("cpu"))
    assert not loaded.training
    assert cfg.data.dataset == "mnist" and cfg.model.arch == "lenet5" and cfg.model.weights == "binary"
    assert cfg.model.layer_order == "CPBA" and cfg.model.bias is False and cfg.model.estimator == "bnn"
    assert cfg.model.sign_rule == "round_half_even"  # the RWTH code's binarizer, for activations too
    assert cfg.train.tie_break == "first_max"  # and its accuracy count, output.max(1)
    x = mnist_like_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_rwth_folder_without_params_is_refused(tmp_path):
    folder = write_rwth_folder(tmp_path / "run", rwth_state(lenet()))
    (folder / "params.yml").unlink()
    with pytest.raises(FileNotFoundError, match="params.yml"):
        infer.load_any(folder, torch.device("cpu"))


def test_rwth_results_of_another_network_do_not_fit(tmp_path):
    float_model = lenet(config("float_mnist"))
    folder = write_rwth_folder(tmp_path / "run", {f"module.{k}": v for k, v in float_model.state_dict().items()})
    with pytest.raises(RuntimeError, match="does not fit"):
        infer.load_any(folder, torch.device("cpu"))


class _WritesMarker:
    """Unpickling this creates (opens for writing) the file at `path`: code execution on load."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_rwth_results_with_pickled_code_are_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    folder = write_rwth_folder(tmp_path / "run", {"conv1.weight": _WritesMarker(marker)})
    with pytest.raises(RuntimeError, match="refused|Cannot load"):
        infer.load_any(folder, torch.device("cpu"))
    assert not marker.exists()
    # control: the payload really runs under a plain (unsafe) torch.load
    control_marker = tmp_path / "control"
    torch.save({"model_best": _WritesMarker(control_marker)}, tmp_path / "control.pt")
    loaded = torch.load(tmp_path / "control.pt", weights_only=False)
    loaded["model_best"].close()
    assert control_marker.exists()
    assert not marker.exists()


def test_rwth_results_without_model_best_are_refused(tmp_path):
    folder = write_rwth_folder(tmp_path / "run", {})
    torch.save({"losses": [], "accuracies": []}, folder / "results.pt")
    with pytest.raises(RuntimeError, match="model_best"):
        infer.load_any(folder, torch.device("cpu"))


@pytest.mark.parametrize("model_best", [[torch.ones(2)], {"conv1.weight": "not a tensor"}, torch.ones(3)])
def test_rwth_model_best_that_is_not_a_state_dict_is_refused(tmp_path, model_best):
    folder = write_rwth_folder(tmp_path / "run", model_best)
    with pytest.raises(RuntimeError, match="not a state_dict"):
        infer.load_any(folder, torch.device("cpu"))


# -------------------------------------------------------------------------------- inference CLI

def run_infer(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "bnnrepro.infer", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_infer_cli_json_on_a_saved_model(trained, data_root, tmp_path):
    model, cfg, result = trained
    save_model(model, tmp_path / "m", cfg, LENET_INPUT, fmt="packed")
    proc = run_infer("--model-path", str(tmp_path / "m"), "--json", "--data-root", str(data_root), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["dataset"] == "mnist" and out["split"] == "test" and out["n"] == 100
    assert isinstance(out["accuracy"], float) and 0.0 <= out["accuracy"] <= 100.0
    # the same number as the training run's own test evaluation of these (best) weights
    assert out["accuracy"] == pytest.approx(round(result.test["top1"], 2))
    assert out["accuracy"] > 30.0  # percent, and the model learned the synthetic task


def test_infer_main_on_an_rwth_folder(trained, data_root, tmp_path, capsys):
    model, _, result = trained
    folder = write_rwth_folder(tmp_path / "lenet5_binary", rwth_state(model))
    assert infer.main(["--model-path", str(folder), "--json", "--data-root", str(data_root), "--device", "cpu",
                       "--out", str(tmp_path / "out.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 100 and out["split"] == "test"
    assert out["accuracy"] == pytest.approx(round(result.test["top1"], 2))
    assert json.loads((tmp_path / "out.json").read_text()) == out


def test_infer_cli_nonexistent_model_path(data_root, tmp_path):
    missing = tmp_path / "no_such_model"
    proc = run_infer("--model-path", str(missing), "--json", "--data-root", str(data_root))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("error:") and "no_such_model" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_infer_main_truncated_model_is_exit_2(data_root, tmp_path, capsys):
    save_model(lenet(), tmp_path / "m", config(), LENET_INPUT, fmt="packed")
    path = tmp_path / "m" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    assert run_cli(infer.main, ["--model-path", str(tmp_path / "m"), "--data-root", str(data_root)]) == 2
    assert "truncated" in capsys.readouterr().err


def test_saved_files_are_byte_identical_across_saves(tmp_path):
    """Same model, same bytes: DVC hashes model files, so a rerun must not change them."""
    model = lenet()
    for fmt in ("packed", "latent"):
        save_model(model, tmp_path / f"{fmt}1", config(), LENET_INPUT, fmt=fmt)
        save_model(model, tmp_path / f"{fmt}2", config(), LENET_INPUT, fmt=fmt)
        for name in ("model.safetensors", "metadata.json"):
            assert (tmp_path / f"{fmt}1" / name).read_bytes() == (tmp_path / f"{fmt}2" / name).read_bytes()
