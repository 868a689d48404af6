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

Each estimator is one class (Estimator: value, derivative, backward) and each sign rule one function, both in a
registry by the name configs use (ESTIMATORS, SIGN_RULES; get_estimator, get_sign_rule). A new estimator is a
new class added to ESTIMATORS; nothing else changes.
"""

from __future__ import annotations

import functools

import torch

# Delta = k * mean|x| (Li et al. 2016, ternary weight networks); the RWTH code uses k = 0.7 for
# weights ("twn") and k = 0.4 for activations ("tbn").
TERNARY_WEIGHT_K = 0.7
TERNARY_ACT_K = 0.4


# ------------------------------------------------------------------------------------ sign rules

def zero_positive_sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0 (both zeros), -1 elsewhere, computed as copysign(1, x + 0.0): adding +0.0 turns -0.0
    into +0.0. It is several times faster on the CPU than torch.where(x >= 0, 1, -1). Both kernels write into
    one new buffer, empty_like(x): one allocation instead of two halves the time on the CPU, where a large new
    tensor costs page faults, and keeps x's exact strides (channels_last stays channels_last)."""
    out = torch.add(x, 0.0, out=torch.empty_like(x))
    return torch.copysign(_one(x.dtype, x.device), out, out=out)


def round_half_even_sign(x: torch.Tensor) -> torch.Tensor:
    """The RWTH code's binarizer, operation for operation: [-1, 1] -> [0, 1], round half to even, back
    to +-1. Its band of -1 on [0, 2^-24] comes from fp32 rounding ((x + 1) / 2 is exactly 0.5 there), so
    the rule is these operations, not a threshold that would approximate them."""
    return ((x + 1) / 2).clamp(0, 1).round() * 2 - 1


SIGN_RULES = {"zero_positive": zero_positive_sign, "round_half_even": round_half_even_sign}


def get_sign_rule(name: str):
    """The sign function of a rule name (SIGN_RULES); one clear error for any other name."""
    if name not in SIGN_RULES:
        raise ValueError(f"Unknown sign rule '{name}'. Valid: {tuple(SIGN_RULES)}")
    return SIGN_RULES[name]


def sign(x: torch.Tensor, rule: str = "zero_positive") -> torch.Tensor:
    """+-1, never 0; the rule (SIGN_RULES) decides what x = 0 gives."""
    return get_sign_rule(rule)(x)


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


# ---------------------------------------------------------------------- straight-through estimators

class Estimator:
    """A straight-through estimator: the smooth surrogate whose derivative backward uses in place of the
    quantizer's (zero almost everywhere). `value` is also what ternary activations and the RWTH sign rule
    quantize. `backward` is grad * derivative; subclasses fuse it where that is faster."""

    name: str
    reads_input = True  # whether backward needs x: autograd keeps x alive only then

    def value(self, x: torch.Tensor, beta: float) -> torch.Tensor:
        raise NotImplementedError

    def derivative(self, x: torch.Tensor, beta: float) -> torch.Tensor:
        raise NotImplementedError

    def backward(self, grad: torch.Tensor, x: torch.Tensor, beta: float) -> torch.Tensor:
        return grad * self.derivative(x, beta)


class Vanilla(Estimator):
    """The identity: the gradient passes unchanged."""

    name = "vanilla"
    reads_input = False

    def value(self, x, beta):
        return x

    def derivative(self, x, beta):
        return torch.ones_like(x)

    def backward(self, grad, x, beta):
        return grad


class HardTanh(Estimator):
    """Hubara et al. 2016: the gradient passes where -1 < x < 1 (strict), else 0."""

    name = "bnn"

    def value(self, x, beta):
        return x.clamp(-1, 1)

    def derivative(self, x, beta):
        return torch.ops.aten.hardtanh_backward(torch.ones_like(x), x, -1.0, 1.0)

    def backward(self, grad, x, beta):  # the hot path of every binary network: one fused kernel
        return torch.ops.aten.hardtanh_backward(grad, x, -1.0, 1.0)


