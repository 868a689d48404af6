"""1-bit saved activations (train.memory_efficient, docs/memory.md#1-bit-saved-activations).

Backward through a sign activation and the binary layer it feeds needs two things of the activation:
its sign, which the layer saves as its input (float +-1, 32 bits per value), and, for the hardtanh STE
("bnn"), the window -1 < x < 1 in which the gradient passes, for which the activation saves its float
input x. Both are one bit per value. Within `signs_saved_as_bits()`:

  - `binarize_saving_bits` is the sign activation of quantizers.binarize for the estimators that need no
    more than the window ("vanilla": nothing; "bnn": the window, packed 8 per byte); its output is
    marked as holding only +-1;
  - binary layers mark their +-1 weights (`mark_signs`), which they save for backward as well;
  - any autograd node that saves a marked tensor (or a view of one; a binary linear or conv saving its
    input and weight) stores its signs packed 8 per byte instead, and gets float +-1 back, in the same memory layout,
    when backward needs it.

The float values backward computes from them are the same, bit for bit: the window mask gives the
gradient or +0.0 exactly as hardtanh_backward does, and the unpacked input holds the same +-1 in the same
strides. Custom functions for the sign only; the linear and conv layers keep torch's own kernels.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from bnnrepro.nn.packing import pack_bits_, pack_signs, unpack_bits, unpack_signs
from bnnrepro.nn.quantizers import round_half_even_sign, sign, surrogate

ESTIMATORS = ("vanilla", "bnn")  # the STEs whose backward needs at most the window -1 < x < 1
_MARK = "_holds_signs"            # attribute of a tensor that holds only +-1


def binarize_saving_bits(x: torch.Tensor, estimator: str, rule: str = "zero_positive") -> torch.Tensor:
    """quantizers.binarize(x, estimator, rule=rule) for estimator in ESTIMATORS, saving at most 1 bit per
    value for backward; the output is marked for `signs_saved_as_bits`."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"1-bit saved activations need an STE in {ESTIMATORS}, got '{estimator}'")
    return mark_signs(_SignSavingWindow.apply(x, estimator, rule))


def mark_signs(t: torch.Tensor) -> torch.Tensor:
    """Mark t (holding only +-1: a binary activation or weight) to be saved as bits; returns t."""
    setattr(t, _MARK, True)
    return t


class _SignSavingWindow(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, estimator, rule):
        ctx.estimator = estimator
        if estimator == "bnn":
            # hardtanh_backward passes the gradient unless x <= -1 or x >= 1 (so also where x is nan)
            bits, *ctx.layout = _pack(torch.logical_or(x <= -1, x >= 1).logical_not_(), pack_bits_)
            ctx.save_for_backward(bits)
        if rule == "zero_positive":
            return sign(x)
        return round_half_even_sign(surrogate(x, estimator))  # quantizers.binarize's round_half_even

    @staticmethod
    def backward(ctx, grad):
        if ctx.estimator == "vanilla":
            return grad, None, None
        (bits,) = ctx.saved_tensors
        window = _unpack((bits, *ctx.layout), unpack_bits)
        # a copy in grad's own layout (an out-of-place masked_fill would be contiguous): the layers before
        # reduce over it in the same order as they do after hardtanh_backward
        return grad.clone().masked_fill_(window.logical_not_(), 0.0), None, None


def _pack(t: torch.Tensor, pack) -> tuple:
    """(bits, shape, order): t's values in its memory order, so that unpacking restores its strides."""
    order = t.dim_order() if t.dim() else ()
    dense = t.permute(order)
    return pack(dense if pack is pack_bits_ else dense.detach()), dense.shape, order


def _unpack(packed: tuple, unpack, *args) -> torch.Tensor:
    bits, shape, order = packed
    dense = unpack(bits, shape, *args)
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return dense.permute(inverse)


def _holds_signs(t: torch.Tensor) -> bool:
    return getattr(t, _MARK, False) or (t._base is not None and getattr(t._base, _MARK, False))


def _pack_saved(t: torch.Tensor):
    if not _holds_signs(t) or not _is_dense(t):
        return t
    return _pack(t, pack_signs), t.dtype


def _unpack_saved(saved):
    if isinstance(saved, torch.Tensor):
        return saved
    packed, dtype = saved
    return _unpack(packed, unpack_signs, dtype)


def _is_dense(t: torch.Tensor) -> bool:
    """Strides of a permutation of a contiguous tensor (no gaps, no overlaps): what _pack can restore."""
    return t.dim() == 0 or t.permute(t.dim_order()).is_contiguous()


@contextmanager
def signs_saved_as_bits():
    """Within: tensors from binarize_saving_bits (and their views) that autograd saves are kept as bits."""
    with torch.autograd.graph.saved_tensors_hooks(_pack_saved, _unpack_saved):
        yield
