"""Each registered model's card drives its image size, optimiser, Grad-CAM layer and checkpoint rebuild."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from miniplaces.config import ConfigError, TrainConfig, resolve
from miniplaces.engine.checkpoint import build_model, checkpoint_image_size, describe_model, load_checkpoint
from miniplaces.engine.optim import build_optimizer
from miniplaces.errors import MiniPlacesError
from miniplaces.explain import default_gradcam_layer
from miniplaces.models import ModelCard, create_model, list_models, model_card, register_model, registry
from miniplaces.models.base import Classifier
from miniplaces.workflows.train import train

TORCH_THREADS = 1


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_a_card_that_drives_the_optimiser(name: str) -> None:
    card = model_card(name)
    assert card.family in ("cnn", "vit") and card.input_size > 0
    config = resolve(TrainConfig(model=name, root="x"))
    assert (config.optimizer, config.lr, config.weight_decay) == (card.optimizer, card.lr, card.weight_decay)
    # The study's optimiser of each family; fastnet, the fast recipe's own model, takes its Muon.
    assert card.optimizer == ("adamw" if card.family == "vit" else "muon" if name == "fastnet" else "sgd")


@pytest.mark.parametrize("name", list_models())
def test_the_card_names_the_gradcam_layer(name: str) -> None:
    card = model_card(name)
    if card.family == "vit":
        assert card.gradcam_layer is None
        return
    model = create_model(name, num_classes=3)
    assert default_gradcam_layer(model) == card.gradcam_layer
    assert card.gradcam_layer in dict(model.named_modules())


@pytest.mark.parametrize("name", list_models())
def test_image_size_reaches_the_model_and_comes_back_from_the_checkpoint(name: str) -> None:
    model = create_model(name, num_classes=3, image_size=64)
    card = model_card(name)
    if card.size_argument is not None:
        assert model.model_kwargs[card.size_argument] == 64
    rebuilt = build_model({"model": describe_model(model), "state_dict": model.state_dict()})
    with torch.no_grad():
        assert rebuilt.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 3)
    # Without a config, the checkpoint's size is the one its model was built for.
    expected = 64 if card.size_argument is not None else card.input_size
    assert checkpoint_image_size({"model": describe_model(model)}) == expected
    assert checkpoint_image_size({"model": describe_model(model), "config": {"image_size": 96}}) == 96


def test_vit_at_64_px_has_a_64_px_position_embedding_and_real_windows() -> None:
    vit = create_model("vit", num_classes=3, image_size=64)
    assert vit.encoder.grid_size == (4, 4) and vit.encoder.pos_embed.shape == (1, 16, 192)
    assert [b.attn.window_size for b in vit.encoder.blocks] == [2, None, 2, None]  # 2×2 windows on a 4×4 grid
    msvit = create_model("msvit", num_classes=3, image_size=64)
    assert [b.grid_size for b in msvit.branches] == [(16, 16), (8, 8), (4, 4)]
    assert [b.pos_embed.shape[1] for b in msvit.branches] == [256, 64, 16]
    assert [b.blocks[0].attn.window_size for b in msvit.branches] == [8, 4, 2]
    # At 128 px, the study's windows.
    default = create_model("msvit", num_classes=3)
    assert [b.blocks[0].attn.window_size for b in default.branches] == [16, 8, 4]


def test_a_vit_trained_at_64_px_is_built_for_64_px(synth_root: Path, tmp_path: Path) -> None:
    config = TrainConfig(model="vit", model_kwargs={"embed_dim": 16, "num_heads": 2}, root=str(synth_root),
                         out_dir=str(tmp_path), name="vit64", epochs=1, batch_size=8, workers=0, image_size=64,
                         device="cpu", limit_train_batches=1, limit_val_batches=1, warmup_epochs=0)
    run = train(config, progress=False)
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    assert checkpoint["state_dict"]["encoder.pos_embed"].shape == (1, 16, 16)  # a 4×4 grid of 16-px patches
    model = build_model(checkpoint)
    assert [b.attn.window_size for b in model.encoder.blocks] == [2, None, 2, None]
    assert checkpoint_image_size(checkpoint) == 64


def test_an_image_size_conflicting_with_the_model_arguments_is_refused() -> None:
    with pytest.raises(MiniPlacesError, match="img_size=96 in its arguments but image size 64"):
        create_model("vit", image_size=64, img_size=96)


@pytest.mark.parametrize("name", ["vit", "msvit"])
def test_a_size_that_is_not_a_multiple_of_the_patch_is_refused_at_build(name: str) -> None:
    with pytest.raises(MiniPlacesError, match=f"model '{name}': image size 100 is not a multiple of the patch size"):
        create_model(name, image_size=100)


def test_a_window_covering_the_grid_is_refused() -> None:
    with pytest.raises(MiniPlacesError, match="window_size 4 covers the whole 4×4 token grid"):
        create_model("vit", image_size=64, window_size=4)


class _TinyTransformer(Classifier, nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes, self.num_features = num_classes, 8
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.proj = nn.Linear(3, 8)
        self.head = nn.Linear(8, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(2).transpose(1, 2)[:, :4]) + self.pos_embed  # (B, 4, 8)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=1)


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_a_transformer_of_any_name_gets_adamw_from_its_family(scratch_registry: None) -> None:
    register_model("tiny_encoder", "a test transformer", ModelCard(family="vit"))(
        lambda *, num_classes, **kw: _TinyTransformer(num_classes))
    config = resolve(TrainConfig(model="tiny_encoder", root="x"))
    assert (config.optimizer, config.lr, config.weight_decay) == ("adamw", 0.01, 0.05)
    # An optimiser named in the config takes that optimiser's own defaults.
    sgd = resolve(TrainConfig(model="tiny_encoder", root="x", optimizer="sgd"))
    assert (sgd.optimizer, sgd.lr, sgd.weight_decay) == ("sgd", 0.1, 1e-4)


def test_no_weight_decay_keeps_position_embeddings_out(scratch_registry: None) -> None:
    model = create_model("vit", num_classes=3, image_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2,
                         window_blocks=(0,))
    assert model.no_weight_decay() == {"encoder.pos_embed"}
    decayed, plain = build_optimizer(model, "adamw", lr=0.01, weight_decay=0.05, no_wd_norm_bias=True).param_groups
    assert any(p is model.encoder.pos_embed for p in plain["params"])
    assert not any(p is model.encoder.pos_embed for p in decayed["params"])


def test_shared_classifier_surface() -> None:
    model = _TinyTransformer(5)
    x = torch.rand(2, 3, 2, 2)
    torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)))
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 8)
    model.reset_classifier(0)
    assert isinstance(model.head, nn.Identity) and model(x).shape == (2, 8)


def test_unknown_model_in_the_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="key 'model': unknown model 'nope'"):
        resolve(TrainConfig(model="nope", root="x"))


def test_a_bad_family_is_refused() -> None:
    bad: dict[str, Any] = {"family": "rnn"}
    with pytest.raises(ValueError, match="unknown model family 'rnn'"):
        ModelCard(**bad)
