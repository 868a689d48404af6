"""Figures of the HD-geometry report (Anderson & Berg, arXiv 1705.07199), regenerated as PNG.

Theory: angle distributions vs d (their ctns_rand_bin), spread and mean vs d, the ternary angle vs
threshold (peak_angle_vs_threshold_tern, ternary_angle_dist), the rotation experiment
(exp_rot_bin), isotropic dot products and the straight-through estimator (straight_through).
Per model: angle distributions per layer (angle_plot), log d vs log sd (w_sigmas), latent weight
histograms (weight_dist) and the 2-D dot-product histograms with r in each title (weight_bin,
activ_bin, weight_random_perm_bin). Written through bnnrepro.report.plots.save (Agg backend,
atomic writes, no version metadata: the same data gives the same bytes).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bnnrepro.analysis import geometry as g
from bnnrepro.analysis import geometry_theory as theory
from bnnrepro.report.plots import save  # selects the Agg backend; deterministic PNG bytes

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.colors import LogNorm  # noqa: E402

LIMIT_DEG = theory.degrees(theory.BINARY_LIMIT_RAD)
LIMIT_STYLE = dict(color="k", ls="--", lw=1)
LIMIT_LABEL = rf"$\arccos\sqrt{{2/\pi}}$ = {LIMIT_DEG:.2f}°"


def _grid(n: int, cols: int, width: float = 3.2, height: float = 2.9):
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _bins(samples_deg: np.ndarray) -> np.ndarray:
    """Bins about a quarter of the spread wide (0.05 to 1 degree): narrow peaks at large d stay visible."""
    width = float(np.clip(samples_deg.std() / 4, 0.05, 1.0))
    lo, hi = np.floor(samples_deg.min() / width) * width, samples_deg.max() + width
    return np.arange(lo, hi, width)


def kde(samples: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian kernel density on `grid` with Silverman's bandwidth (at least 1e-3 of the range)."""
    samples = samples[~np.isnan(samples)]
    bw = max(1.06 * samples.std() * len(samples) ** -0.2, 1e-3 * (grid[-1] - grid[0]))
    z = (grid[:, None] - samples[None, :]) / bw
    return np.exp(-0.5 * z * z).sum(1) / (len(samples) * bw * math.sqrt(2 * math.pi))


# ------------------------------------------------------------------------------------- theory


def plot_sign_angle_distributions(sign: dict[int, theory.AngleSamples], out: Path) -> None:
    """ctns_rand_bin: angle(x, sign x) against the angle between two random vectors, one panel per d."""
    fig, axes = _grid(len(sign), cols=min(5, len(sign)))
    for i, (ax, (d, s)) in enumerate(zip(axes, sign.items())):
        ax.axvline(LIMIT_DEG, color="0.4", ls="--", lw=0.8, zorder=0, label=LIMIT_LABEL)
        ax.hist(theory.degrees(s.random_pair), bins=_bins(theory.degrees(s.random_pair)), density=True, color="C0",
                histtype="stepfilled", alpha=0.7, label=r"$\angle(u, v)$, independent")
        binarized = theory.degrees(s.binarized)
        ax.hist(binarized, bins=_bins(binarized), density=True, color="C3", histtype="stepfilled", alpha=0.7,
                label=r"$\angle(u, \mathrm{sign}\,u)$")
        ax.text(0.98, 0.97, f"sign: {binarized.mean():.2f}° ± {binarized.std():.2f}°", transform=ax.transAxes,
                ha="right", va="top", fontsize=8, color="C3")
        ax.set(title=f"d = {d}", xlim=(0, 180), xticks=[0, 37, 90, 180], xlabel="angle (degrees)")
        ax.set_ylabel("density" if i % 5 == 0 else "")
        if i == 0:
            ax.legend(fontsize=7, loc="center right")
    fig.suptitle(f"Gaussian vectors u ~ N(0, I_d): binarization keeps them ~37° from themselves, "
                 f"independent vectors are ~90° apart ({len(s.binarized):,} draws per d)", y=1.0)
    fig.tight_layout()
    save(fig, out)


