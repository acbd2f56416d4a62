"""Saliency maps: where a small change of the input moves the model's decision most.

- `vanilla_saliency`: |∂ loss / ∂ x| of the predicted class (or a given target), max over the
  colour channels: one N×1×H×W map per image, as in the study.
- `smoothgrad`: the vanilla map averaged over noisy copies of the image (Smilkov et al., 2017).
- `grad_cam`: class-score gradients pooled over a convolutional feature map, weighting its
  channels (Selvaraju et al., 2017); upsampled to the image size.

Every function runs the model in eval mode with its parameters frozen for the pass; each
module's mode and each parameter's `requires_grad` are restored afterwards, and no `.grad`
is left on the parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from miniplaces.errors import MiniPlacesError
from miniplaces.models import model_card
from miniplaces.pixels import check_images, eval_mode, input_gradient

SALIENCY_METHODS: tuple[str, ...] = ("vanilla", "smoothgrad", "gradcam")


class GradCamLayerError(MiniPlacesError):
    """Grad-CAM has no usable layer: none by default for this model, or the one named is missing or not 4-D."""


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and `requires_grad=False` on every parameter, both restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with eval_mode(model):
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            yield model
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


def _predicted(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    if target is not None:
        return target
    with torch.no_grad():
        return model(x).argmax(dim=1)


def _abs_input_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return input_gradient(model, x, target).abs().amax(dim=1, keepdim=True)  # (N, 1, H, W)


def vanilla_saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """max over channels of |∂ CE(model(x), target) / ∂ x|; target defaults to the predicted class.

    Returns a non-negative (N, 1, H, W) tensor.
    """
    check_images(x, "saliency maps")
    with frozen(model), torch.enable_grad():
        return _abs_input_gradient(model, x, _predicted(model, x, target))


def smoothgrad(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    samples: int = 16,
    sigma: float = 0.15,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The vanilla map averaged over `samples` copies of x plus N(0, σ²) noise.

    Args:
        sigma: noise standard deviation as a fraction of the pixel range [0, 1] (0.15 = 15 %).
        target: defaults to the class predicted on the clean image, fixed for every copy.
    """
    check_images(x, "saliency maps")
    if samples < 1 or sigma < 0:
        raise MiniPlacesError(f"SmoothGrad needs samples ≥ 1 and sigma ≥ 0; got samples={samples}, sigma={sigma}")
    with frozen(model), torch.enable_grad():
        target = _predicted(model, x, target)
        total = torch.zeros_like(x[:, :1])
        for _ in range(samples):
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * sigma
            total += _abs_input_gradient(model, x + noise, target)
    return total / samples


def _find_module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        hint = f"; its convolutions are {', '.join(convs[-5:])}" if convs else ""
        raise GradCamLayerError(f"the model has no layer named {name!r} for Grad-CAM{hint}")
    return modules[name]


def default_gradcam_layer(model: nn.Module) -> str:
    """The layer Grad-CAM reads by default: the one its model card names (the last convolutional block).

    A model not made by `create_model` falls back to a `layer4` or `features` block when it has one.
    """
    name = getattr(model, "model_name", None)
    card = None
    if isinstance(name, str):
        try:
            card = model_card(name)  # registered, or resolved by prefix (timm/<name>)
        except MiniPlacesError:
            card = None
    if card is not None and card.gradcam_layer is not None:
        return card.gradcam_layer
    modules = dict(model.named_modules())
    for candidate in ("layer4", "features"):
        if candidate in modules and any(isinstance(m, nn.Conv2d) for m in modules[candidate].modules()):
            return candidate
    raise GradCamLayerError(
        f"Grad-CAM needs a convolutional feature map and model {name or type(model).__name__!r} has no default one "
        "(a vision transformer has none); name a layer whose output is (B, C, h, w) (argument layer), "
        "or use the vanilla or smoothgrad method"
    )


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    layer: str | None = None,
    upsample: bool = True,
) -> torch.Tensor:
    """ReLU(Σ_k α_k A_k) with α_k the spatial mean of ∂ score_target / ∂ A_k, A the layer's output.

    Args:
        layer: a module name (`model.named_modules()`); default `default_gradcam_layer(model)`.
        upsample: bilinearly resize the (N, 1, h, w) map to the image size.

    Returns:
        A non-negative (N, 1, H, W) map ((N, 1, h, w) with `upsample=False`).
    """
    check_images(x, "saliency maps")
    name = default_gradcam_layer(model) if layer is None else layer
    module = _find_module(model, name)
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _inp, out: captured.append(out))
    try:
        with frozen(model), torch.enable_grad():
            target = _predicted(model, x, target)
            captured.clear()
            # The input needs a gradient so the activation joins the graph while the weights are frozen.
            logits = model(x.detach().requires_grad_(True))
            activation = captured[-1]
            if not isinstance(activation, torch.Tensor) or activation.dim() != 4:
                shape = tuple(activation.shape) if isinstance(activation, torch.Tensor) else type(activation).__name__
                raise GradCamLayerError(
                    f"Grad-CAM layer {name!r} gives {shape}, not a (B, C, h, w) feature map; "
                    "choose a convolutional layer, or use the vanilla or smoothgrad method"
                )
            score = logits.gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(score, activation)
    finally:
        handle.remove()
    weights = grad.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
    cam = F.relu((weights * activation.detach()).sum(dim=1, keepdim=True))  # (N, 1, h, w)
    if upsample:
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return cam


def saliency(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    method: str = "vanilla",
    layer: str | None = None,
    samples: int = 16,
    sigma: float = 0.15,
) -> torch.Tensor:
    """Dispatch on `method`: `vanilla`, `smoothgrad` or `gradcam`; (N, 1, H, W), non-negative."""
    if method == "vanilla":
        return vanilla_saliency(model, x, target)
    if method == "smoothgrad":
        return smoothgrad(model, x, target, samples=samples, sigma=sigma)
    if method == "gradcam":
        return grad_cam(model, x, target, layer=layer)
    raise MiniPlacesError(f"unknown saliency method {method!r}; choose one of {', '.join(SALIENCY_METHODS)}")
