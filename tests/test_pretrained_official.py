"""Official AdamBNN / BCDNet checkpoints: written here in the official layout (key names from the public
model code, "module." prefix, the saved dict's nesting), then mapped onto our models."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bnnrepro.models import ModelConfig, build_model
from bnnrepro.models.pretrained import OFFICIAL_CHECKPOINTS, find_checkpoint_file, load_pretrained

from standins import WIDTH, write_official

ARCH = {"adambnn": "reactnet_a", "bcdnet": "bcdnet"}


def small_model(name: str):
    torch.manual_seed(1)
    return build_model(ModelConfig(arch=ARCH[name], width=WIDTH, pretrained=name), 3, 5, 32)


@pytest.mark.parametrize("name", ["adambnn", "bcdnet"])
def test_official_checkpoint_maps_onto_our_modules(tmp_path, name):
    state = write_official(name, tmp_path)
    model = small_model(name)
    head_before = model.fc[0].weight.detach().clone()
    report = load_pretrained(model, ARCH[name], name, tmp_path)

    params = dict(model.named_parameters())
    backbone = [n for n in params if not n.startswith("fc.")]
    for n in backbone:  # every parameter landed where the official name says
        assert torch.equal(params[n], state[n]), n
    assert torch.equal(model.fc[0].weight, head_before)  # the replaced head keeps its fresh init
    assert report.loaded == len(backbone)
    assert report.skipped_buffers == sum(k.split(".")[-1] in ("running_mean", "running_var", "num_batches_tracked")
                                         for k in state)
    heads = ["fc.bias", "fc.weight"] + (["fc_dist.bias", "fc_dist.weight"] if name == "bcdnet" else [])
    assert report.unmatched == sorted(heads)
    assert report.head_not_loaded == ["fc.0.weight"]
    assert len(report.sha256) == 64

    # the same logits as a model whose parameters were set directly from the (unprefixed) state
    direct = small_model(name)
    with torch.no_grad():
        for n, p in direct.named_parameters():
            p.copy_(state[n] if n in state else params[n])
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(model.eval()(x), direct.eval()(x))


def test_missing_parameter_or_wrong_shape_is_an_error(tmp_path):
    write_official("adambnn", tmp_path)
    wide = build_model(ModelConfig(arch="reactnet_a", width=0.25), 3, 5, 32)
    with pytest.raises(RuntimeError, match="another shape"):
        load_pretrained(wide, "reactnet_a", "adambnn", tmp_path)
    with pytest.raises(ValueError, match="checkpoint of 'reactnet_a'"):
        load_pretrained(small_model("bcdnet"), "bcdnet", "adambnn", tmp_path)
    write_official("bcdnet", tmp_path)
    path = tmp_path / OFFICIAL_CHECKPOINTS["bcdnet"].filename
    saved = torch.load(path, weights_only=True)
    del saved["model"]["module.mlp_layer.2.mlp_layer.3.prelu.weight"]
    torch.save(saved, path)
    with pytest.raises(RuntimeError, match="lacks 1 parameters"):
        load_pretrained(small_model("bcdnet"), "bcdnet", "bcdnet", tmp_path)


def test_absent_checkpoint_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        find_checkpoint_file("adambnn", tmp_path / "pretrained", mirror=str(tmp_path / "mirror"))
    msg = str(e.value)
    assert "AdamBNN.mobilenet.pth.tar" in msg and OFFICIAL_CHECKPOINTS["adambnn"].url in msg
    assert "No checksum is published" in msg
    (tmp_path / "mirror" / "pretrained").mkdir(parents=True)
    write_official("adambnn", tmp_path / "mirror" / "pretrained")  # found on the mirror
    assert find_checkpoint_file("adambnn", tmp_path / "pretrained", str(tmp_path / "mirror")).parent.name == "pretrained"


def test_scale_option_reaches_the_binary_convs():
    """BinSFO's --xnor reaches only BCDNet's MLP blocks; the official per-channel scale reaches every binary conv."""
    def scales(arch, scale):
        model = build_model(ModelConfig(arch=arch, width=WIDTH, xnor_scale=scale), 3, 5, 32)
        return {name.split(".")[0]: m.scale for name, m in model.named_modules() if hasattr(m, "scale")}
    assert scales("reactnet_a", "tensor") == {"feature": "tensor"}
    assert scales("bcdnet", "tensor") == {"feature": "none", "mlp_layer": "tensor"}
    assert scales("bcdnet", "channel") == {"feature": "channel", "mlp_layer": "channel"}
    with pytest.raises(ValueError, match="xnor_scale"):
        build_model(dataclasses.replace(ModelConfig(arch="mlp"), xnor_scale="tensor"), 1, 10, 28)