def plot_spread_vs_d(sign: dict[int, theory.AngleSamples], out: Path) -> None:
    """Mean angle vs d, and log d vs log sd with the 0.352/sqrt(d) and 1/sqrt(d) lines."""
    dims = np.array(list(sign))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(dims, [theory.degrees(s.binarized.mean()) for s in sign.values()], "o-", color="C3",
              label="Monte Carlo mean")
    left.axhline(LIMIT_DEG, **LIMIT_STYLE, label=LIMIT_LABEL)
    left.set(xscale="log", xlabel="dimension d", ylabel=r"mean $\angle(u, \mathrm{sign}\,u)$ (degrees)",
             title="Mean angle: biased low at small d")
    left.legend()
    d_line = np.geomspace(dims.min() / 1.5, dims.max() * 1.5, 50)
    right.loglog(dims, [s.binarized.std() for s in sign.values()], "o", color="C3",
                 label=r"sd $\angle(u, \mathrm{sign}\,u)$ (Monte Carlo)")
    right.loglog(d_line, theory.SPREAD_CONSTANT_RAD / np.sqrt(d_line), color="C3", lw=1,
                 label=rf"{theory.SPREAD_CONSTANT_RAD:.3f}/$\sqrt{{d}}$ (delta method)")
    right.loglog(dims, [s.random_pair.std() for s in sign.values()], "s", color="C0",
                 label=r"sd $\angle(u, v)$, independent")
    right.loglog(d_line, 1 / np.sqrt(d_line), color="C0", lw=1, label=r"1/$\sqrt{d}$")
    right.set(xlabel="dimension d", ylabel="sd of the angle (radians)", title="Spread shrinks as d^-1/2")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
    save(fig, out)


def plot_ternary(ternary: dict[float, np.ndarray], d: int, out: Path) -> None:
    """peak_angle_vs_threshold_tern and ternary_angle_dist: closed form, Monte Carlo medians, zero fraction."""
    t_opt, angle_opt = theory.ternary_optimum()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
    fig.get_layout_engine().set(wspace=0.08)
    ts = np.linspace(0, 1.5, 301)
    left.plot(ts, [theory.degrees(theory.ternary_angle_rad(t)) for t in ts], color="C2",
              label=r"closed form $\arccos(\sqrt{2}\,\varphi(t)/\sqrt{1-\Phi(t)})$")
    left.plot(list(ternary), [theory.degrees(np.nanmedian(a)) for a in ternary.values()], "o", color="k",
              label=f"Monte Carlo median, d = {d}")
    left.plot([t_opt], [theory.degrees(angle_opt)], "*", ms=12, color="C1",
              label=f"optimum t* = {t_opt:.3f}: {theory.degrees(angle_opt):.2f}°")
    left.axhline(LIMIT_DEG, **LIMIT_STYLE, label=f"binary (t = 0): {LIMIT_DEG:.2f}°")
    left.set(xlabel="threshold t (units of the weight sd)", ylabel="angle to the ternarized vector (degrees)",
             ylim=(0, 45), title="Ternary angle vs threshold")
    zeros = left.twinx()
    zeros.plot(ts, [theory.ternary_zero_fraction(t) for t in ts], ":", color="0.4")
    zeros.set(ylim=(0, 1), ylabel="fraction of zeros (dotted line)")
    left.legend(fontsize=8, loc="lower left")
    left.grid(alpha=0.3)
    bins = np.arange(20, 42, 0.25)
    for i, (t, a) in enumerate(ternary.items()):
        right.hist(theory.degrees(a), bins=bins, density=True, histtype="step", lw=1.5, color=f"C{i}",
                   label=f"t = {t}: median {theory.degrees(np.nanmedian(a)):.2f}°")
        right.axvline(theory.degrees(theory.ternary_angle_rad(t)), color=f"C{i}", ls=":", lw=1)
    right.set(xlabel="angle to the ternarized vector (degrees)", ylabel="density",
              title=f"Distributions at d = {d} (dotted: closed form)")
    right.legend(fontsize=8)
    save(fig, out)


