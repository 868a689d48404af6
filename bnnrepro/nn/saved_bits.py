"""Compact saved activations (train.memory_efficient, docs/memory.md#compact-saved-activations).

Backward through a sign activation and the binary layer it feeds needs two things of the activation:
its sign, which the layer saves as its input (float +-1, 32 bits per value), and, for the hardtanh STE
("bnn"), the window -1 < x < 1 in which the gradient passes, for which the activation saves its float
input x. Both are one bit per value. Within `signs_saved_as_bits()`:

  - `binarize_saving_bits` is the sign activation of quantizers.binarize for the estimators that need no
    more than the window ("vanilla": nothing; "bnn": the window, packed 8 per byte); its output is
    marked as holding only +-1;
  - binary layers mark their +-1 weights (`mark_signs`), which they save for backward as well;
  - any autograd node that saves a marked tensor (or a view of one; a binary linear or conv saving its
    input and weight) stores its signs packed 8 per byte instead, and gets float +-1 back, in the same
    memory layout, when backward needs it.

Two torch layers that often sit next to them save less as well (`torch_layers_saving_less`): Hardtanh
keeps only its window (1 bit per value), and 2-d max pooling only the offset of each maximum inside its
window (int8), not its float input and int64 indices.

A binary conv's backward unpacks its saved input back to float +-1, and torch's conv backward would hold
it beside the output gradient and the input gradient it makes: the peak of a BinaryNet step.
`conv2d_freeing_input` computes the weight gradient first and drops the unpacked input before the input
gradient, which needs only its shape.

The float values backward computes from them are the same, bit for bit: the window mask gives the
gradient or +0.0 exactly as hardtanh_backward does, the unpacked input holds the same +-1 in the same
strides, pooling's backward gets back torch's own index, and the conv's two gradients come from torch's
own convolution_backward, one at a time. Custom functions for the sign, Hardtanh, max pooling and that
conv backward only; the linear layers keep torch's own.
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

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
            _save_window(ctx, x, -1.0, 1.0)
        if rule == "zero_positive":
            return sign(x)
        return round_half_even_sign(surrogate(x, estimator))  # quantizers.binarize's round_half_even

    @staticmethod
    def backward(ctx, grad):
        if ctx.estimator == "vanilla":
            return grad, None, None
        return _masked_by_window(ctx, grad), None, None


class _HardtanhSavingWindow(torch.autograd.Function):
    """F.hardtanh, whose backward needs only the window min < x < max: saved as bits, not x."""

    @staticmethod
    def forward(ctx, x, min_val, max_val):
        _save_window(ctx, x, min_val, max_val)
        return F.hardtanh(x, min_val, max_val)

    @staticmethod
    def backward(ctx, grad):
        return _masked_by_window(ctx, grad), None, None


def _save_window(ctx, x: torch.Tensor, lo: float, hi: float) -> None:
    # hardtanh_backward passes the gradient unless x <= lo or x >= hi (so also where x is nan)
    bits, *ctx.layout = _pack(torch.logical_or(x <= lo, x >= hi).logical_not_(), pack_bits_)
    ctx.save_for_backward(bits)


def _masked_by_window(ctx, grad: torch.Tensor) -> torch.Tensor:
    """grad where the window holds, else +0.0: hardtanh_backward's values, in grad's own layout (an
    out-of-place masked_fill would be contiguous), so the layers before reduce over it in the same order."""
    (bits,) = ctx.saved_tensors
    window = _unpack((bits, *ctx.layout), unpack_bits)
    return torch.where(window, grad, grad.new_zeros(()), out=torch.empty_like(grad))


class _MaxPoolSavingOffsets(torch.autograd.Function):
    """2-d max pooling whose backward keeps, of each maximum, only its offset inside the pooling window
    (int8) instead of torch's int64 index into the plane and the whole float input (of which backward
    reads only the shape)."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, ceil_mode):
        out, index = torch.ops.aten.max_pool2d_with_indices(x, kernel, stride, padding, (1, 1), ceil_mode)
        width = x.shape[-1]
        # index - origin = r W + c for the maximum's row r and column c in its window; a table lookup turns
        # that into the offset r kw + c (integer division would take several times longer)
        within = index.sub_(_window_origins(out.shape, width, stride, padding, x.device))
        ctx.save_for_backward(_looked_up(within, _offset_of_position(kernel, width, x.device)))
        ctx.args = (x.shape, x.stride(), x.dtype, kernel, stride, padding, ceil_mode)
        return out

    @staticmethod
    def backward(ctx, grad):
        (offset,) = ctx.saved_tensors
        shape, strides, dtype, kernel, stride, padding, ceil_mode = ctx.args
        # offset r kw + c -> r W + c, then + the window's origin: torch's index again
        index = _looked_up(offset.int(), _position_of_offset(kernel, shape[-1], offset.device))
        index.add_(_window_origins(offset.shape, shape[-1], stride, padding, offset.device))
        # the kernel reads of its input only the shape and memory layout, and zero-fills its output before
        # scattering: one uninitialised tensor of the input's strides serves as both
        grad_input = torch.empty_strided(shape, strides, dtype=dtype, device=grad.device)
        torch.ops.aten.max_pool2d_with_indices_backward.grad_input(grad, grad_input, kernel, stride, padding, (1, 1),
                                                                   ceil_mode, index, grad_input=grad_input)
        return grad_input, None, None, None, None


