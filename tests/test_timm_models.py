"""`timm/<name>` models: a clean error without timm; with it, the same training, checkpoint, eval,
saliency and attack support as the project's own models (skipped when timm is not installed)."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from miniplaces.config import TrainConfig, resolve
from miniplaces.errors import MiniPlacesError
from miniplaces.models import create_model, list_models, model_card
from miniplaces.models.timm_models import timm_entry

TORCH_THREADS = 1


def test_without_timm_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    timm_entry.cache_clear()
    try:
        with pytest.raises(MiniPlacesError, match=r"pip install 'miniplaces\[timm\]'"):
            create_model("timm/resnet18", num_classes=3)
    finally:
        timm_entry.cache_clear()
    assert not any(name.startswith("timm/") for name in list_models())  # resolved lazily, never listed


def test_unknown_names_list_the_timm_prefix() -> None:
    with pytest.raises(MiniPlacesError, match="timm/<name>"):
        model_card("no_such_net")


needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")


@needs_timm
def test_unknown_timm_architecture_is_named() -> None:
    with pytest.raises(MiniPlacesError, match="unknown timm model 'no_such_arch'"):
        create_model("timm/no_such_arch", num_classes=3)


@needs_timm
def test_cards_come_from_the_architecture() -> None:
    cnn, vit = model_card("timm/test_resnet"), model_card("timm/test_vit")
    assert (cnn.family, cnn.optimizer, cnn.gradcam_layer, cnn.size_argument) == ("cnn", "sgd", "model.layer4", None)
    assert (vit.family, vit.optimizer, vit.size_argument) == ("vit", "adamw", "img_size")
    assert cnn.weight_arguments == vit.weight_arguments == ("pretrained",)
    model = create_model("timm/test_vit", num_classes=5, image_size=32)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5) and model.model_kwargs["img_size"] == 32
    # Images in [0, 1] are normalised inside, with the architecture's mean and std.
    assert torch.allclose(model.normalize(model.mean.expand(1, 3, 2, 2)), torch.zeros(1, 3, 2, 2))


@needs_timm
def test_train_eval_saliency_attack_of_a_timm_model(synth_root: Path, tmp_path: Path) -> None:
    from miniplaces.attacks.projected import pgd
    from miniplaces.engine.checkpoint import load_model
    from miniplaces.explain.saliency import default_gradcam_layer, grad_cam
    from miniplaces.workflows.evaluate import evaluate_checkpoint
    from miniplaces.workflows.train import train

    config = TrainConfig(model="timm/test_resnet", root=str(synth_root), out_dir=str(tmp_path), name="run",
                         epochs=1, batch_size=8, lr=0.05, warmup_epochs=0, workers=0, image_size=32, device="cpu",
                         limit_train_batches=2, ema=True)
    assert resolve(dataclasses.replace(config)).optimizer == "sgd"
    run = train(config, progress=False)
    best = run / "checkpoints" / "best.pt"
    report, _ = evaluate_checkpoint(best, synth_root, workers=0, progress=False)
    assert report.count == 16 and report.model["name"] == "timm/test_resnet"
    model, _ = load_model(best)
    x = torch.rand(4, 3, 32, 32)
    assert default_gradcam_layer(model) == "model.layer4"
    assert grad_cam(model, x).shape[-2:] == (32, 32)
    adversarial = pgd(model, x, torch.zeros(4, dtype=torch.long), eps=4 / 255, steps=1, mode="untargeted")
    assert (adversarial - x).abs().max() <= 4 / 255 + 1e-6
