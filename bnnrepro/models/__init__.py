"""Model registry: `build_model(cfg, ...)` is the only entry point a config needs."""

from __future__ import annotations

import torch.nn as nn

from bnnrepro.models.bcdnet import BCDNet
from bnnrepro.models.binarynet import BinaryNet
from bnnrepro.models.common import ModelConfig, check_options
from bnnrepro.models.lenet import LeNet5
from bnnrepro.models.mlp import MLP
from bnnrepro.models.reactnet import ReActNetA
from bnnrepro.models.resnet import ResNetSGDAT
from bnnrepro.models.vgg import VGGNet7

MODELS: dict[str, type[nn.Module]] = {"lenet5": LeNet5, "vggnet7": VGGNet7, "mlp": MLP,
                                      "binarynet": BinaryNet, "resnet_sgdat": ResNetSGDAT,
                                      "reactnet_a": ReActNetA, "bcdnet": BCDNet}


def build_model(cfg: ModelConfig, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """The registered model of cfg.arch. Each model class lists the ModelConfig keys it reads (OPTIONS); any other
    key set away from its default is one clear error, so no setting is silently ignored."""
    if cfg.arch not in MODELS:
        raise ValueError(f"Unknown model '{cfg.arch}'. Valid models: {sorted(MODELS)}")
    model = MODELS[cfg.arch]
    check_options(cfg, model.OPTIONS)
    return model(cfg, in_channels=in_channels, num_classes=num_classes, image_size=image_size)


__all__ = ["MODELS", "ModelConfig", "build_model"]
