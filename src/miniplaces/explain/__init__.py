"""Saliency maps and their overlays."""

from miniplaces.explain.saliency import (
    SALIENCY_METHODS,
    default_gradcam_layer,
    frozen,
    grad_cam,
    saliency,
    smoothgrad,
    vanilla_saliency,
)

__all__ = [
    "SALIENCY_METHODS",
    "default_gradcam_layer",
    "frozen",
    "grad_cam",
    "saliency",
    "smoothgrad",
    "vanilla_saliency",
]
