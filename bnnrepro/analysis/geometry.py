"""High-dimensional geometry of binarization: Anderson & Berg, "The High-Dimensional Geometry of
Binary Neural Networks" (arXiv 1705.07199; code github.com/alexanderganderson/bnn_vis).

Two properties explain why binary networks work (docs/hd-geometry.md#claims):

- Angle preservation. For x ~ N(0, I_d), cos angle(x, sign(x)) = sum|x_i| / (sqrt(d) |x|) tends to
  E|x| / sqrt(E x^2) = sqrt(2/pi), so the angle concentrates at arccos(sqrt(2/pi)) = 37.07 deg with
  sd ~ 0.352 / sqrt(d) rad, whereas two independent vectors are 90 deg apart (sd ~ 1/sqrt(d) rad).
- Dot-product proportionality. For inputs a with E[a a^T] proportional to I,
  corr_a(a . w, a . sign(w)) = cos angle(w, sign(w)) (0.80 for Gaussian w), and the regression slope is
  a positive per-filter scale that the following BatchNorm removes.

The first half of this module is the theory (Monte Carlo and closed forms, no model needed), the
second half measures the same quantities in a trained network: per-filter angles between latent
and binarized weights, and dot products on test images captured with forward hooks.

Every random draw comes from a torch.Generator seeded by `generator(seed, *keys)`, so results are
byte-identical from run to run (for a fixed thread count) and one experiment's numbers do not
depend on which other experiments ran before it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bnnrepro.nn.layers import QuantAct, QuantConv2d, QuantLinear, _same_padding
from bnnrepro.nn.quantizers import quantize_weight

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


# ----------------------------------------------------------------------------- trained networks


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every conv and linear layer, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def is_quantized(module: nn.Module) -> bool:
    return isinstance(module, (QuantConv2d, QuantLinear)) and module.precision != "fp"


@torch.no_grad()
def quantized_weight(layer: nn.Module) -> torch.Tensor:
    """W^b: what the layer's forward multiplies with (sign, or ternarize for ternary layers)."""
    return quantize_weight(layer.weight.detach(), layer.precision, rule=layer.sign_rule)


@torch.no_grad()
def has_latent_weights(model: nn.Module) -> bool:
    """False when every quantized layer's weight already equals its quantized value: a packed
    model (export format "packed" stores the signs only), where W^c = W^b and nothing is left to compare."""
    layers = [m for _, m in weight_layers(model) if is_quantized(m)]
    return any(not torch.equal(m.weight, quantized_weight(m)) for m in layers)


def kde_peak(samples: np.ndarray, grid: np.ndarray, bandwidth: float) -> float:
    """The mode of a Gaussian kernel density estimate (the notebook's 'peak angle', bandwidth 0.01 rad)."""
    z = (grid[:, None] - samples[None, :]) / bandwidth
    return float(grid[np.argmax(np.exp(-0.5 * z * z).sum(1))])


@torch.no_grad()
def filter_angles(layer: nn.Module) -> np.ndarray:
    """Per output filter, angle(w^c, w^b) in rad between the latent weights (flattened to the fan-in
    d = cin * kh * kw, or in_features) and their quantized values (their angle_plot; docs/hd-geometry.md#learned-weights)."""
    w = layer.weight.detach().flatten(1)
    return angle(w, quantized_weight(layer).flatten(1)).numpy()


@torch.no_grad()
def layer_weight_summary(layer: nn.Module, latent: bool = True) -> dict[str, object]:
    """d = fan-in, filters, and when the weights are latent: angle statistics in degrees, sd * sqrt(d)
    (rad; 0.352 for Gaussian weights), the large-d limit angle of the layer's own weight distribution
    arccos(E[w q] / sqrt(E[w^2] E[q^2])) (pooled over the layer: below 37 deg when weights pile up at
    the +-1 clip), the latent weights' sd, and the fractions at the clip and (ternary) at zero."""
    w, q = layer.weight.detach().double(), quantized_weight(layer).double()
    out: dict[str, object] = {"precision": layer.precision, "d": w[0].numel(), "filters": w.shape[0],
                              "zero_fraction": float((q == 0).double().mean())}
    if not latent:
        return out
    angles = filter_angles(layer)
    angles = angles[~np.isnan(angles)]  # ternary filters quantized to all zeros have no angle
    grid = np.arange(0.0, math.pi / 2, 0.001)
    limit = float((w * q).mean() / ((w * w).mean() * (q * q).mean()).sqrt())
    out.update({"angle_mean_deg": degrees(angles.mean()), "angle_median_deg": degrees(np.median(angles)),
                "angle_sd_deg": degrees(angles.std()), "angle_peak_deg": degrees(kde_peak(angles, grid, 0.01)),
                "sd_sqrt_d_rad": float(angles.std() * math.sqrt(w[0].numel())),
                "distribution_limit_deg": degrees(math.acos(min(1.0, limit))),
                "weight_sd": float(w.std()), "clipped_fraction": float((w.abs() >= 1.0).double().mean())})
    return out


