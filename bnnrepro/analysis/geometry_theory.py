"""High-dimensional geometry of binarization, the theory: Anderson & Berg, "The High-Dimensional Geometry of
Binary Neural Networks" (arXiv 1705.07199; code github.com/alexanderganderson/bnn_vis).

Two properties explain why binary networks work (docs/hd-geometry.md#claims):

- Angle preservation. For x ~ N(0, I_d), cos angle(x, sign(x)) = sum|x_i| / (sqrt(d) |x|) tends to
  E|x| / sqrt(E x^2) = sqrt(2/pi), so the angle concentrates at arccos(sqrt(2/pi)) = 37.07 deg with
  sd ~ 0.352 / sqrt(d) rad, whereas two independent vectors are 90 deg apart (sd ~ 1/sqrt(d) rad).
- Dot-product proportionality. For inputs a with E[a a^T] proportional to I,
  corr_a(a . w, a . sign(w)) = cos angle(w, sign(w)) (0.80 for Gaussian w), and the regression slope is
  a positive per-filter scale that the following BatchNorm removes.

This module holds the Monte Carlo experiments and closed forms (no model needed) and the primitives both halves
share (angles, seeded generators, correlation); geometry.py measures the same quantities in trained networks.

Every random draw comes from a torch.Generator seeded by `generator(seed, *keys)`, so results are
byte-identical from run to run (for a fixed thread count) and one experiment's numbers do not
depend on which other experiments ran before it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

BINARY_LIMIT_RAD = math.acos(math.sqrt(2 / math.pi))  # 0.6470 rad = 37.07 deg
# delta method on cos = mean|x| / rms(x): sd[angle] * sqrt(d) -> sqrt((1 - 3/pi) / (1 - 2/pi)) = 0.352 rad
SPREAD_CONSTANT_RAD = math.sqrt((1 - 3 / math.pi) / (1 - 2 / math.pi))
ROWS_PER_CHUNK = 1 << 22  # Monte Carlo draws are made in blocks of at most this many numbers (memory)


def generator(seed: int, *keys) -> torch.Generator:
    """A generator seeded by (seed, keys): independent streams per experiment, stable across runs."""
    digest = hashlib.sha256(repr((seed,) + keys).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """angle(a, b) = arccos(a . b / (|a| |b|)) in radians along the last dimension (batched, float64).
    NaN where a vector is zero (a ternarized vector can be)."""
    a, b = a.double(), b.double()
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return cos.clamp(-1, 1).acos()


def degrees(x):
    return x * 180.0 / math.pi


def _gaussian_blocks(n: int, d: int, gen: torch.Generator):
    """n draws of N(0, I_d), yielded as blocks of rows (bounded memory for large d). Drawn in float32
    (4x faster than float64) and widened: angle() then sums in float64."""
    rows = max(1, ROWS_PER_CHUNK // d)
    for start in range(0, n, rows):
        yield torch.randn(min(rows, n - start), d, generator=gen).double()


# ------------------------------------------------------------------------------------- theory


@dataclass
class AngleSamples:
    """Monte Carlo angles (rad) at dimension d: x vs sign(x), and random pairs (x_2i, x_2i+1)."""

    d: int
    binarized: np.ndarray
    random_pair: np.ndarray

    def summary(self) -> dict[str, float]:
        b, r = self.binarized, self.random_pair
        return {"mean_deg": degrees(b.mean()), "median_deg": degrees(np.median(b)), "sd_deg": degrees(b.std()),
                "sd_sqrt_d_rad": b.std() * math.sqrt(self.d),
                "random_pair_mean_deg": degrees(r.mean()), "random_pair_sd_deg": degrees(r.std()),
                "random_pair_sd_sqrt_d_rad": r.std() * math.sqrt(self.d)}


def sign_angle_mc(d: int, n: int, gen: torch.Generator) -> AngleSamples:
    """Angle Preservation Property (docs/hd-geometry.md#angle-preservation): angle(x, sign(x)) for n vectors
    x ~ N(0, I_d); mean -> arccos(sqrt(2/pi)) = 37.07 deg, sd ~ 0.352/sqrt(d) rad. For contrast,
    the angle between independent Gaussian vectors (the n/2 disjoint pairs of the same draws),
    which concentrates at 90 deg with sd ~ 1/sqrt(d) rad."""
    binarized, pairs = [], []
    for x in _gaussian_blocks(n, d, gen):
        binarized.append(angle(x, torch.sign(x)))  # exact zeros have probability 0
        pairs.append(angle(x[0::2][: len(x) // 2], x[1::2]))
    return AngleSamples(d, torch.cat(binarized).numpy(), torch.cat(pairs).numpy())


def _normal_pdf(t: float) -> float:
    return math.exp(-t * t / 2) / math.sqrt(2 * math.pi)


def _normal_cdf(t: float) -> float:
    return 0.5 * math.erfc(-t / math.sqrt(2))


def ternary_cosine(t: float) -> float:
    """cos angle(x, T(x)) in the d -> infinity limit, for x ~ N(0, 1) coordinates and
    T(x) = sign(x) * 1[|x| > t] (t = threshold / sigma), Anderson & Berg's ternary case (docs/hd-geometry.md#ternary-angle):
        E[|x| 1(|x|>t)] / sqrt(E[x^2] P(|x|>t)) = sqrt(2) phi(t) / sqrt(1 - Phi(t)).
    t = 0 gives the binary sqrt(2/pi)."""
    return math.sqrt(2) * _normal_pdf(t) / math.sqrt(1 - _normal_cdf(t))


def ternary_angle_rad(t: float) -> float:
    """Limit angle between a Gaussian vector and its ternarization at threshold t (in units of sigma)."""
    return math.acos(min(1.0, ternary_cosine(t)))


def ternary_zero_fraction(t: float) -> float:
    """P(|x| <= t) for x ~ N(0, 1): the fraction of ternary zeros, 2 Phi(t) - 1."""
    return math.erf(t / math.sqrt(2))


def ternary_optimum(step: float = 1e-4, t_max: float = 2.0) -> tuple[float, float]:
    """(t*, angle(t*) rad): the threshold that minimizes the ternary angle (t* ~ 0.612, 25.85 deg)."""
    ts = np.arange(0.0, t_max, step)
    cos = np.array([ternary_cosine(t) for t in ts])
    best = int(np.argmax(cos))
    return float(ts[best]), math.acos(min(1.0, float(cos[best])))


def ternary_angle_mc(d: int, n: int, thresholds: list[float], gen: torch.Generator) -> dict[float, np.ndarray]:
    """angle(x, T_t(x)) for n vectors x ~ N(0, I_d) and every threshold t (the same draws for all
    thresholds, so the curve over t is smooth). NaN where T_t(x) = 0 (never for d of hundreds)."""
    out = {t: [] for t in thresholds}
    for x in _gaussian_blocks(n, d, gen):
        for t in thresholds:
            out[t].append(angle(x, torch.sign(x) * (x.abs() > t)))
    return {t: torch.cat(v).numpy() for t, v in out.items()}


def haar_rotation(d: int, gen: torch.Generator) -> torch.Tensor:
    """A random orthogonal d x d matrix, Haar-distributed: QR of a Gaussian matrix with the signs
    of R's diagonal moved into Q (Mezzadri 2007). Anderson & Berg use Stewart's Householder
    algorithm for the same distribution (restricted to det = +1, which no angle notices)."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def anisotropic_sign_angle_mc(d: int, n: int, k: float, gen: torch.Generator,
                              rotation: torch.Tensor | None = None) -> np.ndarray:
    """angle(u, sign(u)) for correlated inputs (docs/hd-geometry.md#correlated-inputs; hd_figures "Exponential
    Covariance"): u_i = z_i exp(k (i - d/2)), z ~ N(0, I_d), i = 0..d-1 (the notebook scales the
    standard deviation by this factor). A few coordinates dominate, so sign() loses the direction
    and the angle leaves 37 deg. With a fixed rotation R the vector is binarized in a generic
    basis, u -> u R, and the angle returns to arccos(sqrt(2/pi))."""
    scale = torch.exp(k * (torch.arange(d, dtype=torch.float64) - d / 2))
    angles = []
    for z in _gaussian_blocks(n, d, gen):
        u = z * scale
        if rotation is not None:
            u = u @ rotation
        angles.append(angle(u, torch.sign(u)))
    return torch.cat(angles).numpy()


