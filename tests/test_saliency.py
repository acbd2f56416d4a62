"""Saliency maps: shapes, signs, zero where the model is blind, side effects, and oracles (torch.func, CAM)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.models import resnet18

from miniplaces.errors import MiniPlacesError
from miniplaces.explain import default_gradcam_layer, grad_cam, saliency, smoothgrad, vanilla_saliency
from miniplaces.explain.overlay import attack_grid, overlay_heatmap, robust_scale, saliency_grid, sweep_plot
from miniplaces.explain.saliency import GradCamLayerError
from miniplaces.models import create_model


class LeftHalfNet(nn.Module):
    """A small CNN that only ever sees the left half of the image."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = x[..., : x.shape[-1] // 2]  # (B, 3, H, W/2)
        return self.fc(self.features(left).mean(dim=(2, 3)))


class TinyViT(nn.Module):
    """Patches → linear embedding → one transformer layer → mean token → head; no convolution."""

    model_name = "vit_tiny"

    def __init__(self, classes: int = 3, patch: int = 8, dim: int = 16) -> None:
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(3 * patch * patch, dim)
        self.blocks = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=32, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)  # (B, T, 3·p·p)
        return self.head(self.blocks(self.embed(patches)).mean(dim=1))


@pytest.fixture(scope="module")
def simplenet() -> nn.Module:
    torch.manual_seed(0)
    return create_model("simplenet", num_classes=5).eval()


def test_vanilla_matches_torch_func_and_is_non_negative(simplenet: nn.Module) -> None:
    x = torch.rand(3, 3, 32, 32)
    maps = vanilla_saliency(simplenet, x)
    assert maps.shape == (3, 1, 32, 32)
    assert (maps >= 0).all() and maps.sum() > 0
    predicted = simplenet(x).argmax(1)
    grad = torch.func.grad(lambda inp: F.cross_entropy(simplenet(inp), predicted, reduction="sum"))(x)
    torch.testing.assert_close(maps, grad.abs().amax(dim=1, keepdim=True))
    # A given target changes the map.
    other = (predicted + 1) % 5
    assert not torch.allclose(vanilla_saliency(simplenet, x, other), maps)


@pytest.mark.parametrize("method", ["vanilla", "smoothgrad"])
def test_gradient_maps_are_zero_where_the_model_is_blind(method: str) -> None:
    torch.manual_seed(0)
    model = LeftHalfNet().eval()
    x = torch.rand(4, 3, 16, 16)
    maps = saliency(model, x, method=method, samples=4)
    assert maps.shape == (4, 1, 16, 16)
    assert (maps >= 0).all()
    assert torch.count_nonzero(maps[..., 8:]) == 0
    assert (maps[..., :8].flatten(1).amax(1) > 0).all()


def test_smoothgrad_averages_noisy_vanilla_maps(simplenet: nn.Module) -> None:
    x = torch.rand(2, 3, 32, 32)
    maps = smoothgrad(simplenet, x, samples=3, sigma=0.1, generator=torch.Generator().manual_seed(0))
    assert maps.shape == (2, 1, 32, 32) and (maps >= 0).all()
    # The same noise, drawn by hand, through the vanilla map with the clean prediction as target.
    generator = torch.Generator().manual_seed(0)
    target = simplenet(x).argmax(1)
    expected = sum(vanilla_saliency(simplenet, x + 0.1 * torch.randn(x.shape, generator=generator), target)
                   for _ in range(3)) / 3
    torch.testing.assert_close(maps, expected)
    # σ = 0: every copy is the clean image.
    torch.testing.assert_close(smoothgrad(simplenet, x, samples=2, sigma=0.0), vanilla_saliency(simplenet, x))


def test_grad_cam_equals_cam_for_a_global_pool_head(simplenet: nn.Module) -> None:
    """For features → global average pool → linear, Grad-CAM is CAM (Zhou et al.) divided by h·w."""
    x = torch.rand(2, 3, 64, 64)
    target = torch.tensor([1, 3])
    cam = grad_cam(simplenet, x, target, upsample=False)
    with torch.no_grad():
        features = simplenet.forward_features(x)  # (2, 512, 8, 8)
        weights = simplenet.fc.weight[target]  # (2, 512)
        expected = F.relu(torch.einsum("nc,nchw->nhw", weights, features))[:, None] / (8 * 8)
    torch.testing.assert_close(cam, expected)
    full = grad_cam(simplenet, x, target)
    assert full.shape == (2, 1, 64, 64) and (full >= 0).all()
    torch.testing.assert_close(full, F.interpolate(expected, size=(64, 64), mode="bilinear", align_corners=False))


