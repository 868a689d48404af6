"""The memory tables: per model (larq-style summary) and per training algorithm."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import torch

from bnnrepro.analysis.profile import profile_model
from bnnrepro.analysis.training_state import METHODS, PEAK_COMPONENTS, measure_training_memory, method_config
from bnnrepro.config import ExperimentConfig
from bnnrepro.data.sources import get_source
from bnnrepro.export import load_model
from bnnrepro.models import build_model
from bnnrepro.optim import split_parameters
from bnnrepro.report import markdown
from bnnrepro.report.claims import largest_part

KIB = 1024
COUNT_COLUMNS = ("weight_bits", "input_bits", "params_1bit", "params_2bit", "params_32bit", "macs_binary", "macs_32bit")


def build(cfg: ExperimentConfig):
    source = get_source(cfg.data.dataset)
    c, h, w = source.image_shape
    if cfg.data.resize:
        h = w = cfg.data.resize
    torch.manual_seed(0)
    return build_model(cfg.model, c, source.num_classes, h), (c, h, w)


def model_table(name: str, cfg: ExperimentConfig) -> pd.DataFrame:
    """One row per layer holding state, plus a total row."""
    model, shape = build(cfg)
    rows = [{"model": name, "layer": p.name, "kind": p.kind, "weight_bits": p.weight_bits, "input_bits": p.input_bits,
             "params_1bit": p.params_1bit, "params_2bit": p.params_2bit, "params_32bit": p.params_32bit,
             "macs_binary": p.macs_binary, "macs_32bit": p.macs_fp,
             "kib_at_fp32": p.fp32_bits / 8 / KIB, "kib_at_real_precision": p.bits / 8 / KIB}
            for p in profile_model(model, shape)]
    table = pd.DataFrame(rows)
    total = table.drop(columns=["model", "layer", "kind", "weight_bits", "input_bits"]).sum().to_dict()
    total_row = pd.DataFrame([{"model": name, "layer": "total", "kind": "", **total}])
    table = pd.concat([table.astype({"weight_bits": object, "input_bits": object}), total_row], ignore_index=True)
    table["ratio"] = table["kib_at_fp32"] / table["kib_at_real_precision"]
    return table


def checkpoint_sizes(pretrained: Path) -> pd.DataFrame:
    """Measured bytes of each shipped model file against the same network saved as an fp32 state_dict."""
    rows = []
    for folder in sorted(p for p in pretrained.iterdir() if (p / "model.safetensors").is_file()):
        model, _, meta = load_model(folder)
        buffer = io.BytesIO()
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, buffer)
        shipped = (folder / "model.safetensors").stat().st_size
        rows.append({"model": folder.name, "format": meta["format"], "shipped_bytes": shipped,
                     "fp32_state_dict_bytes": buffer.tell(), "ratio": buffer.tell() / shipped})
    return pd.DataFrame(rows)


def training_state_table(name: str, cfg: ExperimentConfig) -> pd.DataFrame:
    """Persistent state of every training algorithm on one binary model, relative to latent Adam."""
    rows = []
    for label, method in METHODS.items():
        model, shape = build(cfg)
        n_binary = sum(p.params_1bit for p in profile_model(model, shape))
        has_fp_params = len(split_parameters(model)[1]) > 0
        # on the meta device (shapes, no values) a step costs no arithmetic and allocates the same tensors
        # as on the CPU; tests/test_memory.py checks the counts agree
        state = measure_training_memory(model.to("meta"), method_config(cfg, method, has_fp_params), shape,
                                        cfg.data.batch_size)
        rows.append({"model": name, "method": label, "formula": method.formula,
                     "formula_bits_per_binary_weight": method.formula_bits,
                     "measured_bits_per_binary_weight": 8 * state["binary"] / n_binary,
                     "measured_state_kib": (state["binary"] + state["other"] + state["buffers"]) / KIB,
                     "peak_step_batch": cfg.data.batch_size, "peak_step_kib": state["peak_step"] / KIB,
                     **{f"peak_{part}_kib": kib / KIB for part, kib in state["peak_step_components"].items()}})
    table = pd.DataFrame(rows)
    adam = table.loc[table["method"] == "latent Adam"].iloc[0]
    table["relative_to_latent_adam"] = table["measured_state_kib"] / adam["measured_state_kib"]
    table["peak_relative_to_latent_adam"] = table["peak_step_kib"] / adam["peak_step_kib"]
    return table


EFFICIENT = "flip (BWS/BinSFO), packed, memory-efficient"  # the method row of train.memory_efficient


def claims(states: pd.DataFrame) -> str:
    """What the papers' memory claims come to under our measurement, model by model."""
    lines = []
    for model, t in states.groupby("model", sort=False):
        bits = t.set_index("method")["measured_bits_per_binary_weight"]
        kib = t.set_index("method")["measured_state_kib"]
        peak, peak_batch = t.set_index("method")["peak_step_kib"], t.set_index("method")["peak_step_batch"]
        packed, floats = "flip (BWS/BinSFO), packed weights", "flip (BWS/BinSFO), float +-1 weights"
        lines.append(
            f"- **{model}**: per binary weight, latent SGD keeps {bits['latent SGD']:.2f} bits and the flip "
            f"optimizer with packed weights {bits[packed]:.3f} bits: {bits['latent SGD'] / bits[packed]:.1f}x less "
            f"(BWS: \"up to 33x\", i.e. 32-bit latent + 1-bit copy against 1 bit; our latent methods keep no separate "
            f"binary copy, so 32 against 1). With weights left as float +-1, as both public codes do, the flip "
            f"optimizer saves nothing on the weights ({bits[floats]:.2f} bits). Whole training state (every "
            f"parameter, optimizer state and BatchNorm buffer): packed flip {kib[packed]:.1f} KiB against "
            f"{kib['latent Adam']:.1f} KiB for latent Adam ({100 * (1 - kib[packed] / kib['latent Adam']):.1f} % smaller) "
            f"and {kib['latent SGD']:.1f} KiB for latent SGD ({100 * (1 - kib[packed] / kib['latent SGD']):.1f} % "
            f"smaller); BinSFO claims \"70.7 % smaller\" without saying what it counts (docs/binsfo.md#memory-claim). The peak of "
            f"a training step at batch {int(peak_batch[packed])}, activations and gradients included: packed flip "
            f"{peak[packed]:.1f} KiB against {peak['latent Adam']:.1f} KiB for latent Adam "
            f"({100 * (1 - peak[packed] / peak['latent Adam']):.1f} % smaller). The same flip with "
            f"`train.memory_efficient` (updates inside backward, compact saved activations, recomputed blocks where "
            f"the model names them): {peak[EFFICIENT]:.1f} KiB "
            f"({100 * (1 - peak[EFFICIENT] / peak['latent Adam']):.1f} % smaller than latent Adam, "
            f"{peak['latent SGD'] / peak[EFFICIENT]:.2f}x less than latent SGD); {largest_part(t, EFFICIENT)}.")
    return "\n".join(lines)


