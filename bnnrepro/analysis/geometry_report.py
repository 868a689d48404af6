"""The HD-geometry report (Anderson & Berg, arXiv 1705.07199): theory Monte Carlo and per-model
measurements gathered into JSON-ready metrics, per-layer rows, and the arrays the figures draw.

`run_theory(params)` needs no model; `analyse_model(folder, data_root, params)` loads a saved
model folder (bnnrepro.export) and runs it on the first `n_images` test images of its dataset.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnnrepro.analysis import geometry as g
from bnnrepro.analysis import geometry_theory as theory
from bnnrepro.data.batches import BatchLoader
from bnnrepro.data.prepared import load_dataset
from bnnrepro.export import load_model
from bnnrepro.nn.layers import is_quantized


@dataclass(frozen=True)
class HDParams:
    """params.yaml `hd:` (every key is a command-line option of stages/analyze_geometry.py)."""

    seed: int = 0
    n_images: int = 500        # test images fed through each model
    n_mc: int = 10000          # Monte Carlo vectors per dimension
    n_dots: int = 20000        # sampled output entries per layer for the dot-product analysis
    dims: tuple[int, ...] = (3, 9, 10, 25, 27, 150, 400, 1152, 2304, 4608)
    ternary_d: int = 1000      # dimension of the ternary Monte Carlo (the notebook's d = 1000)
    thresholds: tuple[float, ...] = (0.01, 0.111, 0.2, 0.3, 0.5)  # ternary thresholds / sigma
    rotation_k: float = 0.1    # correlated inputs: coordinate i scaled by exp(k (i - d/2))
    rotation_dims: tuple[int, ...] = (10, 100, 500)
    dot_d: int = 1000          # dimension of the isotropic dot-product experiment


# ------------------------------------------------------------------------------------- theory


@dataclass
class Theory:
    metrics: dict[str, Any]
    sign: dict[int, theory.AngleSamples]
    ternary: dict[float, np.ndarray]
    rotation: dict[int, tuple[np.ndarray, np.ndarray]]  # d -> (plain, rotated) angles
    isotropic: dict[str, Any]


def run_theory(p: HDParams) -> Theory:
    """Every Monte Carlo of docs/hd-geometry.md#claims: sign and ternary angles, correlated inputs, isotropic dot products."""
    sign = {d: theory.sign_angle_mc(d, p.n_mc, theory.generator(p.seed, "sign", d)) for d in p.dims}
    ternary = theory.ternary_angle_mc(p.ternary_d, p.n_mc, list(p.thresholds), theory.generator(p.seed, "ternary", p.ternary_d))
    rotation = {}
    for d in p.rotation_dims:
        rot = theory.haar_rotation(d, theory.generator(p.seed, "rotation", d))
        plain = theory.anisotropic_sign_angle_mc(d, p.n_mc, p.rotation_k, theory.generator(p.seed, "anisotropic", d))
        rotated = theory.anisotropic_sign_angle_mc(d, p.n_mc, p.rotation_k, theory.generator(p.seed, "anisotropic", d), rot)
        rotation[d] = (plain, rotated)  # the same vectors, binarized in the standard and in a random basis
    isotropic = theory.isotropic_dot_products(p.dot_d, p.n_mc, theory.generator(p.seed, "isotropic", p.dot_d))
    t_opt, angle_opt = theory.ternary_optimum()

    metrics = {
        "paper": "Anderson & Berg, The High-Dimensional Geometry of Binary Neural Networks (arXiv 1705.07199)",
        "seed": p.seed, "n_mc": p.n_mc,
        "binary_limit_deg": theory.degrees(theory.BINARY_LIMIT_RAD), "spread_constant_rad": theory.SPREAD_CONSTANT_RAD,
        "sign_angle": {f"d={d}": s.summary() for d, s in sign.items()},
        "ternary": {
            "d": p.ternary_d, "optimum_t": t_opt, "optimum_deg": theory.degrees(angle_opt),
            "thresholds": {f"t={t}": {"closed_form_deg": theory.degrees(theory.ternary_angle_rad(t)),
                                      "mc_median_deg": theory.degrees(float(np.nanmedian(a))),
                                      "mc_mean_deg": theory.degrees(float(np.nanmean(a))),
                                      "zero_fraction": theory.ternary_zero_fraction(t)} for t, a in ternary.items()}},
        "rotation": {"k": p.rotation_k, "dims": {
            f"d={d}": {"plain_mean_deg": theory.degrees(a.mean()), "plain_sd_deg": theory.degrees(a.std()),
                       "rotated_mean_deg": theory.degrees(b.mean()), "rotated_sd_deg": theory.degrees(b.std())}
            for d, (a, b) in rotation.items()}},
        "isotropic_dot_products": {k: v for k, v in isotropic.items() if not isinstance(v, np.ndarray)},
    }
    return Theory(metrics, sign, ternary, rotation, isotropic)