def plot_rotation(rotation: dict[int, tuple[np.ndarray, np.ndarray]], k: float, out: Path) -> None:
    """exp_rot_bin: correlated inputs binarized in the standard basis and after a random rotation."""
    fig, axes = _grid(len(rotation), cols=len(rotation), width=3.8, height=3.2)
    bins = np.arange(0, 90.5, 0.5)
    for i, (ax, (d, (plain, rotated))) in enumerate(zip(axes, rotation.items())):
        ax.hist(theory.degrees(plain), bins=bins, density=True, color="C3", histtype="stepfilled", alpha=0.6,
                label=r"$\angle(u, \mathrm{sign}\,u)$")
        ax.hist(theory.degrees(rotated), bins=bins, density=True, color="C1", histtype="stepfilled", alpha=0.6,
                label=r"$\angle(Ru, \mathrm{sign}\,Ru)$, R random rotation")
        ax.axvline(LIMIT_DEG, **LIMIT_STYLE, label=LIMIT_LABEL)
        ax.text(0.98, 0.97, f"plain: {theory.degrees(plain.mean()):.1f}°\nrotated: {theory.degrees(rotated.mean()):.1f}°",
                transform=ax.transAxes, ha="right", va="top", fontsize=8)
        ax.set(title=f"d = {d}", xlim=(0, 90), xlabel="angle (degrees)", ylabel="density" if i == 0 else "")
    fig.suptitle(rf"Correlated inputs $u_i = z_i\,e^{{{k}(i - d/2)}}$, z ~ N(0, I): sign() alone loses the "
                 "direction, a fixed random rotation R restores ~37°", y=1.0)
    fig.tight_layout()
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3,
               frameon=False)
    save(fig, out)


def plot_isotropic_dots(iso: dict, out: Path) -> None:
    """Dot-product proportionality for a Gaussian w and i.i.d. +-1 inputs: r = cos angle(w, sign w)."""
    fig, ax = plt.subplots(figsize=(5.4, 4.4))
    image = _hist2d(ax, iso["binary"], iso["continuous"])
    fig.colorbar(image, ax=ax, label="count (log scale)")
    ax.set(xlabel=r"$a \cdot \mathrm{sign}(w)$", ylabel=r"$a \cdot w$",
           title=f"Gaussian w (d = {iso['d']}), {iso['n']:,} inputs a with i.i.d. ±1 entries\n"
                 f"r = {iso['r']:.3f}; predicted cos ∠(w, sign w) = {iso['cos_angle']:.3f}")
    save(fig, out)


def plot_straight_through(out: Path) -> None:
    """straight_through: sign() forward, the clip(x, -1, 1) whose gradient the backward pass uses."""
    x = np.linspace(-2.3, 2.3, 461)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.6), sharey=True, layout="constrained")
    for ax, y, title in zip(axes, (np.where(x >= 0, 1.0, -1.0), np.clip(x, -1, 1)),
                            ("forward: sign(x)", "backward uses d/dx of clip(x, -1, 1)")):
        ax.plot(x, y, lw=2.5, alpha=0.7)
        ax.set(title=title, xlabel="x", xlim=(-2.3, 2.3), ylim=(-2.3, 2.3), aspect="equal")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("f(x)")
    fig.suptitle("Straight-through estimator (the `bnn` estimator of bnnrepro.nn.quantizers)")
    save(fig, out)


# -------------------------------------------------------------------------------------- models