def peak_table(states: pd.DataFrame) -> pd.DataFrame:
    """The peak of one training step split into its components, in MiB, with the ratio to latent Adam."""
    columns = {f"peak_{part}_kib": part for part in PEAK_COMPONENTS}
    table = states[["model", "method", "peak_step_batch", *columns, "peak_step_kib", "peak_relative_to_latent_adam"]]
    table = table.rename(columns={**columns, "peak_step_batch": "batch", "peak_step_kib": "peak",
                                  "peak_relative_to_latent_adam": "x_latent_adam"})
    mib = [*columns.values(), "peak"]
    return table.assign(**{c: table[c] / KIB for c in mib})


def to_markdown(models: pd.DataFrame, sizes: pd.DataFrame, states: pd.DataFrame) -> str:
    parts = [
        "# Memory\n\nGenerated by `dvc repro` (stage `memory`); do not edit.\n",
        "## 1. Per model and layer (larq-style summary)\n\n"
        "Parameters by storage precision (BatchNorm running statistics count as 32-bit), multiply-accumulates "
        "per image (binary = both operands 1-bit, i.e. XNOR-popcount), and the size at fp32 against the size "
        "at each tensor's real precision.\n",
        markdown.to_markdown(models, 1, integer_columns=COUNT_COLUMNS),
        "\n\n### Shipped checkpoint files (measured)\n\n"
        "Bytes of `pretrained/<name>/model.safetensors` against the same network saved with `torch.save` "
        "as an fp32 state_dict.\n",
        markdown.to_markdown(sizes, 1, integer_columns=("shipped_bytes", "fp32_state_dict_bytes"))
        if len(sizes) else "(no shipped models)",
        "\n\n## 2. Persistent training state per algorithm\n\n"
        "What each method keeps between steps: the formula (bits per binary weight) and the live tensors after "
        "one training step of the training loop's own code (parameters, or their sign bits when packed, + every "
        "optimizer state tensor + BatchNorm buffers, whole model). Binary-weight methods train the full-precision "
        "parameters with Adam. Our Bop, SGDT, SGDAT and unpacked flip keep their binary weights as float +-1 "
        "tensors (32 bits), as the public codes do; only `train.pack_weights` stores them as bits between steps. "
        "`peak_step_kib` is the peak of one training step at the config's batch size (`peak_step_batch`): every "
        "live tensor at once, i.e. weights, gradients, optimizer state, activations and temporaries, measured "
        "with torch's MemTracker (`torch.distributed._tools.mem_tracker`), which follows each tensor storage "
        "the step allocates and frees. It is what `torch.cuda.max_memory_allocated` counts on a GPU, and does "
        "not include the allocator's cache or the Python process. The steps run on torch's meta device: tensors "
        "with shapes and no values, so the training code allocates exactly what it allocates on the CPU (the same "
        "bytes, checked by tests/test_memory.py) without doing the arithmetic. Section 3 splits the peak into its "
        "parts.\n",
        markdown.to_markdown(states.drop(columns=[f"peak_{part}_kib" for part in PEAK_COMPONENTS]), 2,
                             integer_columns=("formula_bits_per_binary_weight", "peak_step_batch")),
        "\n\n## 3. The peak of one training step, by component\n\n"
        "MiB of live tensors at the moment of the peak (MemTracker), at `batch` images a step: weights "
        "(with packed sign bits), buffers (BatchNorm statistics), gradients, activations saved for backward, "
        "optimizer state kept between steps, and temporaries (the step's scratch tensors, the optimizers' "
        "included). `x_latent_adam` is the peak over latent Adam's. The last method is packed flip with "
        "`train.memory_efficient` (docs/memory.md): each binary weight updated inside backward and its gradient "
        "freed at once, sign activations and +-1 layer inputs saved as bits, and ReActNet-A's and BCDNet's "
        "residual blocks recomputed in backward. Figure: `memory_peak.png`.\n",
        markdown.to_markdown(peak_table(states), 2, integer_columns=("batch",)),
        "\n\n## 4. The papers' memory claims under this measurement\n",
        claims(states),
    ]
    return "\n".join(parts) + "\n"
