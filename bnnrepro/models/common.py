"""Pieces shared by the model files: which precision each layer gets, and the block orders."""

from __future__ import annotations

from dataclasses import fields

import torch
import torch.nn as nn

from bnnrepro.config import ModelConfig  # noqa: F401  (re-exported: the model files import it from here)
from bnnrepro.nn.layers import QuantAct


def _digits(value: str, n: int, key: str) -> list[bool]:
    value = value or "0" * n
    if len(value) != n or set(value) - {"0", "1"}:
        raise ValueError(f"model.{key} must be {n} digits of 0/1 (one per layer), got '{value}'")
    return [d == "1" for d in value]


def weight_precisions(cfg: ModelConfig, n_layers: int) -> list[str]:
    if cfg.weights not in ("fp", "binary"):
        raise ValueError(f"model.weights must be 'fp' or 'binary', got '{cfg.weights}'")
    ternary = _digits(cfg.ternary_weights, n_layers, "ternary_weights")
    precisions = []
    for i in range(n_layers):
        fp = cfg.weights == "fp" or (i == 0 and cfg.first_layer_fp) or (i == n_layers - 1 and cfg.last_layer_fp)
        precisions.append("fp" if fp else "ternary" if ternary[i] else "binary")
    return precisions


def activation_layers(cfg: ModelConfig, n_acts: int) -> list[nn.Module]:
    if cfg.activations == "relu":
        _digits(cfg.ternary_acts, n_acts, "ternary_acts")
        return [nn.ReLU() for _ in range(n_acts)]
    if cfg.activations != "binary":
        raise ValueError(f"model.activations must be 'relu' or 'binary', got '{cfg.activations}'")
    ternary = _digits(cfg.ternary_acts, n_acts, "ternary_acts")
    return [QuantAct("ternary" if t else "binary", cfg.estimator, cfg.swish_beta, cfg.sign_rule) for t in ternary]


class _ShiftOnly:
    """BatchNorm with a learned shift beta and no scale gamma: normalize, then add beta.

    This is tf.contrib.layers.batch_norm's default (center=True, scale=False), which the BinaryNet
    codes of Courbariaux et al. and Anderson & Berg use: before sign() a positive scale changes
    nothing, so beta alone sets each unit's threshold. Built as an affine=False BatchNorm plus a
    `bias` parameter: the state dict has `bias` and the running statistics but no `weight`, and
    F.batch_norm applies the shift (weight=None, bias=beta)."""

    def __init__(self, num_features: int):
        super().__init__(num_features, affine=False)
        self.bias = nn.Parameter(torch.zeros(num_features))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, shift only (no scale)"


class ShiftOnlyBatchNorm2d(_ShiftOnly, nn.BatchNorm2d):
    pass


class ShiftOnlyBatchNorm1d(_ShiftOnly, nn.BatchNorm1d):
    pass


def norm2d(cfg: ModelConfig, channels: int) -> nn.Module:
    if not cfg.batchnorm:
        return nn.Identity()
    return nn.BatchNorm2d(channels) if cfg.bn_scale else ShiftOnlyBatchNorm2d(channels)


def norm1d(cfg: ModelConfig, features: int) -> nn.Module:
    if not cfg.batchnorm:
        return nn.Identity()
    return nn.BatchNorm1d(features) if cfg.bn_scale else ShiftOnlyBatchNorm1d(features)


def output_norm(cfg: ModelConfig, classes: int) -> nn.Module:
    """The BatchNorm on the logits: plain normalization (RWTH), or with a learned shift (`last_bn_shift`)."""
    if not cfg.batchnorm:
        return nn.Identity()
    return ShiftOnlyBatchNorm1d(classes) if cfg.last_bn_shift else nn.BatchNorm1d(classes, affine=False)


def conv_block(x: torch.Tensor, conv: nn.Module, bn: nn.Module, act: nn.Module, pool: nn.Module | None,
               order: str) -> torch.Tensor:
    """CBAP: conv -> BN -> act -> pool. CPBA: conv -> pool -> BN -> act (pooling real values, not signs)."""
    if order == "CBAP":
        x = act(bn(conv(x)))
        return pool(x) if pool is not None else x
    if order == "CPBA":
        x = conv(x)
        return act(bn(pool(x) if pool is not None else x))
    raise ValueError(f"model.layer_order must be 'CBAP' or 'CPBA', got '{order}'")


def xavier_init_(model: nn.Module) -> None:
    """RWTH initialises every conv and linear weight with xavier_normal_; biases keep PyTorch's default."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)


def check_options(cfg: ModelConfig, supported: tuple[str, ...]) -> None:
    """For models with only some of ModelConfig's options: every other key must keep its default (whose
    meaning the model implements), so that no setting is silently ignored."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name != "arch" and f.name not in supported and value != f.default:
            raise ValueError(f"model.{f.name} = {value!r} is not an option of model '{cfg.arch}' (leave it at "
                             f"{f.default!r}); its options: {', '.join(supported)}")


def input_binarizer(precision: str, sees_image: bool) -> nn.Module:
    """What a weight layer of the BinaryNet codes (SGDAT, BinaryNet.pytorch) does to its input
    (docs/sgdat.md#input-binarization): a layer with binary weights binarizes its input unless that input is the image; a
    full-precision layer takes real values. The public code infers this from the input size (3 channels,
    784 features); here each layer gets it explicitly.

    Those codes apply nn.Hardtanh after BatchNorm and binarize inside the next layer by overwriting
    `input.data`, which autograd does not see: the gradient passes sign unchanged and the Hardtanh masks
    it to 1[-1 < x < 1]. QuantAct("binary", "bnn") on the Hardtanh output h = hardtanh(x) is the same:
    forward sign(h) = sign(x) (hardtanh keeps the sign; sign(0) = +1 as in the SGDAT code), backward
    1[-1 < h < 1] = 1[-1 < x < 1], a mask the Hardtanh then applies once more without change. The
    identity STE after the Hardtanh would give the same gradient; "bnn" does not rely on the Hardtanh.
    The models keep the Hardtanh because its real output also feeds fp layers and residual connections."""
    if precision == "fp" or sees_image:
        return nn.Identity()
    return QuantAct("binary", "bnn")
