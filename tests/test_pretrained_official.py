"""Official AdamBNN / BCDNet checkpoints: written here in the official layout (key names from the public
model code, "module." prefix, the saved dict's nesting), then mapped onto our models."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bnnrepro.models import ModelConfig, build_model
from bnnrepro.models.pretrained import OFFICIAL_CHECKPOINTS, find_checkpoint_file, load_pretrained

WIDTH = 0.125  # the official layout at 1/8 of the channels: same names and nesting, small tensors
ADAMBNN_STAGES = [32, 64, 128, 128, 256, 256] + [512] * 6 + [1024] * 2
BCDNET_STAGES = [32, 64, 128, 128, 256, 256] + [512] * 4 + [1024]


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


def write_official(name: str, folder) -> dict[str, torch.Tensor]:
    """torch.save of the official nesting: AdamBNN {"epoch", "state_dict", ...}, BCDNet {"model", ...}."""
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randint(0, 100, s, generator=gen) if k.endswith("num_batches_tracked")
                 else torch.randn(s, generator=gen)) for k, s in official_shapes(name).items()}
    wrapped = {f"module.{k}": v for k, v in state.items()}  # saved from DataParallel
    saved = ({"epoch": 256, "state_dict": wrapped, "best_top1_acc": 70.5, "optimizer": {"state": {}, "param_groups": []}}
             if name == "adambnn" else {"model": wrapped, "last_iter": 640000})
    torch.save(saved, folder / OFFICIAL_CHECKPOINTS[name].filename)
    return state


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
