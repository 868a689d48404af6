"""Sign and ternary quantizers with straight-through estimators (STE).

Forward gives the quantized value exactly (+-1, or -1/0/+1); backward multiplies the incoming
gradient by the derivative of a smooth surrogate. The surrogates, for |x| the input magnitude:

    vanilla  identity                                   d/dx = 1
    bnn      hardtanh (Hubara et al. 2016)              d/dx = 1 on -1 < x < 1 (strict), else 0
    bireal   2x - sign(x) x^2 on [-1, 1] (Liu et al. 2018, Bi-Real Net)   d/dx = 2 - 2|x| inside, else 0
    swish    SignSwish 2 s(bx)(1 + bx(1 - s(bx))) - 1 (Darabi et al. 2018, BNN+)
             d/dx = 2b s(1 - s)(2 + bx(1 - 2s)), with s = sigmoid(bx)

sign(0) = +1 (as larq and the SGDAT code; the RWTH code maps 0 to -1 through round-half-even,
which only matters for bit parity at exact zeros).
"""

from __future__ import annotations

import functools

import torch

ESTIMATORS = ("vanilla", "bnn", "bireal", "swish")

# Delta = k * mean|x| (Li et al. 2016, ternary weight networks); the RWTH code uses k = 0.7 for
# weights ("twn") and k = 0.4 for activations ("tbn").
TERNARY_WEIGHT_K = 0.7
TERNARY_ACT_K = 0.4


def sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0, -1 elsewhere: never 0.

    copysign(1, x + 0.0): adding +0.0 turns -0.0 into +0.0, so both zeros give +1. It is several
    times faster on the CPU than torch.where(x >= 0, 1, -1). Both kernels write into one new buffer,
    empty_like(x): one allocation instead of two halves the time on the CPU, where a large new tensor
    costs page faults, and keeps x's exact strides (channels_last stays channels_last)."""
    out = torch.add(x, 0.0, out=torch.empty_like(x))
    return torch.copysign(_one(x.dtype, x.device), out, out=out)


@functools.cache
def _one(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A 0-dim 1 per dtype and device, made once (a new one per call costs a kernel launch each);
    never an inference tensor, whatever mode the first call comes from."""
    with torch.inference_mode(False):
        return torch.ones((), dtype=dtype, device=device)


def ternarize(x: torch.Tensor, k: float) -> torch.Tensor:
    """+1 above Delta, -1 below -Delta, 0 between; Delta = k * mean|x| over the whole tensor. No scale."""
    delta = k * x.abs().mean()
    return (x > delta).to(x.dtype) - (x < -delta).to(x.dtype)


def surrogate(x: torch.Tensor, estimator: str, beta: float = 10.0) -> torch.Tensor:
    """The smooth function whose derivative an STE uses (its values are used by ternary activations)."""
    if estimator == "vanilla":
        return x
    if estimator == "bnn":
        return x.clamp(-1, 1)
    if estimator == "bireal":
        c = x.clamp(-1, 1)
        return 2 * c - c.sign() * c * c
    if estimator == "swish":
        s = torch.sigmoid(beta * x)
        return 2 * s * (1 + beta * x * (1 - s)) - 1
    raise ValueError(f"Unknown gradient estimator '{estimator}'. Valid: {ESTIMATORS}")


def surrogate_grad(x: torch.Tensor, estimator: str, beta: float = 10.0) -> torch.Tensor:
    if estimator == "vanilla":
        return torch.ones_like(x)
    if estimator == "bnn":
        return torch.ops.aten.hardtanh_backward(torch.ones_like(x), x, -1.0, 1.0)  # 1 on -1 < x < 1
    inside = (x.abs() < 1).to(x.dtype)
    if estimator == "bireal":
        return (2 - 2 * x.abs()) * inside
    if estimator == "swish":
        # sigmoid(-bx) instead of 1 - s: no cancellation for large |x|
        s, s_neg = torch.sigmoid(beta * x), torch.sigmoid(-beta * x)
        return 2 * beta * s * s_neg * (2 + beta * x * (s_neg - s))
    raise ValueError(f"Unknown gradient estimator '{estimator}'. Valid: {ESTIMATORS}")


class _StraightThrough(torch.autograd.Function):
    """Forward: quantize(x). Backward: grad * surrogate'(x)."""

    @staticmethod
    def forward(ctx, x, quantize, estimator, beta):
        ctx.save_for_backward(x)
        ctx.estimator, ctx.beta = estimator, beta
        return quantize(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if ctx.estimator == "vanilla":
            return grad, None, None, None
        if ctx.estimator == "bnn":  # the hot path of every binary network: one fused kernel
            return torch.ops.aten.hardtanh_backward(grad, x, -1.0, 1.0), None, None, None
        return grad * surrogate_grad(x, ctx.estimator, ctx.beta), None, None, None


def binarize(x: torch.Tensor, estimator: str = "vanilla", beta: float = 10.0) -> torch.Tensor:
    """sign(x) forward, surrogate gradient backward."""
    return _StraightThrough.apply(x, sign, estimator, beta)


def ternarize_ste(x: torch.Tensor, k: float, estimator: str = "vanilla", beta: float = 10.0) -> torch.Tensor:
    """Ternarized surrogate(x) forward (the RWTH code ternarizes the STE function's output),
    surrogate gradient backward."""
    return _StraightThrough.apply(x, lambda t: ternarize(surrogate(t, estimator, beta), k), estimator, beta)


# XNOR-Net's weight scale alpha = mean|W| (Rastegari et al. 2016), over the whole tensor or per output channel
WEIGHT_SCALES = ("none", "tensor", "channel")


def weight_scale(w: torch.Tensor, scale: str) -> torch.Tensor:
    """alpha = mean|W| over the whole tensor ("tensor", BinSFO's --xnor) or over each output channel
    ("channel", AdamBNN's HardBinaryConv), shaped to multiply W."""
    if scale == "tensor":
        return w.abs().mean()
    if scale == "channel":
        return w.abs().mean(dim=tuple(range(1, w.ndim)), keepdim=True)
    raise ValueError(f"Unknown weight scale '{scale}'. Valid: {WEIGHT_SCALES}")


def binarize_scaled(w: torch.Tensor, scale: str) -> torch.Tensor:
    """alpha * sign(W) forward, identity backward. alpha is computed inside the straight-through
    function, so no gradient flows through it (both AdamBNN and BinSFO detach it) and W receives the
    gradient of the scaled weight unchanged, not alpha times it, as in both codes."""
    return _StraightThrough.apply(w, lambda t: weight_scale(t, scale) * sign(t), "vanilla", 10.0)


def quantize_weight(w: torch.Tensor, precision: str, scale: str = "none") -> torch.Tensor:
    """Weights: identity STE onto the latent weight (no |w| <= 1 mask; the latent is clipped after the step).
    `scale` multiplies binary weights by alpha = mean|W| (see binarize_scaled); "none" keeps them +-1."""
    if scale != "none":
        if precision != "binary":
            raise ValueError(f"a weight scale ('{scale}') applies to binary weights only, not '{precision}'")
        return binarize_scaled(w, scale)
    if precision == "binary":
        return binarize(w)
    if precision == "ternary":
        return ternarize_ste(w, TERNARY_WEIGHT_K)
    if precision == "fp":
        return w
    raise ValueError(f"Unknown weight precision '{precision}'. Valid: ('fp', 'binary', 'ternary')")
