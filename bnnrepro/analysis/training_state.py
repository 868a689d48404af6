"""Persistent training state per weight: what an optimizer keeps between steps.

Counted two ways: from the formula of the method (bits per weight) and from the live tensors
after a real training step (bytes of the parameters plus every tensor in optimizer.state).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bnnrepro.config import OptimConfig
from bnnrepro.nn.layers import quantized_layers
from bnnrepro.optim import build_optimizer

# Latent-weight methods: the fp32 latent weight plus the optimizer's fp32 buffers per weight.
LATENT_METHODS = {
    "latent SGD": (OptimConfig(name="sgd", lr=0.01), 0),
    "latent SGD+momentum": (OptimConfig(name="sgd", lr=0.01, momentum=0.9), 1),
    "latent Adam": (OptimConfig(name="adam", lr=0.001), 2),
}


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def formula_bits_per_binary_weight(buffers: int) -> int:
    """A latent weight (32 bits) plus `buffers` fp32 optimizer buffers."""
    return 32 * (1 + buffers)


def measured_state_bytes(model: nn.Module, optim_cfg: OptimConfig, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Bytes held after one training step: binary-layer weights (+ their optimizer state), and the rest."""
    optimizer = build_optimizer(optim_cfg, model)
    x = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(0))
    model.train()
    model(x).square().mean().backward()
    optimizer.step()
    binary_ids = {id(layer.weight) for layer in quantized_layers(model)}
    state = {"binary": 0, "other": 0}
    for p in model.parameters():
        key = "binary" if id(p) in binary_ids else "other"
        state[key] += tensor_bytes([p]) + tensor_bytes(optimizer.state.get(p, {}).values())
    state["buffers"] = tensor_bytes(model.buffers())
    return state
