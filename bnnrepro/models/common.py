"""Pieces shared by the model files: which precision each layer gets, and the block orders."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn as nn

from bnnrepro.nn.layers import QuantAct


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one network. Float and binary variants of a model differ only in these values."""

    arch: str                   # registered model name: lenet5 | vggnet7 | mlp | binarynet | resnet_sgdat |
                                # reactnet_a | bcdnet
    weights: str = "binary"     # fp | binary: precision of every weight layer (see the *_fp and ternary_* keys)
    activations: str = "binary" # relu | binary
    estimator: str = "bnn"      # STE of quantized activations: vanilla | bnn | bireal | swish
    swish_beta: float = 10.0
    sign_rule: str = "zero_positive"  # binary weights and activations, lenet5 and vggnet7 only: zero_positive
                                # (sign(0) = +1) | round_half_even (the RWTH code's: -1 on [0, 2^-24])
    layer_order: str = "CPBA"   # CBAP: conv-BN-act-pool, CPBA: conv-pool-BN-act (RWTH's binary preset)
    bias: bool = False          # biases on quantized layers (full-precision layers always have one)
    batchnorm: bool = True
    width: float = 1.0          # channel multiplier (RWTH width_infl for LeNet5, width_scale for VGGNet7)
    first_layer_fp: bool = False
    last_layer_fp: bool = False
    ternary_weights: str = ""   # one digit per weight layer, 1 = ternary weights (RWTH tern_weights); "" = none
    ternary_acts: str = ""      # one digit per quantized activation, 1 = ternary (RWTH tern_acts); "" = none
    padding: str = "rwth"       # VGGNet7 only. rwth: valid conv1, replicate SAME conv2-6 (32 -> 3x3 before fc1);
                                # same_zeros: every conv 3x3 SAME with zeros (Courbariaux / Anderson & Berg; 32 -> 4x4)
    bn_scale: bool = True       # false: BatchNorm with a learned shift beta but no scale gamma (TF's scale=False)
    last_bn_shift: bool = False # the output BatchNorm learns a shift beta (Anderson & Berg); RWTH's has neither
    depth: int = 4              # MLP only: number of Linear layers (4 = three hidden + output)
    hidden: int = 1024          # MLP only: width of the hidden layers
    bn_affine: bool = False     # MLP only: hidden BatchNorms learn scale and shift (BWS --affine)
    bn_out: bool = True         # MLP only: BatchNorm (affine=False) on the logits (BWS --batch_norm_out)
    xnor_scale: str = "none"    # reactnet_a, bcdnet: binary conv weights times alpha = mean|W|: none (BinSFO's
                                # default) | tensor (BinSFO --xnor) | channel (AdamBNN / BCDNet as trained)
    pretrained: str = ""        # reactnet_a, bcdnet: official checkpoint loaded before training (a key of
                                # bnnrepro.models.pretrained.OFFICIAL_CHECKPOINTS: adambnn | bcdnet); "" = none

    def describe(self) -> str:
        """Short name of the method for tables: 'float' or the binarization scheme."""
        if self.weights == "fp":
            return "float"
        ternary = " (ternary: w " + (self.ternary_weights or "-") + ", a " + (self.ternary_acts or "-") + ")"
        has_ternary = "1" in self.ternary_weights + self.ternary_acts
        order = f", {self.layer_order}" if self.arch in ("lenet5", "vggnet7") else ""  # the RWTH models' option
        return f"binary, STE {self.estimator}{order}{ternary if has_ternary else ''}"


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
    """What a weight layer of the BinaryNet codes (SGDAT, BinaryNet.pytorch) does to its input (spec B.3,
    C.18): a layer with binary weights binarizes its input unless that input is the image; a
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