def _offset_of_position(kernel, width: int, device) -> torch.Tensor:
    """int8 table: entry r W + c (a position in a window, 0 <= c < kw) holds r kw + c."""
    d = torch.arange((kernel[0] - 1) * width + kernel[1], device=device)
    return (d // width * kernel[1] + d % width).to(torch.int8)


def _position_of_offset(kernel, width: int, device) -> torch.Tensor:
    """int64 table: entry r kw + c holds r W + c (the inverse of _offset_of_position)."""
    o = torch.arange(kernel[0] * kernel[1], device=device)
    return o // kernel[1] * width + o % kernel[1]


def _looked_up(index: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """table[index], in index's memory layout (a gather over its elements in memory order)."""
    order = index.dim_order()
    dense = index.permute(order)
    values = table.index_select(0, dense.reshape(-1)).view(dense.shape)
    return values.permute(sorted(range(len(order)), key=order.__getitem__))


def _window_origins(out_shape, width: int, stride, padding, device) -> torch.Tensor:
    """Index in the input plane (row * width + column) of the top-left corner of each output's pooling
    window, out rows x out columns (padding makes it negative at the border; the offsets stay right)."""
    rows = torch.arange(out_shape[-2], device=device) * stride[0] - padding[0]
    cols = torch.arange(out_shape[-1], device=device) * stride[1] - padding[1]
    return rows[:, None] * width + cols[None, :]


def conv2d_freeing_input(x, weight, bias, stride, padding, dilation, groups: int) -> torch.Tensor:
    """F.conv2d (numeric padding) whose backward holds the (unpacked) input only while it computes the
    weight gradient: the input gradient comes after, from the weight and the output gradient alone."""
    return _Conv2dFreeingInput.apply(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups)


class _Conv2dFreeingInput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.args = (stride, padding, dilation, False, (0, 0), groups)  # convolution_backward's, not transposed
        ctx.input_shape, ctx.bias_sizes = x.shape, None if bias is None else bias.shape
        ctx.save_for_backward(x, weight)  # under signs_saved_as_bits: +-1 ones as bits
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        x, weight = ctx.saved_tensors
        grad_weight = grad_bias = grad_input = None
        if need_weight or need_bias:
            _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad, x, weight, ctx.bias_sizes, *ctx.args, (False, need_weight, need_bias))
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        del x  # the unpacked input: not needed for the input gradient
        if need_input:
            # of its input, the kernel reads only the shape (torch.nn.grad.conv2d_input passes an expanded
            # scalar), and its memory layout: the kernel runs channels_last when the input or the weight is.
            # The stand-in has none, so a channels_last input is told by a channels_last copy of the weight
            # (a 1x1 weight's strides fit both layouts), and the kernel is the one of the joint backward.
            shape_only = grad.new_empty(1).expand(ctx.input_shape)
            if channels_last:
                weight = torch.empty_like(weight, memory_format=torch.channels_last).copy_(weight)
            grad_input = torch.ops.aten.convolution_backward(
                grad, shape_only, weight, None, *ctx.args, (True, False, False))[0]
        return grad_input, grad_weight, grad_bias, None, None, None, None


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _hardtanh_forward(module: nn.Hardtanh, x: torch.Tensor) -> torch.Tensor:
    return _HardtanhSavingWindow.apply(x, module.min_val, module.max_val)


def _max_pool_forward(module: nn.MaxPool2d, x: torch.Tensor) -> torch.Tensor:
    kernel = _pair(module.kernel_size)
    if x.dim() != 4 or kernel[1] > x.shape[-1]:  # the offset arithmetic needs a window no wider than the plane
        return nn.MaxPool2d.forward(module, x)
    stride = _pair(module.stride if module.stride is not None else module.kernel_size)
    return _MaxPoolSavingOffsets.apply(x, kernel, stride, _pair(module.padding), module.ceil_mode)


def _compactable(m: nn.Module):
    """The forward that saves less for `m`, or None: Hardtanh (not in place) and 2-d max pooling with
    dilation 1, a window of at most 127 positions and no indices returned (their saved tensors only)."""
    if isinstance(m, nn.Hardtanh) and not m.inplace:
        return _hardtanh_forward
    if (isinstance(m, nn.MaxPool2d) and _pair(m.dilation) == (1, 1) and not m.return_indices
            and math.prod(_pair(m.kernel_size)) <= 127):
        return _max_pool_forward
    return None


@contextmanager
def torch_layers_saving_less(model: nn.Module):
    """Within: model's nn.Hardtanh and nn.MaxPool2d layers save 1-bit windows and int8 window offsets for
    backward instead of float inputs and int64 indices (the same values forward and backward)."""
    swapped = []
    for m in model.modules():
        forward = _compactable(m)
        if forward is not None and "forward" not in vars(m):
            m.forward = functools.partial(forward, m)  # an instance attribute: removed on exit
            swapped.append(m)
    try:
        yield
    finally:
        for m in swapped:
            del m.forward


def _pack(t: torch.Tensor, pack) -> tuple:
    """(bits, shape, order): t's values in its memory order, so that unpacking restores its strides."""
    order = t.dim_order() if t.dim() else ()
    dense = t.permute(order)
    return pack(dense), dense.shape, order


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
