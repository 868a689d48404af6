"""The official pretrained checkpoints BinSFO fine-tunes, and how their parameters reach our models.

BinSFO (docs/binsfo.md#pretrained-networks) starts from ImageNet-trained AdamBNN (ReActNet-A) and BCDNet-A checkpoints and copies
every *parameter* whose name matches, after removing the "module." prefix left by DataParallel. It keeps
the freshly initialised head and does not copy BatchNorm running statistics (buffers); both are true here.
Our module names are the official ones (reactnet.py, bcdnet.py), so the mapping is that prefix alone.

Unlike the BinSFO code, which skips a missing or mis-shaped parameter silently, loading here fails when
any backbone parameter is missing or has another shape, and reports which checkpoint entries it left out.

The files are read with `torch.load(weights_only=True)` (bnnrepro.io.torch_load): a checkpoint that holds
pickled code is refused without running it. Neither publisher gives a checksum, so none is invented here:
stage fetch@<name> records the SHA-256 of the first copy it fetched and refuses any other afterwards, and
each run records the SHA-256 of the file it actually used (`PretrainedLoad.sha256`, in the run's metadata).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from bnnrepro.errors import BadFileError, MissingFileError
from bnnrepro.io import file_digest, torch_load

HEAD_PREFIX = "fc."  # the replaced head: never loaded (the official fc / fc_dist classify ImageNet's 1000 classes)
PARALLEL_PREFIX = "module."
MIRROR_FOLDER = "pretrained"  # <mirror>/pretrained/<filename>


@dataclass(frozen=True)
class OfficialCheckpoint:
    arch: str            # the registered model whose modules the checkpoint fits
    filename: str        # the name BinSFO's code expects under its model/ folder
    state_key: str       # the entry of the saved dict that holds the state_dict
    url: str             # official download page (a share link, not a direct file: downloaded by hand)
    published_sha256: str | None  # None: the publisher gives no checksum
    origin: str          # where the link is published


OFFICIAL_CHECKPOINTS: dict[str, OfficialCheckpoint] = {
    "adambnn": OfficialCheckpoint(
        arch="reactnet_a", filename="AdamBNN.mobilenet.pth.tar", state_key="state_dict",
        url="https://hkustconnect-my.sharepoint.com/:u:/g/personal/zliubq_connect_ust_hk/"
            "EXEsfAt42gNLqfzt09BMoTwBbYT6sxH5VkZ_9DmBWhJxXg?e=fd4f5v",
        published_sha256=None,
        origin="github.com/liuzechun/AdamBNN README, Models table: 'Model-ReAct-AdamBNN-Training' (70.5% top-1)"),
    "bcdnet": OfficialCheckpoint(
        arch="bcdnet", filename="BCDNet.pth.tar", state_key="model",
        url="https://drive.google.com/file/d/12jL6SzBppXJry0fLq0AzhY1dYFVGyfp5/view?usp=sharing",
        published_sha256=None,
        origin="github.com/Sense-GVT/BCDNet README, Pretrained model: 'Step2: BCDNet-A' (binary weights and "
               "activations); save it as BCDNet.pth.tar"),
}


@dataclass(frozen=True)
class PretrainedLoad:
    """What loading an official checkpoint did, for the run's metadata."""

    name: str
    file: str
    sha256: str
    loaded: int                 # parameter tensors copied
    skipped_buffers: int        # BatchNorm running statistics in the checkpoint (not loaded, by design)
    unmatched: list[str]        # other checkpoint entries no parameter of ours takes (the ImageNet heads)
    head_not_loaded: list[str]  # our parameters left at their fresh initialisation

    def to_dict(self) -> dict:
        return asdict(self)


def official_checkpoint(name: str) -> OfficialCheckpoint:
    if name not in OFFICIAL_CHECKPOINTS:
        raise ValueError(f"Unknown pretrained checkpoint '{name}'. Valid: {sorted(OFFICIAL_CHECKPOINTS)}")
    return OFFICIAL_CHECKPOINTS[name]


