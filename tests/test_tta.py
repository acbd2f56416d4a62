"""Multi-crop test-time augmentation: the crops are torchvision's, and `eval` feeds the model its own side."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from miniplaces.cli import main
from miniplaces.config import TrainConfig
from miniplaces.data.loader import CachedLoader
from miniplaces.engine.train import five_crops, tta_logits
from miniplaces.workflows.evaluate import evaluate_checkpoint
from miniplaces.workflows.train import train

TORCH_THREADS = 1


def test_five_crops_are_torchvisions() -> None:
    x = torch.rand(2, 3, 36, 37)
    for mine, theirs in zip(five_crops(x, 32), TF.five_crop(x, [32, 32]), strict=True):
        assert torch.equal(mine, theirs)
    with pytest.raises(ValueError, match="larger"):
        five_crops(x, 40)


def test_ten_crop_logits_average_torchvisions_ten_views() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    x = torch.rand(4, 3, 10, 10)
    expected = torch.stack([model(v) for v in TF.ten_crop(x, [8, 8])]).mean(0)
    torch.testing.assert_close(tta_logits(model, x, "ten-crop", 8), expected)
    five = torch.stack([model(v) for v in TF.five_crop(x, [8, 8])]).mean(0)
    torch.testing.assert_close(tta_logits(model, x, "five-crop", 8), five)
    assert not torch.allclose(five, expected)
    with pytest.raises(ValueError, match="crop side"):
        tta_logits(model, x, "five-crop")


def test_cache_loader_can_give_uncropped_validation_images() -> None:
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    uncropped = next(iter(CachedLoader(images, np.arange(8), 8, train=False, image_size=32, val_crop=False)))[0]
    cropped = next(iter(CachedLoader(images, np.arange(8), 8, train=False, image_size=32)))[0]
    assert uncropped.shape == (8, 3, 36, 36) and cropped.shape == (8, 3, 32, 32)
    # The centre crop of the uncropped batch is the usual validation batch.
    torch.testing.assert_close(five_crops(uncropped, 32)[4], cropped)


def test_eval_with_multi_crop(synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = TrainConfig(root=str(synth_root), out_dir=str(tmp_path), name="run", epochs=1, batch_size=16,
                         lr=0.05, warmup_epochs=0, workers=0, image_size=32, device="cpu", limit_train_batches=2)
    run = train(dataclasses.replace(config), progress=False)
    best = run / "checkpoints" / "best.pt"
    sides: list[int] = []
    handle = nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: sides.append(args[0].shape[-1]) if hasattr(module, "model_name") else None)
    try:
        report, _ = evaluate_checkpoint(best, synth_root, tta="five-crop", workers=0, progress=False,
                                        out=tmp_path / "five.json")
    finally:
        handle.remove()
    assert set(sides) == {32} and report.count == 16 and report.tta == "five-crop"
    plain, _ = evaluate_checkpoint(best, synth_root, workers=0, progress=False, out=tmp_path / "plain.json")
    assert report.loss != pytest.approx(plain.loss, rel=1e-6)
    out = tmp_path / "ten.json"
    assert main(["eval", "--checkpoint", str(best), "--root", str(synth_root), "--tta", "ten-crop", "--out", str(out),
                 "--workers", "0"]) == 0
    assert "tta ten-crop" in capsys.readouterr().out and json.loads(out.read_text())["tta"] == "ten-crop"
