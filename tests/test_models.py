"""Every registered model: shapes, gradients, determinism, state dicts; plus vit/msvit specifics and `models`."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from miniplaces.cli import main
from miniplaces.engine.checkpoint import build_model, describe_model
from miniplaces.errors import MiniPlacesError
from miniplaces.layers import DropPath
from miniplaces.models import create_model, list_models
from miniplaces.models.summary import count_macs

IMAGE = 32
# Small versions where a model allows it, to keep the suite fast; other models use their defaults.
SMALL: dict[str, dict[str, Any]] = {
    "vit": dict(img_size=IMAGE, patch_size=8, embed_dim=32, depth=2, num_heads=2, window_size=2,
                window_blocks=(0,)),
    "msvit": dict(img_size=IMAGE, embed_dims=(16, 16, 16), depths=(1, 2, 1), num_heads=(2, 2, 2),
                  window_sizes=(4, 2, 1), window_blocks=((0,), (0,), (0,))),
    # A zero-initialised residual BN scale leaves its branch's convolutions without gradient on the first step,
    # by design (tested in test_fastnet_…); the shared tests see every parameter learn.
    "fastnet": dict(widths=(8, 16, 32), stem_width=8, zero_init_residual=False),
}
MODELS = list_models()


def small(name: str, num_classes: int = 10) -> nn.Module:
    return create_model(name, num_classes=num_classes, **SMALL.get(name, {}))


def images(batch: int) -> torch.Tensor:
    return torch.rand(batch, 3, IMAGE, IMAGE)


def test_the_study_models_are_registered() -> None:
    assert {"simplenet", "simplenet_unfold", "vit", "msvit", "resnet18"} <= set(MODELS)


def test_simplenet_unfold_equals_simplenet_with_the_same_weights() -> None:
    native = create_model("simplenet", num_classes=10).eval()
    unfold = create_model("simplenet_unfold", num_classes=10)
    assert type(unfold.features[0]).__name__ == "UnfoldConv2d"
    unfold.load_state_dict(native.state_dict())
    unfold.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(unfold(x), native(x), rtol=1e-4, atol=1e-5)
    # And back: the unfold model's weights load into the native one.
    torch.manual_seed(5)
    other = create_model("simplenet_unfold", num_classes=10).eval()
    native.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(native(x), other(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_forward_shape_and_finite(name: str) -> None:
    model = small(name).eval()
    with torch.no_grad():
        out = model(images(3))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    model = small(name).train()
    for module in model.modules():
        if isinstance(module, DropPath):
            module.drop_prob = 0.0  # a dropped branch would rightly get a zero gradient
    F.cross_entropy(model(images(2)), torch.tensor([1, 7])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", MODELS)
def test_eval_is_deterministic(name: str) -> None:
    model = small(name).eval()
    x = images(2)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip(name: str) -> None:
    model = small(name).eval()
    # Through bytes, as a checkpoint would travel: model description and weights, loaded weights_only.
    buffer = io.BytesIO()
    torch.save({"model": describe_model(model), "state_dict": model.state_dict()}, buffer)
    buffer.seek(0)
    torch.manual_seed(123)
    rebuilt = build_model(torch.load(buffer, weights_only=True)).eval()
    x = images(2)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    # A differently seeded model really differs, so the equality above is the weights' doing.
    with torch.no_grad():
        assert not torch.allclose(small(name).eval()(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_batch_of_one_matches_the_batch(name: str) -> None:
    model = small(name).eval()
    x = images(3)
    with torch.no_grad():
        one = model(x[1:2])
        torch.testing.assert_close(one, model(x)[1:2], rtol=1e-4, atol=1e-5)
    assert one.shape == (1, 10)


@pytest.mark.parametrize("name", MODELS)
def test_surface_and_reset_classifier(name: str) -> None:
    model = small(name).eval()
    x = images(2)
    with torch.no_grad():
        features = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(features), model(x))
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
        model.reset_classifier(7)
        assert model(x).shape == (2, 7)
    assert model.num_classes == 7


def test_vit_defaults() -> None:
    model = create_model("vit")
    blocks = model.encoder.blocks
    # "window 4 on blocks 1 and 3", counted from 1.
    assert [b.attn.window_size for b in blocks] == [4, None, 4, None]
    assert [b.drop_path1.drop_prob for b in blocks] == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])
    # patch 3·256·192+192, pos 64·192, 4 × (2 LN 768 + qkv 192·576+576 + proj 192·192+192 + MLP 192·768+768
    # + 768·192+192), final LN 384, head 192·100+100
    assert sum(p.numel() for p in model.parameters()) == 1_959_076
    assert 0.015 < model.encoder.pos_embed.std().item() < 0.025
    # MACs at 128: patch 64·768·192; 4 blocks × 64·(192·576 + 192·192 + 2·192·768); global attention
    # 2 × 2·64·64·192, window attention (four 16-token windows) 2 × 2·64·16·192; head 192·100.
    assert count_macs(model, 128) == 9_437_184 + 113_246_208 + 3_145_728 + 786_432 + 19_200
    assert model.training  # count_macs restores the mode


def test_vit_options() -> None:
    assert create_model("vit", pos_embed=False).encoder.pos_embed is None
    # Another image size resamples the position embedding.
    model = create_model("vit", **SMALL["vit"]).eval()
    assert model(torch.rand(1, 3, 48, 48)).shape == (1, 100)
    with pytest.raises(MiniPlacesError, match="window_blocks"):
        create_model("vit", depth=2, window_blocks=(3,))


def test_msvit_branches_scale_windows_to_their_grids() -> None:
    model = create_model("msvit")
    grids = [branch.grid_size for branch in model.branches]
    windows = [branch.blocks[0].attn.window_size for branch in model.branches]
    assert grids == [(32, 32), (16, 16), (8, 8)]
    assert [g[0] // w for g, w in zip(grids, windows, strict=True)] == [2, 2, 2]
    assert model.num_features == 64 + 128 + 192
    with pytest.raises(MiniPlacesError, match="one entry per branch"):
        create_model("msvit", depths=(1, 1))


def test_fastnet_stages_halve_the_side_and_the_residual_branch_starts_at_zero() -> None:
    from miniplaces.models.fastnet import Stage

    model = create_model("fastnet", num_classes=10, widths=(8, 16, 32), stem_width=4, residual=False).eval()
    assert model.num_features == 32 and isinstance(model.features[1].down[1], nn.MaxPool2d)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 32, 4, 4)  # 64 / 2 (stem) / 2³ (stages)
    assert not any(isinstance(m, nn.BatchNorm2d) and m.weight.abs().sum() == 0 for m in model.modules())
    residual = create_model("fastnet", num_classes=10, widths=(8, 16), stem_width=4).eval()  # residual: default
    stage = residual.features[1]
    assert isinstance(stage, Stage) and stage.extra is not None
    # Zero-initialised last BN scale: each stage starts as its first convolution alone.
    h = torch.rand(2, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(stage(h), stage.down(h))
    plain = create_model("fastnet", widths=(8, 16), stem_width=4, residual=False)
    assert count_macs(residual, 64) > count_macs(plain, 64)
    with pytest.raises(MiniPlacesError, match="widths"):
        create_model("fastnet", widths=(8, 0))
    from miniplaces.config import TrainConfig, load_config
    from miniplaces.models import model_card
    from miniplaces.presets import presets_dir

    # `--model fastnet` alone takes the fast recipe's optimiser, lr and weight decay (Nesterov is the preset's),
    # and Muon's settings are the config's defaults.
    recipe = load_config(presets_dir() / "fast.yaml")
    assert model_card("fastnet").optimizer_defaults() == (recipe.optimizer, recipe.lr, recipe.weight_decay)
    assert (recipe.muon_lr, recipe.muon_momentum) == (TrainConfig().muon_lr, TrainConfig().muon_momentum)


def test_fastnet_whitening_stem_matches_numpy_pca_and_whitens() -> None:
    import numpy as np

    torch.manual_seed(0)
    # Smooth colour fields plus a little noise: neighbouring pixels correlate, as in photographs.
    images = F.interpolate(torch.rand(48, 3, 4, 4), size=32, mode="bilinear") * 0.8 + 0.2 * torch.rand(48, 3, 32, 32)
    model = create_model("fastnet", num_classes=10, widths=(8, 16), stem_width=8)
    model.init_from_data(images)
    weight = model.features[0][0].weight.detach()  # (8, 3, 4, 4): 4 components and their negatives
    torch.testing.assert_close(weight[:4], -weight[4:])
    # Oracle: numpy's covariance and eigenvectors of the 4×4 patches at stride 2, cut out by slicing.
    x = model.normalize(images).numpy()
    patches = np.stack([x[:, :, i:i + 4, j:j + 4].reshape(len(x), -1)
                        for i in range(0, 29, 2) for j in range(0, 29, 2)], 1).reshape(-1, 48)
    variance, vectors = np.linalg.eigh(np.cov(patches.T))
    top = torch.from_numpy(vectors[:, ::-1][:, :4].T.copy()).float()  # largest variance first
    cosine = F.cosine_similarity(weight[:4].flatten(1), top, dim=1)
    torch.testing.assert_close(cosine.abs(), torch.ones(4), atol=1e-4, rtol=0)
    # Whitened: on these images the stem's (unpadded) responses are uncorrelated, each of unit variance.
    responses = F.conv2d(model.normalize(images), weight[:4], stride=2)
    torch.testing.assert_close(torch.cov(responses.transpose(0, 1).flatten(1)), torch.eye(4), atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="images"):
        model.init_from_data(torch.rand(2, 1, 32, 32))
    frozen = create_model("fastnet", num_classes=10, widths=(8, 16), stem_width=8, freeze_stem=True)
    assert not frozen.features[0][0].weight.requires_grad and frozen.features[0][1].weight.requires_grad


def test_models_command_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "vit", "simplenet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "params", "MACs@128"]
    assert lines[1].split()[:5] == ["vit", "1.96", "M", "126.6", "M"]
    assert lines[2].startswith("simplenet")
    assert main(["models", "nope"]) == 2