# ---- dot products on real inputs


class _StopForward(Exception):
    """Raised by a hook once the tensor it was waiting for is captured: skips the rest of the net."""


@torch.no_grad()
def trace(model: nn.Module, x: torch.Tensor, identity_act: str | None = None,
          stop_after: str | None = None) -> tuple[dict[str, torch.Tensor], list[str], torch.Tensor | None]:
    """Run model(x) with forward hooks. Returns the input of every weight layer, the call order of
    weight layers and QuantActs, and the output (None when stopped early). `identity_act` names a
    QuantAct whose quantization is skipped (its output replaced by its input): the layer it feeds
    then receives the continuous A^c. `stop_after` names a weight layer after whose input the
    forward is abandoned (saves time)."""
    inputs, order, handles, output = {}, [], [], None

    def record(name):
        def hook(module, args):
            order.append(name)
            if not isinstance(module, QuantAct):
                inputs[name] = args[0].detach().contiguous()
                if name == stop_after:
                    raise _StopForward
        return hook

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, QuantAct)):
            handles.append(m.register_forward_pre_hook(record(name)))
        if name == identity_act:
            handles.append(m.register_forward_hook(lambda module, args, out: args[0]))
    try:
        output = model(x)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return inputs, order, output


def fed_layers(order: list[str], acts: set[str], layers: set[str]) -> dict[str, str]:
    """{weight layer: the QuantAct that quantized its input}: the weight layer that runs first after
    each activation quantizer (pooling and flattening in between keep it that layer's input)."""
    fed, pending = {}, None
    for name in order:
        if name in acts:
            pending = name
        elif name in layers:
            if pending is not None:
                fed[name] = pending
            pending = None
    return fed


@dataclass
class LayerInputs:
    """What every weight layer received on a batch of images (eval mode)."""

    inputs: dict[str, torch.Tensor]      # layer -> its actual input A (A^b after an activation quantizer)
    continuous: dict[str, torch.Tensor]  # layer -> A^c, the input with the quantizer before it skipped
    fed_by: dict[str, str]               # layer -> the QuantAct that quantized its input
    logits: torch.Tensor                 # the network's output


@torch.no_grad()
def layer_inputs(model: nn.Module, images: torch.Tensor, batch_size: int = 100) -> LayerInputs:
    """For every weight layer its actual input A, and for the layers fed by a QuantAct the
    continuous input A^c: the same forward with that one quantizer made the identity."""
    model.eval()
    names = {name for name, _ in weight_layers(model)}
    acts = {name for name, m in model.named_modules() if isinstance(m, QuantAct)}
    batches = list(images.split(batch_size))
    traced = [trace(model, b) for b in batches]
    inputs = {k: torch.cat([t[0][k] for t in traced]) for k in traced[0][0]}
    fed = fed_layers(traced[0][1], acts, names)
    continuous = {}
    for layer, act in fed.items():
        parts = [trace(model, b, identity_act=act, stop_after=layer)[0][layer] for b in batches]
        continuous[layer] = torch.cat(parts)
    return LayerInputs(inputs, continuous, fed, torch.cat([t[2] for t in traced]))