def test_grad_cam_default_layers() -> None:
    assert default_gradcam_layer(create_model("simplenet", num_classes=3)) == "features"
    assert default_gradcam_layer(create_model("simplenet_unfold", num_classes=3)) == "features"
    ours = create_model("resnet18", num_classes=3).eval()
    assert default_gradcam_layer(ours) == "layer4"
    torchvision_resnet = resnet18(num_classes=3).eval()  # an unregistered model: found by its layer names
    assert default_gradcam_layer(torchvision_resnet) == "layer4"
    cam = grad_cam(ours, torch.rand(2, 3, 64, 64))
    assert cam.shape == (2, 1, 64, 64) and (cam >= 0).all()
    assert grad_cam(LeftHalfNet(), torch.rand(1, 3, 16, 16), layer="features.0").shape == (1, 1, 16, 16)


@pytest.mark.parametrize("name", ["vit", "msvit"])
def test_grad_cam_refuses_registered_transformers(name: str) -> None:
    with pytest.raises(GradCamLayerError, match=f"model '{name}' has no default.*argument layer"):
        grad_cam(create_model(name, num_classes=3).eval(), torch.rand(1, 3, 64, 64))


def test_grad_cam_errors_name_the_option() -> None:
    vit = TinyViT()
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(GradCamLayerError, match=r"'vit_tiny' has no default.*argument layer"):
        grad_cam(vit, x)
    with pytest.raises(MiniPlacesError, match=r"'blocks' gives \(2, 4, 16\), not a \(B, C, h, w\)"):
        grad_cam(vit, x, layer="blocks")
    with pytest.raises(MiniPlacesError, match="no layer named 'layer9'.*features.2"):
        grad_cam(LeftHalfNet(), x, layer="layer9")
    with pytest.raises(MiniPlacesError, match="unknown saliency method"):
        saliency(vit, x, method="occlusion")
    assert vanilla_saliency(vit, x).shape == (2, 1, 16, 16)  # gradient maps work on any model


@pytest.mark.parametrize("method", ["vanilla", "smoothgrad", "gradcam"])
def test_saliency_leaves_the_model_as_it_found_it(method: str) -> None:
    model = LeftHalfNet().train()
    model.features[0].eval()
    model.fc.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    saliency(model, torch.rand(2, 3, 16, 16), method=method, layer="features", samples=2)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.features._forward_hooks  # the Grad-CAM hook is removed


def test_robust_scale_and_overlay() -> None:
    maps = torch.zeros(2, 1, 10, 10)
    maps[0, 0] = torch.arange(100.0).view(10, 10)
    scaled = robust_scale(maps, percentile=90)
    assert scaled.min() >= 0 and scaled.max() <= 1
    assert scaled[0, 0, 9, 9] == 1.0 and scaled[0, 0, 0, 5] == pytest.approx(5 / torch.quantile(maps[0], 0.9))
    assert torch.count_nonzero(scaled[1]) == 0  # an all-zero map stays zero
    image = torch.rand(3, 10, 10)
    blended = overlay_heatmap(image, scaled[0], alpha=0.0)
    assert blended.shape == (10, 10, 3)
    assert abs(blended - image.permute(1, 2, 0).numpy()).max() < 1e-6


def test_grids_are_written(tmp_path: Path) -> None:
    images = torch.rand(3, 3, 16, 16)
    path = saliency_grid(images, torch.rand(3, 1, 16, 16), ["a", "b", "c"], ["a", "c", "c"],
                         tmp_path / "s" / "grid.png", title="vanilla", columns=2)
    adv = attack_grid(images, (images + 0.01).clamp(0, 1), ["a"] * 3, ["a"] * 3, ["b"] * 3, tmp_path / "a.png",
                      target_names=["b"] * 3)
    rows = [{"eps": e, "adv_top1": 90 - e * 1000, "adv_top5": 99.0} for e in (0, 1 / 255, 2 / 255)]
    sweep = sweep_plot(rows, tmp_path / "sweep.png", title="sweep")
    for png in (path, adv, sweep):
        with Image.open(png) as opened:
            assert opened.format == "PNG" and opened.width > 100
