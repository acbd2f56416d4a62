"""FastNet: a small BatchNorm CNN for the fast recipe (`configs/fast.yaml`), after airbench's CIFAR-10 networks.

stem: conv 4×4/2 (3→stem_width 64), BN, GELU                    (side/2)
per stage (widths, default 64/128/256):
    conv 3×3 (→width), max-pool 2, BN, GELU                      (side/2 per stage)
    conv 3×3, BN, GELU, conv 3×3, BN, GELU, plus the stage's pooled input (`residual`, the default:
    airbench96's block); without `residual` the second conv alone (airbench94's)
global average pool, linear → num_classes
`init_from_data(images)` turns the stem into airbench's whitening layer (principal components of its patches,
each with its negative); `freeze_stem` keeps it fixed. The fast recipe does both (`data_init` config key).

Why this shape: the stride-2 stem and a max-pool right after each stage's first convolution put most of the
computation at small sides, where a CPU (and a GPU) runs convolutions efficiently; BatchNorm lets the
learning rate go high, which is what a 10-epoch schedule needs. At 64 px it costs 3.4× SimpleNet's MACs;
channels-last and progressive resizing make its recipe cheaper per training image than SimpleNet's
(docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from miniplaces.layers import Normalize
from miniplaces.models.base import Classifier
from miniplaces.models.registry import ModelCard, register_model


def _conv_bn_act(cin: int, cout: int, *, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))  # before BN: normalising a quarter of the activations costs a quarter
    layers += [nn.BatchNorm2d(cout), nn.GELU()]
    return nn.Sequential(*layers)


class Stage(nn.Module):
    """conv + pool, conv; with `residual` a third conv whose output is added back (airbench96's block)."""

    def __init__(self, cin: int, cout: int, residual: bool = False) -> None:
        super().__init__()
        self.down = _conv_bn_act(cin, cout, pool=True)
        self.conv = _conv_bn_act(cout, cout)
        self.extra = _conv_bn_act(cout, cout) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        y = self.conv(x)
        if self.extra is not None:
            y = x + self.extra(y)
        return y


class FastNet(Classifier, nn.Module):
    classifier_name = "fc"

    def __init__(self, num_classes: int = 100, widths: tuple[int, ...] | list[int] = (64, 128, 256),
                 stem_width: int = 64, residual: bool = True, zero_init_residual: bool = True,
                 freeze_stem: bool = False) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1 or stem_width < 1:
            raise ValueError(f"widths and stem_width must be positive, got widths={widths}, stem_width={stem_width}")
        self.num_classes = num_classes
        self.num_features = widths[-1]
        self.normalize = Normalize()
        stages: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(3, stem_width, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem_width), nn.GELU())]
        cin = stem_width
        for width in widths:
            stages.append(Stage(cin, width, residual=residual))
            cin = width
        self.features = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights(zero_init_residual)
        # A fixed change of basis, as airbench keeps its whitening layer (its BN still learns).
        self.features[0][0].weight.requires_grad_(not freeze_stem)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                self.init_head(module)
            elif zero_init_residual and isinstance(module, Stage) and module.extra is not None:
                # The last BN scale of the residual branch (Goyal et al.; torchvision's zero_init_residual): every
                # stage starts as its first convolution alone; the branch's convolutions learn from the second step.
                nn.init.zeros_(module.extra[1].weight)

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Whitening stem (airbench): the stem's filters become the principal components of the stem-sized
        patches of `images` ((B, 3, H, W) in [0, 1]), the largest first, each scaled by 1/√(variance + eps)
        and paired with its negative (the GELU after the stem's BN keeps one sign of each)."""
        conv: nn.Conv2d = self.features[0][0]
        if images.ndim != 4 or images.shape[1] != 3 or min(images.shape[-2:]) < conv.kernel_size[0]:
            raise ValueError(f"need images (B, 3, H, W) of at least {conv.kernel_size[0]} px, "
                             f"got {tuple(images.shape)}")
        size = conv.weight[0].numel()  # 3·k·k
        total, outer, count = torch.zeros(size, dtype=torch.float64), torch.zeros(size, size, dtype=torch.float64), 0
        for chunk in images.split(64):  # the patches of all images at once would take gigabytes
            x = self.normalize(chunk.to(conv.weight.device, torch.float32))
            # (B·L, 3·k·k) patches at the stem's stride, without its zero padding (not image statistics); summed
            # in float64 on the CPU: sums over millions of patches want it, and MPS has no float64.
            patches = F.unfold(x, conv.kernel_size, stride=conv.stride).transpose(1, 2).reshape(-1, size).cpu().double()
            total += patches.sum(0)
            outer += patches.T @ patches
            count += len(patches)
        covariance = (outer - torch.outer(total, total) / count) / max(count - 1, 1)
        variance, components = torch.linalg.eigh(covariance)  # ascending
        keep = min(-(-conv.out_channels // 2), size)
        filters = (components[:, -keep:].flip(1) / (variance[-keep:].flip(0).clamp_min(0) + eps).sqrt()).T
        filters = torch.cat([filters, -filters])  # (2·keep, 3·k·k): a component and its negative
        weight = filters.repeat(-(-conv.out_channels // len(filters)), 1)[: conv.out_channels]
        conv.weight.copy_(weight.reshape(conv.weight.shape).to(conv.weight.dtype))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalize(x))  # (B, widths[-1], H/2^(1+stages), W/2^(1+stages))

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return self.avgpool(features).flatten(1)

    def init_head(self, head: nn.Linear) -> None:
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)


# Any side works (global pooling); a side divisible by 2^(1+stages) (16 for three stages) keeps every pool exact.
# The fast recipe's optimiser: Muon for the filters (at the config's `muon_lr`), SGD for BatchNorm and the head at
# a 4× higher lr than SimpleNet's 0.1 (BatchNorm allows it).
FASTNET_CARD = ModelCard(family="cnn", optimizer="muon", lr=0.4, weight_decay=1e-3, gradcam_layer="features",
                         data_init=True)


@register_model("fastnet", "BatchNorm CNN of the fast recipe, after airbench96 (stem, 3 conv-pool stages with "
                "residual pairs, 2.0 M parameters)", FASTNET_CARD)
def fastnet(*, num_classes: int = 100, **kwargs: Any) -> FastNet:
    return FastNet(num_classes=num_classes, **kwargs)
