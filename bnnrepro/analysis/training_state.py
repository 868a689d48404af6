"""Persistent training state per algorithm: what a method keeps between two training steps.

Counted two ways for each method on a model: from the method's formula (bits per binary weight, see
docs/bws.md#memory-claim) and from the live tensors after one real training step through the
training loop's own pieces (build_optimizers, PackedBinaryWeights): bytes of every parameter (or of its
sign bits, when packed) plus every tensor in the optimizers' state, plus the module buffers.

Beside the persistent state, the peak of one training step (weights, gradients, optimizer state,
activations and temporaries all live at once) is measured with torch's MemTracker, which follows every
tensor storage the step allocates and frees. That is the quantity `torch.cuda.max_memory_allocated`
reports on a GPU, measured the same way on any device, and it is deterministic: it counts tensor bytes,
not what the allocator or the process happens to hold.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.distributed._tools.mem_tracker import MemTracker

from bnnrepro.config import ExperimentConfig, OptimConfig
from bnnrepro.engine.train import weights_for_step
from bnnrepro.nn.layers import memory_efficient_activations, quantized_layers
from bnnrepro.nn.packing import PackedBinaryWeights
from bnnrepro.optim import build_optimizers, split_parameters

ADAM_FP = OptimConfig(name="adam", lr=1e-3)  # full-precision regime of the binary-weight methods


@dataclass(frozen=True)
class Method:
    optim: OptimConfig
    formula_bits: int          # persistent bits per binary weight by the method's own account
    formula: str               # what those bits are
    pack_weights: bool = False
    memory_efficient: bool = False  # train.memory_efficient: binary weights updated inside backward


METHODS = {
    "latent SGD": Method(OptimConfig(name="sgd", lr=0.01), 32, "fp32 latent weight"),
    "latent SGD+momentum": Method(OptimConfig(name="sgd", lr=0.01, momentum=0.9), 64, "latent + momentum"),
    "latent Adam": Method(OptimConfig(name="adam", lr=1e-3), 96, "latent + two moments"),
    "Bop": Method(OptimConfig(name="bop", lr=1e-4), 33, "1-bit weight + fp32 momentum"),
    "Bop, packed weights": Method(OptimConfig(name="bop", lr=1e-4), 33, "1-bit weight + fp32 momentum", True),
    "Bop2ndOrder": Method(OptimConfig(name="bop2ndorder", lr=1e-4), 65, "1-bit weight + two fp32 moments"),
    "SGDT": Method(OptimConfig(name="sgdt", lr=1e-4), 33, "1-bit weight + fp32 latent"),
    "SGDAT": Method(OptimConfig(name="sgdat", lr=1e-4), 65, "1-bit weight + accumulator + flip count"),
    "flip (BWS/BinSFO), float +-1 weights": Method(OptimConfig(name="flip", lr=1.0), 1, "1-bit weight"),
    "flip (BWS/BinSFO), packed weights": Method(OptimConfig(name="flip", lr=1.0), 1, "1-bit weight", True),
    "flip (BWS/BinSFO), packed, memory-efficient": Method(OptimConfig(name="flip", lr=1.0), 1, "1-bit weight",
                                                          True, True),
}


def method_config(cfg: ExperimentConfig, method: Method, has_fp_params: bool) -> ExperimentConfig:
    """The model's experiment with `method` as its optimizer (binary-weight methods get Adam for the rest)."""
    binary_method = method.optim.name not in ("sgd", "adam")
    return dataclasses.replace(
        cfg, optim=method.optim, optim_fp=ADAM_FP if binary_method and has_fp_params else None,
        train=dataclasses.replace(cfg.train, pack_weights=method.pack_weights, latent_init="model",
                                  memory_efficient=method.memory_efficient))


def tensor_bytes(values) -> int:
    """Bytes of tensors; a Python number kept in an optimizer state (a step count) counts as 8."""
    return sum(v.numel() * v.element_size() if torch.is_tensor(v) else 8 for v in values
               if torch.is_tensor(v) or isinstance(v, (int, float)))


# The parts of the peak of one step, from MemTracker's categories at the moment of the peak. Weights include
# the sign bits of packed weights; optimizer state is what the optimizers keep between steps, and the step's
# own scratch tensors (the optimizer's included) are temporaries, wherever they run (step() or backward).
PEAK_COMPONENTS = ("weights", "buffers", "gradients", "activations", "optimizer_state", "temporaries")


