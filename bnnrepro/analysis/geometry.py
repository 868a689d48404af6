"""High-dimensional geometry of binarization, measured in trained networks (Anderson & Berg, arXiv 1705.07199;
docs/hd-geometry.md#claims): per-filter angles between latent and binarized weights, and dot products on test
images captured with forward hooks. The theory these are compared with is geometry_theory.py.

Every random draw comes from geometry_theory.generator(seed, *keys), so results are byte-identical from run to run
(for a fixed thread count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bnnrepro.analysis.geometry_theory import angle, degrees, generator, pearson_and_slope
from bnnrepro.nn.layers import QuantAct, is_quantized, same_padding
from bnnrepro.nn.quantizers import quantize_weight


# ----------------------------------------------------------------------------- trained networks


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every conv and linear layer, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]



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
        return F.pad(x, same_padding(x.shape[-2:], layer.kernel_size, layer.stride), mode="replicate")
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