def plot_layer_angles(name: str, angles: dict[str, np.ndarray], dims: dict[str, int], out: Path) -> None:
    """angle_plot: the distribution of per-filter angle(w^c, w^b) for every layer, full and zoomed."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (lo, hi) in zip(axes, ((0, 90), (22.5, 50))):
        grid = np.linspace(lo, hi, 901)
        for i, (layer, a) in enumerate(angles.items()):
            ax.plot(grid, kde(theory.degrees(a), grid), color=f"C{i}", lw=1.5, label=f"{layer} (d = {dims[layer]})")
        ax.axvline(LIMIT_DEG, **LIMIT_STYLE, label=LIMIT_LABEL)
        ax.set(xlim=(lo, hi), xlabel=r"$\angle(w^c, w^b)$ per filter (degrees)", ylabel="density (KDE)")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{name}: angle between latent and binarized filters")
    axes[1].set_title("zoom on 22.5°-50°")
    axes[0].legend(fontsize=8, loc="upper right")
    save(fig, out)


def plot_layer_spread(name: str, angles: dict[str, np.ndarray], dims: dict[str, int],
                      sign: dict[int, theory.AngleSamples], out: Path) -> None:
    """w_sigmas: log d vs log sd of the per-filter angle, against the Gaussian d^-1/2 law."""
    fig, ax = plt.subplots(figsize=(6, 4.4))
    d_all = [dims[k] for k in angles] + list(sign)
    d_line = np.geomspace(min(d_all) / 1.5, max(d_all) * 1.5, 50)
    ax.loglog(d_line, theory.SPREAD_CONSTANT_RAD / np.sqrt(d_line), color="k", lw=1,
              label=rf"Gaussian theory {theory.SPREAD_CONSTANT_RAD:.3f}/$\sqrt{{d}}$ (slope -1/2)")
    ax.loglog(list(sign), [s.binarized.std() for s in sign.values()], "s", color="0.6", ms=5,
              label="Gaussian Monte Carlo")
    for i, (layer, a) in enumerate(angles.items()):
        ax.loglog([dims[layer]], [np.nanstd(a)], "o", color=f"C{i}", ms=8, label=f"{layer} (d = {dims[layer]})")
    ax.set(xlabel="fan-in d", ylabel=r"sd of $\angle(w^c, w^b)$ over filters (radians)",
           title=f"{name}: spread of the weight angle vs dimension")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save(fig, out)


def plot_weight_histograms(name: str, weights: dict[str, np.ndarray], out: Path) -> None:
    """weight_dist: latent weights per layer on [-1, 1] (the training clip), log density."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    bins = np.linspace(-1, 1, 201)
    for i, (layer, w) in enumerate(weights.items()):
        ax.hist(w, bins=bins, density=True, histtype="step", lw=1.5, color=f"C{i}",
                label=f"{layer}: sd {w.std():.3f}")
    ax.set(yscale="log", xlim=(-1.05, 1.05), xlabel="latent weight $w^c$", ylabel="density (log)",
           title=f"{name}: latent weight distributions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, out)


def _hist2d(ax, x: np.ndarray, y: np.ndarray):
    """50x50 log-count histogram, the least-squares line, and gray where the two signs disagree."""
    def span(v):
        lo, hi = float(v.min()), float(v.max())
        pad = 0.03 * (hi - lo or 1.0)
        return lo - pad, hi + pad

    (x0, x1), (y0, y1) = span(x), span(y)
    if x0 < 0 < x1 and y0 < 0 < y1:
        ax.fill_between([0, x1], y0, 0, color="0.88", zorder=0, lw=0)
        ax.fill_between([x0, 0], 0, y1, color="0.88", zorder=0, lw=0)
    *_, image = ax.hist2d(x, y, bins=50, range=[(x0, x1), (y0, y1)], norm=LogNorm(), cmap="viridis", cmin=1,
                          zorder=1)
    if x.std() > 0:
        slope, intercept = np.polyfit(x, y, 1)
        ax.plot([x0, x1], [intercept + slope * x0, intercept + slope * x1], color="C3", lw=1, zorder=2)
    ax.set(xlim=(x0, x1), ylim=(y0, y1))
    return image


def plot_dot_products(name: str, dots: list[g.DotProducts], which: str, out: Path, n_images: int) -> bool:
    """One 2-D histogram per layer of a Fig. 3 comparison (`which` is a DotProducts field), r in each
    title. Returns False (and writes nothing) when no layer has that comparison."""
    labels = {"weight": (r"$A \cdot W^b$", r"$A \cdot W^c$", "weight binarization"),
              "weight_perm": (r"$A_{perm} \cdot W^b$", r"$A_{perm} \cdot W^c$",
                              "weight binarization, inputs randomly permuted (control)"),
              "activation": (r"$A^c \cdot W^b$", r"$A^b \cdot W^b$", "activation binarization"),
              "activation_perm": (r"$A^c_{perm} \cdot W^b$", r"$A^b_{perm} \cdot W^b$",
                                  "activation binarization, inputs randomly permuted (control)")}
    panels = [d for d in dots if getattr(d, which) is not None]
    if not panels:
        return False
    xlabel, ylabel, what = labels[which]
    fig, axes = _grid(len(panels), cols=min(4, len(panels)), width=3.4, height=3.3)
    for ax, d in zip(axes, panels):
        x, y = getattr(d, which)
        _hist2d(ax, x, y)
        ax.set(title=f"{d.layer} (d = {d.d}): r = {d.stats[f'r_{which}']:.2f}", xlabel=xlabel, ylabel=ylabel)
        ax.ticklabel_format(style="sci", scilimits=(-3, 3))
    fig.suptitle(f"{name}: {what}\n{n_images} test images, {len(x):,} sampled outputs per layer; "
                 "colour: log count; red: least squares; gray: the two signs disagree", y=1.0)
    fig.tight_layout()
    save(fig, out)
    return True
