"""DVC stage geometry: the high-dimensional geometry of binarization (Anderson & Berg, arXiv 1705.07199).

    python stages/analyze_geometry.py --models models/rwth_binary_mnist pretrained/lenet5_binary_mnist \
        --data-root data --out reports/hd [--n_images 500 --n_mc 10000 --dims 3 27 4608 ...]

The hd options are the keys of params.yaml `hd:` (dvc.yaml passes the whole section as ${hd}).
Writes to --out:
    theory.json                 Monte Carlo and closed forms (no model needed)
    <model>.json                per-layer summary of each model (DVC metrics)
    <model>_layers.csv          the same per-layer table as CSV
    figures/theory_*.png, figures/<model>_*.png
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from bnnrepro.analysis import geometry_plots as plots
from bnnrepro.analysis.geometry_report import HDParams, analyse_model, rounded, run_theory
from bnnrepro.errors import run_cli
from bnnrepro.io import write_json, write_text


def parse_args(argv=None) -> tuple[argparse.Namespace, HDParams]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", type=Path, default=[], help="saved model folders (latent or packed)")
    p.add_argument("--data-root", type=Path, default=Path("data"), help="holds prepared/<dataset>")
    p.add_argument("--out", type=Path, default=Path("reports/hd"))
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    hd = p.add_argument_group("hd parameters (params.yaml hd:)")
    for f in dataclasses.fields(HDParams):
        if isinstance(f.default, tuple):
            hd.add_argument(f"--{f.name}", nargs="+", type=type(f.default[0]), default=list(f.default))
        else:
            hd.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    args = p.parse_args(argv)
    params = HDParams(**{f.name: tuple(v) if isinstance(v := getattr(args, f.name), list) else v
                         for f in dataclasses.fields(HDParams)})
    names = [m.name for m in args.models]
    if len(set(names)) != len(names):
        p.error(f"model folders must have distinct names (they name the output files): {names}")
    return args, params


def theory_report(params: HDParams, out: Path, figures: Path):
    theory = run_theory(params)
    write_json(out / "theory.json", rounded(theory.metrics))
    plots.plot_sign_angle_distributions(theory.sign, figures / "theory_angle_distributions.png")
    plots.plot_spread_vs_d(theory.sign, figures / "theory_spread_vs_d.png")
    plots.plot_ternary(theory.ternary, params.ternary_d, figures / "theory_ternary_angle_vs_threshold.png")
    plots.plot_rotation(theory.rotation, params.rotation_k, figures / "theory_rotation.png")
    plots.plot_isotropic_dots(theory.isotropic, figures / "theory_isotropic_dot_products.png")
    plots.plot_straight_through(figures / "theory_straight_through.png")

    m = theory.metrics
    d = max(params.dims)
    at_d = m["sign_angle"][f"d={d}"]
    print(f"theory: limit {m['binary_limit_deg']:.3f} deg; d = {d}: mean {at_d['mean_deg']:.3f} deg, "
          f"sd {at_d['sd_deg']:.3f} deg, sd*sqrt(d) {at_d['sd_sqrt_d_rad']:.4f} rad")
    for key, t in m["ternary"]["thresholds"].items():
        print(f"theory: ternary {key}: closed form {t['closed_form_deg']:.3f} deg, MC median (d = {params.ternary_d}) "
              f"{t['mc_median_deg']:.3f} deg, zeros {100 * t['zero_fraction']:.2f} %")
    iso = m["isotropic_dot_products"]
    print(f"theory: isotropic dot products, Gaussian w (d = {iso['d']}): r = {iso['r']:.4f} "
          f"(cos angle(w, sign w) = {iso['cos_angle']:.4f})")
    for key, r in m["rotation"]["dims"].items():
        print(f"theory: correlated inputs {key}: {r['plain_mean_deg']:.2f} deg, after a random rotation "
              f"{r['rotated_mean_deg']:.2f} deg")
    return theory


def model_report(folder: Path, params: HDParams, data_root: Path, out: Path, figures: Path,
                 sign_samples) -> None:
    result = analyse_model(folder, data_root, params)
    name = result.name
    write_json(out / f"{name}.json", rounded(result.metrics))
    if not result.rows:
        write_text(out / f"{name}_layers.csv", "layer\n")
        print(f"{name}: {result.metrics.get('reason') or result.metrics['status']}")
        return
    table = pd.DataFrame([rounded(r) for r in result.rows])
    write_text(out / f"{name}_layers.csv", table.to_csv(index=False))
    if result.angles:
        dims = {r["layer"]: r["d"] for r in result.rows}
        plots.plot_layer_angles(name, result.angles, dims, figures / f"{name}_angles.png")
        plots.plot_layer_spread(name, result.angles, dims, sign_samples, figures / f"{name}_angle_spread.png")
        plots.plot_weight_histograms(name, result.weights, figures / f"{name}_weights.png")
    n = result.metrics["n_images"]
    for which in ("weight", "weight_perm", "activation", "activation_perm"):
        plots.plot_dot_products(name, result.dots, which, figures / f"{name}_dots_{which}.png", n)
    shown = [c for c in ("layer", "d", "input", "angle_mean_deg", "angle_sd_deg", "sd_sqrt_d_rad", "r_weight",
                         "r_weight_perm", "r_activation", "r_activation_perm", "weight_angles") if c in table]
    print(f"{name} ({result.metrics['format']}, {result.metrics['method']}; "
          f"{result.metrics['accuracy_on_images']:.2f} % on the {n} analysed test images)")
    if "note" in result.metrics:
        print(f"  {result.metrics['note']}")
    print(table[shown].to_string(index=False))


# figure file (theory_*, or <model>_* for every analysed model) -> what it shows, for reports/hd/README.md
THEORY_FIGURES = {
    "theory_angle_distributions.png": "angle between a Gaussian vector and its sign, per dimension d",
    "theory_spread_vs_d.png": "spread of that angle against d, with the 1/sqrt(d) line",
    "theory_ternary_angle_vs_threshold.png": "ternary angle against the threshold",
    "theory_rotation.png": "correlated inputs, with and without a random rotation",
    "theory_isotropic_dot_products.png": "A.W against A.sign(W) for isotropic inputs",
    "theory_straight_through.png": "the straight-through estimator's forward and backward",
}
MODEL_FIGURES = {
    "angles.png": "angle between each layer's latent and binarized filters",
    "angle_spread.png": "spread of those angles against the Gaussian Monte Carlo",
    "weights.png": "latent weight distributions per layer",
    "dots_weight.png": "dot products with latent vs binarized weights (binarized inputs)",
    "dots_weight_perm.png": "the same after permuting the inputs (control)",
    "dots_activation.png": "dot products with continuous vs binarized activations",
    "dots_activation_perm.png": "the same after permuting the activations (control)",
}


def index_page(out: Path, models: list[str]) -> str:
    """reports/hd/README.md: every figure the stage wrote, with what it shows, and the numbers' files."""
    lines = ["# High-dimensional geometry of binarization (Anderson & Berg)", "",
             "Generated by `dvc repro` (stage `geometry`); do not edit. The numbers are in `theory.json` and "
             "`<model>.json` + `<model>_layers.csv`; the claims they answer are on the front page "
             "(`../README.md`). Background: `docs/hd-geometry.md`.", "", "## Theory (Monte Carlo)", ""]
    lines += [f"- [{caption}](figures/{name})" for name, caption in THEORY_FIGURES.items()
              if (out / "figures" / name).is_file()]
    for model in models:
        shown = [(f"{model}_{suffix}", caption) for suffix, caption in MODEL_FIGURES.items()
                 if (out / "figures" / f"{model}_{suffix}").is_file()]
        lines += ["", f"## {model}", "", f"Layer table: [{model}_layers.csv]({model}_layers.csv)", ""]
        lines += [f"- [{caption}](figures/{name})" for name, caption in shown]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args, params = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tic = time.perf_counter()
    figures = args.out / "figures"
    theory = theory_report(params, args.out, figures)
    for folder in args.models:  # each model's spread plot shows the Gaussian Monte Carlo beside its layers
        model_report(folder, params, args.data_root, args.out, figures, theory.sign)
    write_text(args.out / "README.md", index_page(args.out, [folder.name for folder in args.models]))
    print(f"geometry: wrote {args.out} in {time.perf_counter() - tic:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
