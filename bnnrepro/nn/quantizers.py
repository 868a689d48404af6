"""Sign and ternary quantizers with straight-through estimators (STE).

Forward gives the quantized value exactly (+-1, or -1/0/+1); backward multiplies the incoming
gradient by the derivative of a smooth surrogate. The surrogates, for |x| the input magnitude:

    vanilla  identity                                   d/dx = 1
    bnn      hardtanh (Hubara et al. 2016)              d/dx = 1 on -1 < x < 1 (strict), else 0
    bireal   2x - sign(x) x^2 on [-1, 1] (Liu et al. 2018, Bi-Real Net)   d/dx = 2 - 2|x| inside, else 0
    swish    SignSwish 2 s(bx)(1 + bx(1 - s(bx))) - 1 (Darabi et al. 2018, BNN+)
             d/dx = 2b s(1 - s)(2 + bx(1 - 2s)), with s = sigmoid(bx)

Two sign rules (`model.sign_rule`), which differ only on [0, 2^-24] in fp32:

    zero_positive    +1 where x >= 0, -1 elsewhere: sign(0) = +1 (larq, the SGDAT code)
    round_half_even  round((clamp(x, -1, 1) + 1) / 2) * 2 - 1, the RWTH code's binarizer: torch.round
                     rounds half to even and 1 + x rounds to 1 for x <= 2^-24, so every x in
                     [0, 2^-24] (exact zeros included) gives -1

Exact zeros are common in binary networks (integer conv outputs, a fresh BatchNorm maps them onto 0),
so bit parity with the RWTH code needs its rule (see docs/rwth.md).
"""

from __future__ import annotations

import functools

import torch

ESTIMATORS = ("vanilla", "bnn", "bireal", "swish")
SIGN_RULES = ("zero_positive", "round_half_even")

# Delta = k * mean|x| (Li et al. 2016, ternary weight networks); the RWTH code uses k = 0.7 for
# weights ("twn") and k = 0.4 for activations ("tbn").
TERNARY_WEIGHT_K = 0.7
TERNARY_ACT_K = 0.4


def sign(x: torch.Tensor, rule: str = "zero_positive") -> torch.Tensor:
    """+-1, never 0; the rule (SIGN_RULES) decides what x = 0 gives.

    zero_positive is copysign(1, x + 0.0): adding +0.0 turns -0.0 into +0.0, so both zeros give +1.
    It is several times faster on the CPU than torch.where(x >= 0, 1, -1). Both kernels write into one
    new buffer, empty_like(x): one allocation instead of two halves the time on the CPU, where a large
    new tensor costs page faults, and keeps x's exact strides (channels_last stays channels_last)."""
    if rule == "round_half_even":
        return round_half_even_sign(x)
    if rule != "zero_positive":
        raise ValueError(f"Unknown sign rule '{rule}'. Valid: {SIGN_RULES}")
    out = torch.add(x, 0.0, out=torch.empty_like(x))
    return torch.copysign(_one(x.dtype, x.device), out, out=out)


def round_half_even_sign(x: torch.Tensor) -> torch.Tensor:
    """The RWTH code's binarizer, operation for operation: [-1, 1] -> [0, 1], round half to even, back
    to +-1. Its band of -1 on [0, 2^-24] comes from fp32 rounding ((x + 1) / 2 is exactly 0.5 there), so
    the rule is these operations, not a threshold that would approximate them."""
    return ((x + 1) / 2).clamp(0, 1).round() * 2 - 1


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


def binarize(x: torch.Tensor, estimator: str = "vanilla", beta: float = 10.0,
             rule: str = "zero_positive") -> torch.Tensor:
    """sign(x) forward, surrogate gradient backward.

    round_half_even binarizes the surrogate's value, as the RWTH code does (`x = ste_forward(x);
    x.data = binarize(x.data)`), so the band where it gives -1 is the surrogate's: [0, 2^-24] for vanilla
    and bnn (hardtanh is the identity there), [0, ~2^-25] for bireal (2x - x^2). Its SignSwish puts back
    the pre-swish value where the swish rounds to exactly 0. The gradient is the surrogate's either way."""
    if rule == "zero_positive":
        return _StraightThrough.apply(x, sign, estimator, beta)
    if rule != "round_half_even":
        raise ValueError(f"Unknown sign rule '{rule}'. Valid: {SIGN_RULES}")
    return _StraightThrough.apply(x, functools.partial(_round_surrogate, estimator=estimator, beta=beta),
                                  estimator, beta)


def _round_surrogate(x: torch.Tensor, estimator: str, beta: float) -> torch.Tensor:
    value = surrogate(x, estimator, beta)
    if estimator == "swish":
        value = torch.where(value == 0, x, value)
    return round_half_even_sign(value)


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


def binarize_scaled(w: torch.Tensor, scale: str, rule: str = "zero_positive") -> torch.Tensor:
    """alpha * sign(W) forward, identity backward. alpha is computed inside the straight-through
    function, so no gradient flows through it (both AdamBNN and BinSFO detach it) and W receives the
    gradient of the scaled weight unchanged, not alpha times it, as in both codes."""
    return _StraightThrough.apply(w, lambda t: weight_scale(t, scale) * sign(t, rule), "vanilla", 10.0)


def quantize_weight(w: torch.Tensor, precision: str, scale: str = "none", rule: str = "zero_positive") -> torch.Tensor:
    """Weights: identity STE onto the latent weight (no |w| <= 1 mask; the latent is clipped after the step).
    `scale` multiplies binary weights by alpha = mean|W| (see binarize_scaled); "none" keeps them +-1.
    `rule`: the sign rule of binary weights (SIGN_RULES)."""
    if scale != "none":
        if precision != "binary":
            raise ValueError(f"a weight scale ('{scale}') applies to binary weights only, not '{precision}'")
        return binarize_scaled(w, scale, rule)
    if precision == "binary":
        return binarize(w, rule=rule)
    if precision == "ternary":
        return ternarize_ste(w, TERNARY_WEIGHT_K)
    if precision == "fp":
        return w
    raise ValueError(f"Unknown weight precision '{precision}'. Valid: ('fp', 'binary', 'ternary')")