class BiReal(Estimator):
    """Liu et al. 2018 (Bi-Real Net): the piecewise quadratic 2x - sign(x) x^2 on [-1, 1]."""

    name = "bireal"

    def value(self, x, beta):
        c = x.clamp(-1, 1)
        return 2 * c - c.sign() * c * c

    def derivative(self, x, beta):
        return (2 - 2 * x.abs()) * (x.abs() < 1).to(x.dtype)


class SignSwish(Estimator):
    """Darabi et al. 2018 (BNN+): 2 s(bx)(1 + bx(1 - s(bx))) - 1 with s the sigmoid and b = beta."""

    name = "swish"

    def value(self, x, beta):
        s = torch.sigmoid(beta * x)
        return 2 * s * (1 + beta * x * (1 - s)) - 1

    def derivative(self, x, beta):
        # sigmoid(-bx) instead of 1 - s: no cancellation for large |x|
        s, s_neg = torch.sigmoid(beta * x), torch.sigmoid(-beta * x)
        return 2 * beta * s * s_neg * (2 + beta * x * (s_neg - s))


ESTIMATORS = {cls.name: cls() for cls in (Vanilla, HardTanh, BiReal, SignSwish)}


def get_estimator(name: str) -> Estimator:
    """The estimator of a name (ESTIMATORS); one clear error for any other name."""
    if name not in ESTIMATORS:
        raise ValueError(f"Unknown gradient estimator '{name}'. Valid: {tuple(ESTIMATORS)}")
    return ESTIMATORS[name]


def surrogate(x: torch.Tensor, name: str, beta: float = 10.0) -> torch.Tensor:
    """The value of the named estimator's surrogate."""
    return get_estimator(name).value(x, beta)


def surrogate_grad(x: torch.Tensor, name: str, beta: float = 10.0) -> torch.Tensor:
    """The derivative of the named estimator's surrogate."""
    return get_estimator(name).derivative(x, beta)


class _StraightThrough(torch.autograd.Function):
    """Forward: quantize(x). Backward: the estimator's backward (grad * surrogate'(x))."""

    @staticmethod
    def forward(ctx, x, quantize, ste: Estimator, beta):
        ctx.save_for_backward(x if ste.reads_input else None)  # the identity STE keeps nothing alive
        ctx.ste, ctx.beta = ste, beta
        return quantize(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return ctx.ste.backward(grad, x, ctx.beta), None, None, None


def binarize(x: torch.Tensor, estimator_name: str = "vanilla", beta: float = 10.0,
             rule: str = "zero_positive") -> torch.Tensor:
    """sign(x) forward, surrogate gradient backward.

    round_half_even binarizes the surrogate's value, as the RWTH code does (`x = ste_forward(x);
    x.data = binarize(x.data)`), so the band where it gives -1 is the surrogate's: [0, 2^-24] for vanilla
    and bnn (hardtanh is the identity there), [0, ~2^-25] for bireal (2x - x^2). Its SignSwish puts back
    the pre-swish value where the swish rounds to exactly 0. The gradient is the surrogate's either way."""
    ste = get_estimator(estimator_name)
    if rule == "round_half_even":
        return _StraightThrough.apply(x, functools.partial(_round_surrogate, ste=ste, beta=beta), ste, beta)
    return _StraightThrough.apply(x, get_sign_rule(rule), ste, beta)


def _round_surrogate(x: torch.Tensor, ste: Estimator, beta: float) -> torch.Tensor:
    value = ste.value(x, beta)
    if isinstance(ste, SignSwish):
        value = torch.where(value == 0, x, value)
    return round_half_even_sign(value)


def ternarize_ste(x: torch.Tensor, k: float, estimator_name: str = "vanilla", beta: float = 10.0) -> torch.Tensor:
    """Ternarized surrogate(x) forward (the RWTH code ternarizes the STE function's output),
    surrogate gradient backward."""
    ste = get_estimator(estimator_name)
    return _StraightThrough.apply(x, lambda t: ternarize(ste.value(t, beta), k), ste, beta)


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
    rule_sign = get_sign_rule(rule)
    return _StraightThrough.apply(w, lambda t: weight_scale(t, scale) * rule_sign(t), ESTIMATORS["vanilla"], 10.0)


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