def pearson_and_slope(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Pearson r of (x, y) and the least-squares slope of y on x (float64)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy, sxy = (dx * dx).sum(), (dy * dy).sum(), (dx * dy).sum()
    if sxx == 0 or syy == 0:
        return float("nan"), float("nan")
    return float(sxy / math.sqrt(sxx * syy)), float(sxy / sxx)


def isotropic_dot_products(d: int, n: int, gen: torch.Generator) -> dict[str, object]:
    """Dot Product Proportionality Property (docs/hd-geometry.md#dot-product-proportionality): for one w ~ N(0, I_d) and n
    inputs a with i.i.d. +-1 entries (E[a a^T] = I), corr(a . sign(w), a . w) = cos angle(w, sign(w))
    ~ 0.80, and the slope of a . w on a . sign(w) is mean|w_i|."""
    w = torch.randn(d, generator=gen, dtype=torch.float64)
    a = torch.sign(torch.randn(n, d, generator=gen, dtype=torch.float64))
    binary, continuous = a @ torch.sign(w), a @ w
    r, slope = pearson_and_slope(binary, continuous)
    return {"d": d, "n": n, "r": r, "slope": slope, "cos_angle": math.cos(float(angle(w, torch.sign(w)))),
            "mean_abs_w": float(w.abs().mean()), "binary": binary.numpy(), "continuous": continuous.numpy()}