def measure_training_memory(model: nn.Module, cfg: ExperimentConfig, input_shape: tuple[int, ...],
                            batch_size: int) -> dict:
    """Two training steps at `batch_size`. After the first (which creates the optimizer state): bytes
    held between steps, i.e. the binary weights with their optimizer state, the other parameters with
    theirs, and the module buffers (BatchNorm statistics). During the second: the peak bytes of live
    tensors (`peak_step`, split into PEAK_COMPONENTS in `peak_step_components`), with packed weights
    unpacked for the step and, with train.memory_efficient, binary weights updated inside backward, as in
    the training loop."""
    optimizers = build_optimizers(cfg, model)
    x = torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))
    x = x.to(next(model.parameters()).device)
    model.train()
    # installed after the forward pass, so MemTracker's own gradient hooks (set up during the forward of a
    # tracked step) see each gradient before the update frees it
    efficient = cfg.train.memory_efficient
    layers = quantized_layers(model)

    def step(packed: PackedBinaryWeights | None = None):  # as the training loop has it
        optimizers.zero_grad()
        with memory_efficient_activations(model) if efficient else contextlib.nullcontext(), \
                weights_for_step(layers, packed, cfg):
            loss = model(x).square().mean()
            repack = packed.pack_updated if packed else None
            with optimizers.updates_in_backward(after_update=repack) if efficient else contextlib.nullcontext():
                loss.backward()
            optimizers.step()

    step()
    binary, _ = split_parameters(model)
    packed = PackedBinaryWeights(binary) if cfg.train.pack_weights else None
    if packed:
        packed.pack_()
        with packed.unpacked():  # builds the lookup tables of unpacking once, outside the measured step
            pass
    binary_ids = {id(p) for p in binary}
    states = {}
    for regime in optimizers.regimes:
        states.update(regime.optimizer.state)
    memory = {"binary": packed.weight_bytes() if packed else 0, "other": 0}
    for p in model.parameters():
        key = "binary" if id(p) in binary_ids else "other"
        weight = 0 if packed and key == "binary" else tensor_bytes([p])
        memory[key] += weight + tensor_bytes(states.get(p, {}).values())
    memory["buffers"] = tensor_bytes(model.buffers())

    tracker = MemTracker()
    # the sign bits as external tensors (MemTracker's "other"): counted with the weights
    tracker.track_external(model, *(regime.optimizer for regime in optimizers.regimes),
                           *(b for b in packed.bits if b is not None and b.numel()) if packed else ())
    if packed:  # a weight unpacked during the step (just in time) is a weight, not a temporary
        packed.on_unpack = tracker.track_external
    with tracker:
        step(packed)
    if packed:  # the model leaves as it came: float weights
        packed.unpack_()
    peaks = tracker.get_tracker_snapshot("peak")
    memory["peak_step"] = sum(per_device["Total"] for per_device in peaks.values())
    state_bytes = collections.Counter()  # per device: torch's Adam keeps its step counts on the CPU
    for v in (v for state in states.values() for v in state.values() if torch.is_tensor(v)):
        state_bytes[v.device] += tensor_bytes([v])
    memory["peak_step_components"] = _components(peaks, state_bytes)
    return memory


def _components(peaks: dict, state_bytes: dict[torch.device, int]) -> dict[str, int]:
    """PEAK_COMPONENTS from MemTracker's peak snapshot, summed over devices. MemTracker files every tensor
    made inside optimizer.step() as optimizer memory: what exceeds the persistent state is scratch."""
    parts = dict.fromkeys(PEAK_COMPONENTS, 0)
    for device, snap in peaks.items():
        by_name = {getattr(k, "name", k): v for k, v in snap.items()}
        parts["weights"] += by_name.get("PARAM", 0) + by_name.get("OTH", 0)
        parts["buffers"] += by_name.get("BUFFER", 0)
        parts["gradients"] += by_name.get("GRAD", 0)
        parts["activations"] += by_name.get("ACT", 0)
        optimizer = by_name.get("OPT", 0)
        parts["optimizer_state"] += min(optimizer, state_bytes[device])
        parts["temporaries"] += by_name.get("TEMP", 0) + max(optimizer - state_bytes[device], 0)
    return parts
