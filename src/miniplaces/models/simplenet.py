"""SimpleNet: the study's small CNN, whose convolution is pluggable (native or unfold).

conv 7×7/2 (3→64), ReLU, max-pool 3/2
conv 1×1 64→64, conv 3×3 64→64, conv 1×1 64→256 (ReLU after each), max-pool 3/2
conv 1×1 256→128, conv 3×3 128→128, conv 1×1 128→512 (ReLU after each)
global average pool, linear 512→num_classes
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from miniplaces.layers import Normalize
from miniplaces.models.base import Classifier
from miniplaces.models.registry import ModelCard, register_model

ConvFactory = Callable[..., nn.Module]


def conv_factory(conv_op: str | ConvFactory) -> ConvFactory:
    """`native` → `nn.Conv2d`; `unfold` → our `UnfoldConv2d`; or any class with Conv2d's signature."""
    if callable(conv_op):
        return conv_op
    if conv_op == "native":
        return nn.Conv2d
    if conv_op == "unfold":
        from miniplaces.layers.unfold_conv import UnfoldConv2d

        return UnfoldConv2d
    raise ValueError(f"conv_op must be 'native' or 'unfold', got {conv_op!r}")


class SimpleNet(Classifier, nn.Module):
    classifier_name = "fc"

    def __init__(self, num_classes: int = 100, conv_op: str | ConvFactory = "native") -> None:
        super().__init__()
        conv = conv_factory(conv_op)
        self.num_classes = num_classes
        self.num_features = 512
        self.normalize = Normalize()
        self.features = nn.Sequential(
            conv(3, 64, kernel_size=7, stride=2, padding=3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            conv(64, 64, kernel_size=1),
            nn.ReLU(inplace=True),
            conv(64, 64, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            conv(64, 256, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            conv(256, 128, kernel_size=1),
            nn.ReLU(inplace=True),
            conv(128, 128, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            conv(128, 512, kernel_size=1),
            nn.ReLU(inplace=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
            elif hasattr(module, "weight") and getattr(module, "weight", None) is not None and module.weight.dim() == 4:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalize(x))  # (B, 512, H/16, W/16)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return self.avgpool(features).flatten(1)  # (B, 512)

    def init_head(self, head: nn.Linear) -> None:
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)


# Any image side works (global average pooling); Grad-CAM reads the last convolutional block.
SIMPLENET_CARD = ModelCard(family="cnn", gradcam_layer="features")


@register_model("simplenet", "the study's small CNN (7 convolutions, 0.37 M parameters) with nn.Conv2d", SIMPLENET_CARD)
def simplenet(*, num_classes: int = 100, **kwargs: Any) -> SimpleNet:
    return SimpleNet(num_classes=num_classes, conv_op="native", **kwargs)


@register_model("simplenet_unfold", "SimpleNet with our unfold convolution (UnfoldConv2d): same weights, same outputs",
                SIMPLENET_CARD)
def simplenet_unfold(*, num_classes: int = 100, **kwargs: Any) -> SimpleNet:
    return SimpleNet(num_classes=num_classes, conv_op="unfold", **kwargs)
