"""The surface every model shares, written once: `forward`, `forward_head`, `reset_classifier`, `no_weight_decay`.

A model mixes `Classifier` in first (before `nn.Module` or a torchvision class) and provides
`num_classes`, `num_features`, `forward_features(x)` and `pool(features) → (B, num_features)`;
its linear head lives in the attribute named by `classifier_name`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class Classifier(ABC):
    """timm's model surface: features → pooled vector → linear head."""

    classifier_name: str = "head"
    num_classes: int
    num_features: int

    @abstractmethod
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] → the trunk's features (the model normalises inside)."""

    @abstractmethod
    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Features → `(B, num_features)`, the classifier's input (with head dropout, where a model has one)."""

    def init_head(self, head: nn.Linear) -> None:  # noqa: B027  (a hook: nothing to do by default)
        """Initialise a new head; PyTorch's default unless a model says otherwise."""

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)  # (B, num_features)
        return x if pre_logits else getattr(self, self.classifier_name)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head with `num_classes` outputs (0: none, `forward` returns pooled features)."""
        self.num_classes = num_classes
        head: nn.Module = nn.Identity()
        if num_classes > 0:
            head = nn.Linear(self.num_features, num_classes)
            self.init_head(head)
        setattr(self, self.classifier_name, head)

    def no_weight_decay(self) -> set[str]:
        """Parameters kept out of weight decay besides biases and norms: position embeddings, as in timm."""
        return {name for name, _ in self.named_parameters() if name.endswith("pos_embed")}  # type: ignore[attr-defined]
