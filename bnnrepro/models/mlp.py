"""The multilayer perceptron of the binary-weight-space (BWS) and BinSFO codes (docs/bws.md#mlp, docs/binsfo.md#mlp-on-mnist).

    flatten -> (depth - 1) x [Linear(-> hidden) -> BN1d(hidden) -> act] -> Linear(-> classes) -> [BN1d(classes)]

`depth` counts Linear layers: 4 is three hidden layers plus the output layer; 1 is a single
input -> classes layer (BinSFO allows it, the BWS code breaks on it). Every BatchNorm normalizes with the
statistics of the current batch, in evaluation too (track_running_stats=False): neither code keeps running
statistics nor calls eval(), so test accuracy depends on the test batch size (docs/bws.md#batch-statistics-batchnorm).
The output BatchNorm never has an affine part; the hidden ones have one only with `bn_affine`.

Flags (BWS command-line name in brackets): weights binary|fp [b_weight], activations binary|relu [b_act],
bias [bias], batchnorm [batch_norm], bn_affine [affine], bn_out [batch_norm_out]. Binary weights
are QuantLinear(precision="binary") (identity STE, docs/bws.md#straight-through-estimators); binary activations QuantAct with the
model's estimator, "bnn" being the clipped STE of the BWS SignModule (docs/bws.md#clipped-ste). Init: weights
N(0, 0.01^2), biases 0; a flip optimizer then keeps only their signs.

BWS large FCN on MNIST (Exp. 5.1): depth 4, hidden 128, no bias, bn_affine false, bn_out true:
134,400 binary weights and no real-valued parameter. BinSFO's MLP is the same network with those
flags (its defaults: hidden 1024, MNIST resized to 64 x 64). What remains different does not change
any output: its BinaryLinear maps sign(0) to 0 and masks the weight gradient with |w| <= 1 (both
void on +-1 weights), and it uses SyncBatchNorm (the same as BatchNorm on one device).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bnnrepro.models.common import ModelConfig, activation_layers, weight_precisions
from bnnrepro.nn.layers import QuantLinear

INIT_STD = 0.01


def batch_stat_norm(features: int, affine: bool) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(features, affine=affine, track_running_stats=False)


class MLP(nn.Module):
    # the ModelConfig keys it reads; build_model checks that every other one keeps its default
    OPTIONS = ("weights", "activations", "estimator", "swish_beta", "bias", "batchnorm", "first_layer_fp",
               "last_layer_fp", "ternary_weights", "ternary_acts", "depth", "hidden", "bn_affine", "bn_out")

    def __init__(self, cfg: ModelConfig, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        if cfg.depth < 1 or cfg.hidden < 1:
            raise ValueError(f"MLP needs depth >= 1 and hidden >= 1, got depth {cfg.depth}, hidden {cfg.hidden}")
        widths = [in_channels * image_size * image_size] + [cfg.hidden] * (cfg.depth - 1) + [num_classes]
        precisions = weight_precisions(cfg, cfg.depth)
        linears = [QuantLinear(n_in, n_out, bias=cfg.bias, precision=prec)
                   for n_in, n_out, prec in zip(widths[:-1], widths[1:], precisions)]
        acts = activation_layers(cfg, cfg.depth - 1)
        self.hidden = nn.ModuleList(
            nn.Sequential(linear, batch_stat_norm(cfg.hidden, cfg.bn_affine) if cfg.batchnorm else nn.Identity(), act)
            for linear, act in zip(linears[:-1], acts))
        self.fc_out = linears[-1]
        self.bn_out = batch_stat_norm(num_classes, affine=False) if cfg.bn_out else nn.Identity()
        for linear in linears:
            nn.init.normal_(linear.weight, 0.0, INIT_STD)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = layer(x)
        return self.bn_out(self.fc_out(x))

