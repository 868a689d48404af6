"""Per-block recomputation for the memory-efficient training step (docs/memory.md#per-block-recomputation).

A model may name blocks (`recompute_blocks()`, e.g. ReActNet-A's and BCDNet's residual blocks) whose
forward keeps only its input for backward: backward runs the block's forward again to get the rest
(torch.utils.checkpoint, non-reentrant). The float activations inside a block (BatchNorm and RPReLU
inputs, shortcut sums) then live for one block at a time instead of for the whole network.

The recomputed forward gives the same values, so the gradients are the same bits, with one exception that
is handled here: a block's BatchNorm in training mode would update its running statistics a second time.
Each recomputation therefore puts the block's buffers back as they were before it.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def buffers_kept(module: nn.Module):
    """Within: anything may change `module`'s buffers; on leaving, they hold their values from before."""
    saved = [(b, b.clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The blocks that `model` lets recompute in backward (none for models that do not name any)."""
    return list(model.recompute_blocks()) if hasattr(model, "recompute_blocks") else []


@contextlib.contextmanager
def recomputed_blocks(model: nn.Module):
    """Within: each block of blocks_of(model) saves only its input for backward and runs again there."""
    blocks = blocks_of(model)
    for block in blocks:
        # an instance attribute shadows the class's forward, so nn.Module.__call__ (and its hooks) still run
        block.forward = _checkpointed_forward(block)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


def _checkpointed_forward(block: nn.Module):
    """block.forward under torch.utils.checkpoint; its recomputation leaves the block's buffers unchanged."""
    def contexts():  # (around the first forward, around the recomputation)
        return contextlib.nullcontext(), buffers_kept(block)

    return functools.partial(checkpoint, block.forward, use_reentrant=False, context_fn=contexts)