# ---------------------------------------------------------------------------------- models

NO_LATENT = "no latent weights"
PACKED_NOTE = ("packed model: its binary weights are stored as their signs (W^c = W^b), so it has no latent "
               "weights: no weight angles, weight histograms or weight-binarization dot products. Reported: "
               "per-layer d, the activation-binarization dot products A^c.W^b vs A^b.W^b and their "
               "permutation control.")


@dataclass
class ModelGeometry:
    name: str
    metrics: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)      # one per quantized layer (the CSV)
    angles: dict[str, np.ndarray] = field(default_factory=dict)   # layer -> per-filter angles (rad)
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> latent weights
    dots: list[g.DotProducts] = field(default_factory=list)


def first_test_images(dataset_folder: Path, cfg, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n test images, normalized as the model was trained (the notebook uses the first 500)."""
    data = load_dataset(dataset_folder)
    loader = BatchLoader(data.test_images[:n], data.test_labels[:n], n, max_value=data.max_value,
                         mean=tuple(cfg.data.mean), std=tuple(cfg.data.std))
    images, labels = next(iter(loader))
    return images.contiguous(), labels


def analyse_model(folder: Path, data_root: Path, p: HDParams) -> ModelGeometry:
    """Per quantized layer: weight angles (latent models) and dot products on test images."""
    name = folder.name
    meta = json.loads((folder / "metadata.json").read_text())
    if meta.get("status") == "skipped":  # a train stage the profile does not run (e.g. CIFAR in quick)
        return ModelGeometry(name, {"model": name, "path": str(folder), "status": "skipped", "reason": meta["reason"]})
    model, cfg, meta = load_model(folder)
    quantized = [(n, m) for n, m in g.weight_layers(model) if is_quantized(m)]
    base = {"model": name, "path": str(folder), "format": meta.get("format"), "arch": cfg.model.arch,
            "method": cfg.model.describe(), "dataset": cfg.data.dataset}
    if not quantized:
        return ModelGeometry(name, {**base, "status": "no binary or ternary layers: nothing to analyse"})
    latent = g.has_latent_weights(model)
    images, labels = first_test_images(data_root / "prepared" / cfg.data.dataset, cfg, p.n_images)
    traced = g.layer_inputs(model, images)
    accuracy = 100.0 * (traced.logits.argmax(1) == labels).double().mean().item()
    result = ModelGeometry(name, {**base, "status": "analysed", "latent_weights": latent,
                                  "n_images": len(images), "accuracy_on_images": accuracy, "n_dots": p.n_dots,
                                  "seed": p.seed})
    if not latent:
        result.metrics["note"] = PACKED_NOTE
    result.dots = g.dot_product_analysis(model, traced, p.n_dots, p.seed, latent)
    dots = {d.layer: d for d in result.dots}
    layers = {}
    for layer_name, layer in quantized:
        row = {"layer": layer_name, "kind": type(layer).__name__, "input": dots[layer_name].input,
               **g.layer_weight_summary(layer, latent)}
        if latent:
            result.angles[layer_name] = g.filter_angles(layer)
            result.weights[layer_name] = layer.weight.detach().flatten().numpy()
        else:
            row["weight_angles"] = NO_LATENT
        row.update(dots[layer_name].stats)
        result.rows.append(row)
        layers[layer_name] = {k: v for k, v in row.items() if k != "layer"}
    result.metrics["layers"] = layers
    return result


def rounded(obj: Any, digits: int = 4) -> Any:
    """JSON-ready copy: floats (numpy included) rounded, so the metrics files are stable and short."""
    if isinstance(obj, dict):
        return {str(k): rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(obj) else round(float(obj), digits)
    return obj