def padded_input(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The conv input with the layer's own padding applied (replicate SAME or zeros)."""
    if getattr(layer, "same_replicate", False):
        return F.pad(x, _same_padding(x.shape[-2:], layer.kernel_size, layer.stride), mode="replicate")
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        raise NotImplementedError(f"padding {layer.padding!r} / {layer.padding_mode!r} is not supported here")
    ph, pw = layer.padding
    return F.pad(x, (pw, pw, ph, ph))


@dataclass
class OutputSample:
    """Seeded sample of output entries of one layer: image, output channel and position."""

    image: torch.Tensor
    channel: torch.Tensor
    row: torch.Tensor | None = None
    col: torch.Tensor | None = None

    def __getitem__(self, s: slice) -> OutputSample:
        return OutputSample(*(None if t is None else t[s] for t in (self.image, self.channel, self.row, self.col)))


def sample_outputs(layer: nn.Module, padded_shape: tuple[int, ...], n: int, gen: torch.Generator) -> OutputSample:
    """n output entries drawn uniformly (with replacement) from every (image, channel, position)."""
    images, out_channels = padded_shape[0], layer.weight.shape[0]
    image = torch.randint(0, images, (n,), generator=gen)
    channel = torch.randint(0, out_channels, (n,), generator=gen)
    if isinstance(layer, nn.Linear):
        return OutputSample(image, channel)
    (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
    rows, cols = (padded_shape[2] - kh) // sh + 1, (padded_shape[3] - kw) // sw + 1
    return OutputSample(image, channel, torch.randint(0, rows, (n,), generator=gen),
                        torch.randint(0, cols, (n,), generator=gen))


def patches(layer: nn.Module, x: torch.Tensor, at: OutputSample) -> torch.Tensor:
    """The d-dimensional input vector behind each sampled output entry, (n, d) in the order of
    weight.flatten(1): then output = patch . filter, exactly as the conv/linear computes it."""
    if isinstance(layer, nn.Linear):
        return x.flatten(1)[at.image]
    if layer.groups != 1 or layer.dilation != (1, 1):
        raise NotImplementedError("grouped or dilated convolutions are not supported")
    (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
    windows = x.unfold(2, kh, sh).unfold(3, kw, sw)  # (N, C, out_h, out_w, kh, kw): a view, no copy
    return windows[at.image, :, at.row, at.col].flatten(1)


def sampled_outputs(layer: nn.Module, a: torch.Tensor, at: OutputSample, *weights: torch.Tensor,
                    chunk: int = 2048) -> list[np.ndarray]:
    """The layer's linear map of input `a` with each of `weights` (no bias) at the sampled output
    entries: patch . weight[channel], summed in float64. Each patch is gathered once for all the
    weights, a chunk of entries at a time to bound memory."""
    x = padded_input(layer, a) if isinstance(layer, nn.Conv2d) else a
    ws = [w.detach().flatten(1).float() for w in weights]
    out = [[] for _ in ws]
    for s in range(0, len(at.image), chunk):
        p, channel = patches(layer, x, at[s:s + chunk]).float(), at.channel[s:s + chunk]
        for o, w in zip(out, ws):
            o.append((p * w[channel]).sum(1, dtype=torch.float64))
    return [torch.cat(o).numpy() for o in out]


def permuted(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x with all its entries (every image, channel and position) randomly permuted: the same values,
    none of their correlations (the notebook's permutation control)."""
    return x.flatten()[torch.randperm(x.numel(), generator=gen)].view_as(x)


@dataclass
class DotProducts:
    """Sampled dot products of one layer. x is the binarized product, y the one it approximates."""

    layer: str
    d: int
    input: str  # "continuous input" (image / fp activation) or the QuantAct that quantized it
    weight: tuple[np.ndarray, np.ndarray] | None = None        # (A . W^b, A . W^c)
    weight_perm: tuple[np.ndarray, np.ndarray] | None = None   # the same with A permuted
    activation: tuple[np.ndarray, np.ndarray] | None = None    # (A^c . W^b, A^b . W^b)
    activation_perm: tuple[np.ndarray, np.ndarray] | None = None
    stats: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def dot_product_analysis(model: nn.Module, traced: LayerInputs, n_samples: int, seed: int,
                         latent: bool = True) -> list[DotProducts]:
    """Anderson & Berg Fig. 3 on the traced images (`layer_inputs`), for every quantized layer, on
    n_samples seeded output entries:
    - weight binarization: A . W^b against A . W^c (A = the layer's actual input), only with latent weights;
    - permutation control: the same with A's entries randomly permuted (destroys input correlations);
    - activation binarization (layers fed by a QuantAct): A^c . W^b against A^b . W^b, where A^c is
      the input before that quantizer and A^b = A after it, and its permutation control (A^c and A^b
      permuted together).
    stats holds Pearson r and the least-squares slope of y on x for each pair."""
    inputs, continuous, fed = traced.inputs, traced.continuous, traced.fed_by
    results = []
    for name, layer in weight_layers(model):
        if not is_quantized(layer):
            continue
        a, wb = inputs[name], quantized_weight(layer)
        shape = padded_input(layer, a[:1]).shape if isinstance(layer, nn.Conv2d) else a.shape
        at = sample_outputs(layer, (len(a),) + tuple(shape[1:]), n_samples, generator(seed, "sample", name))
        res = DotProducts(name, layer.weight[0].numel(), fed.get(name, "continuous input"))
        wc = layer.weight.detach()
        a_wb, a_wc = sampled_outputs(layer, a, at, wb, wc)
        if latent:
            res.weight = (a_wb, a_wc)
            res.weight_perm = tuple(sampled_outputs(layer, permuted(a, generator(seed, "permute", name)), at, wb, wc))
        if name in continuous:
            ac = continuous[name]
            (ac_wb,) = sampled_outputs(layer, ac, at, wb)
            res.activation = (ac_wb, a_wb)
            gen = generator(seed, "permute-activation", name)  # one permutation for A^c and A^b
            perm = torch.randperm(a.numel(), generator=gen)
            (acp_wb,) = sampled_outputs(layer, ac.flatten()[perm].view_as(ac), at, wb)
            (abp_wb,) = sampled_outputs(layer, a.flatten()[perm].view_as(a), at, wb)
            res.activation_perm = (acp_wb, abp_wb)
        for key in ("weight", "weight_perm", "activation", "activation_perm"):
            pair = getattr(res, key)
            if pair is not None:
                res.stats[f"r_{key}"], res.stats[f"slope_{key}"] = pearson_and_slope(*pair)
        results.append(res)
    return results