def find_checkpoint_file(name: str, folder: str | os.PathLike | None, mirror: str | None = None) -> Path:
    """The local copy of checkpoint `name`: `folder/<filename>`, else `<mirror>/pretrained/<filename>`.
    Nothing is downloaded here: stage fetch@<name> brings the file into data/official/<name>/ (the
    pipeline's `folder`), checked and with its SHA-256 recorded (bnnrepro/official.py)."""
    entry = official_checkpoint(name)
    candidates = [Path(folder) / entry.filename] if folder is not None else []
    if mirror and "://" not in mirror:
        candidates.append(Path(mirror) / MIRROR_FOLDER / entry.filename)
    for path in candidates:
        if path.is_file():
            return path
    tried = "\n".join(f"  {p}" for p in candidates) or "  (no folder given)"
    raise MissingFileError(
        f"The official '{name}' checkpoint '{entry.filename}' is not here. Tried:\n{tried}\n"
        f"Download it from {entry.url}\n({entry.origin}) and save it as 'data/{MIRROR_FOLDER}/{entry.filename}' "
        f"(or <mirror>/{MIRROR_FOLDER}/{entry.filename}), then run `dvc repro -f fetch@{name}`: it checks the file "
        f"and copies it to data/official/{name}/. No checksum is published; the first fetch records the file's "
        "SHA-256 in config/official_sha256.yml and later fetches must match it (docs/pretrained-weights.md).")


def read_official_state_dict(path: str | os.PathLike, state_key: str) -> dict[str, torch.Tensor]:
    """The checkpoint's state_dict (names -> tensors), "module." removed; no pickled code is run."""
    saved = torch_load(path)
    if not isinstance(saved, dict) or state_key not in saved:
        keys = sorted(saved)[:10] if isinstance(saved, dict) else type(saved).__name__
        raise BadFileError(f"'{path}' has no '{state_key}' entry (it has {keys}): not the expected official checkpoint")
    state = saved[state_key]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise BadFileError(f"'{path}': '{state_key}' is not a state_dict (names -> tensors)")
    return {k.removeprefix(PARALLEL_PREFIX): v for k, v in state.items()}


def _is_bn_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")


@torch.no_grad()
def load_official_parameters(model: nn.Module, state: dict[str, torch.Tensor], where: str = "checkpoint") -> dict:
    """Copy every parameter of `model` outside the head from `state` (same name, same shape)."""
    params = dict(model.named_parameters())
    backbone = [n for n in params if not n.startswith(HEAD_PREFIX)]
    missing = [n for n in backbone if n not in state]
    if missing:
        raise BadFileError(f"{where} lacks {len(missing)} parameters of the model, e.g. {missing[:5]}: "
                           "not a checkpoint of this network")
    wrong = [f"{n}: {tuple(state[n].shape)} vs ours {tuple(params[n].shape)}" for n in backbone
             if state[n].shape != params[n].shape]
    if wrong:
        raise BadFileError(f"{where}: {len(wrong)} parameters have another shape, e.g. {wrong[:3]} "
                           "(model.width must be 1 for the official checkpoints)")
    for n in backbone:
        params[n].copy_(state[n])
    taken = set(backbone)
    return {"loaded": len(backbone), "skipped_buffers": sum(map(_is_bn_buffer, state)),
            "unmatched": sorted(k for k in state if k not in taken and not _is_bn_buffer(k)),
            "head_not_loaded": sorted(n for n in params if n.startswith(HEAD_PREFIX))}


def load_pretrained(model: nn.Module, arch: str, name: str, folder: str | os.PathLike | None,
                    mirror: str | None = None) -> PretrainedLoad:
    """Find checkpoint `name`, check it fits `arch`, and load its parameters into `model`."""
    entry = official_checkpoint(name)
    if entry.arch != arch:
        raise ValueError(f"model.pretrained = '{name}' is a checkpoint of '{entry.arch}', not of model '{arch}'")
    path = find_checkpoint_file(name, folder, mirror)
    sha256 = file_digest(path, "sha256")
    if entry.published_sha256 and sha256 != entry.published_sha256:
        raise BadFileError(f"'{path}' has SHA-256 {sha256}, the publisher's is {entry.published_sha256}")
    report = load_official_parameters(model, read_official_state_dict(path, entry.state_key), str(path))
    return PretrainedLoad(name=name, file=entry.filename, sha256=sha256, **report)
