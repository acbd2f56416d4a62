"""Tiny models trained on the synthetic dataset, for the `miniplaces serve` tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from miniplaces.data import MiniPlaces, read_categories
from miniplaces.engine.checkpoint import describe_model, save_checkpoint
from miniplaces.engine.predict import eval_transform
from miniplaces.models import create_model

# A ViT small enough to train in a second on 32×32 images, with the windowed blocks switched off.
TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "window_blocks": ()}


def train_checkpoint(root: Path, path: Path, name: str = "simplenet", *, steps: int = 25, image_size: int = 32,
                     **kwargs: Any) -> Path:
    """Train `name` full-batch on the train split of `root` with Adam; save a checkpoint at `path`."""
    torch.manual_seed(0)
    transform = eval_transform(image_size)
    train = MiniPlaces(root, "train", transform=transform)
    samples = [train[i] for i in range(len(train))]
    x = torch.stack([image for image, _ in samples])  # (N, 3, S, S)
    y = torch.tensor([label for _, label in samples])
    categories = read_categories(root)
    model = create_model(name, num_classes=len(categories), **kwargs)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return save_checkpoint({"model": describe_model(model), "state_dict": model.state_dict(),
                            "categories": categories, "config": {"image_size": image_size}}, path)


def api_client(app: Any) -> Any:
    """A Werkzeug test client of a `ServeApp` that sends the server's token, as the page does."""
    from werkzeug.test import Client

    from miniplaces.serve.guard import TOKEN_HEADER

    class TokenClient(Client):
        def open(self, *args: Any, **kwargs: Any) -> Any:
            kwargs["headers"] = {TOKEN_HEADER: app.token, **dict(kwargs.get("headers") or {})}
            return super().open(*args, **kwargs)

    return TokenClient(app)
