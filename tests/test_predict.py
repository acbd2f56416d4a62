"""`miniplaces predict`: top-k of images of any mode and size; the challenge submission file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from miniplaces.cli import main
from miniplaces.data import read_categories
from miniplaces.data.synth import synthesize
from miniplaces.engine.checkpoint import describe_model, load_model, save_checkpoint
from miniplaces.engine.predict import eval_transform, predict_images
from miniplaces.models import create_model


def make_checkpoint(path: Path, num_classes: int, categories: list[str]) -> Path:
    model = create_model("simplenet", num_classes=num_classes)
    # A random-init head gives near-uniform probabilities; a larger one makes the ranking clear.
    torch.nn.init.normal_(model.fc.weight, std=0.5)
    return save_checkpoint({"model": describe_model(model), "state_dict": model.state_dict(),
                            "categories": categories, "config": {"image_size": 32}}, path)


@pytest.fixture(scope="module")
def images(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    source = synth_root / "images" / "val" / "00000001.jpg"
    rgb = Image.open(source).convert("RGB")
    gray = rgb.convert("L")
    out = {"jpeg": source, "png": folder / "scene.png", "gray": folder / "gray.jpg",
           "gray_as_rgb": folder / "gray_as_rgb.png", "rgba": folder / "odd.png"}
    rgb.save(out["png"])
    gray.save(out["gray"], quality=95)
    Image.open(out["gray"]).convert("RGB").save(out["gray_as_rgb"])  # the same pixels, 3 channels
    rgba = rgb.resize((37, 53)).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(out["rgba"])
    return out


def test_predict_any_mode_and_size(synth_root: Path, images: dict[str, Path], tmp_path: Path) -> None:
    categories = read_categories(synth_root)
    checkpoint = make_checkpoint(tmp_path / "c.pt", 4, categories)
    model, _ = load_model(checkpoint)
    paths = [images[k] for k in ("jpeg", "png", "gray", "gray_as_rgb", "rgba")]
    predictions = predict_images(model, paths, categories, top=5, image_size=32, batch_size=2)
    assert [p.path for p in predictions] == paths
    for prediction in predictions:
        assert len(prediction.labels) == 4 == len(set(prediction.labels))  # top 5 of 4 classes: all 4
        assert prediction.probabilities == sorted(prediction.probabilities, reverse=True)
        assert sum(prediction.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert prediction.names == [categories[i] for i in prediction.labels]
    # Each probability is the softmax of the model on the val-transformed image.
    x = eval_transform(32)(Image.open(images["png"]).convert("RGB")).unsqueeze(0)
    expected = model(x).softmax(1)[0]
    png = predictions[1]
    assert png.probabilities == pytest.approx([expected[i].item() for i in png.labels], abs=1e-6)
    # Grayscale is turned into RGB by replicating the channel: same prediction as its RGB copy.
    gray, gray_rgb = predictions[2], predictions[3]
    assert gray.labels == gray_rgb.labels and gray.probabilities == pytest.approx(gray_rgb.probabilities, abs=1e-6)


def test_predict_cli_table_and_json(synth_root: Path, images: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = make_checkpoint(tmp_path / "c.pt", 4, read_categories(synth_root))
    args = ["predict", "--checkpoint", str(checkpoint), "--device", "cpu", "--top", "3"]
    assert main([*args, "--json", str(images["jpeg"]), str(images["rgba"])]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["image"] for d in data] == [str(images["jpeg"]), str(images["rgba"])]
    assert all(len(d["top"]) == 3 and d["top"][0]["name"].startswith("scene_") for d in data)
    assert main([*args, str(images["gray"])]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["image", "rank", "probability", "category"] and len(table) == 4
    assert re.match(rf"{re.escape(str(images['gray']))}\s+1\s+0\.\d{{4}}\s+scene_\d{{3}} \(\d\)", table[1])
    assert main([*args, str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg does not exist" in capsys.readouterr().err


def test_challenge_file_one_sorted_line_per_test_image(tmp_path: Path) -> None:
    root = synthesize(tmp_path / "synth", classes=6, per_class=1, val_per_class=1, test_count=7, image_size=32)
    checkpoint = make_checkpoint(tmp_path / "c.pt", 6, read_categories(root))
    out = tmp_path / "sub" / "challenge.txt"
    assert main(["predict", "--checkpoint", str(checkpoint), "--challenge", "--root", str(root), "--out", str(out),
                 "--batch-size", "3", "--workers", "0", "--device", "cpu"]) == 0
    lines = out.read_text().splitlines()
    tests = sorted(p.name for p in (root / "images" / "test").iterdir())
    assert [line.split()[0] for line in lines] == [f"test/{name}" for name in tests]
    model, _ = load_model(checkpoint)
    expected = predict_images(model, [root / "images" / "test" / n for n in tests], top=5, image_size=32)
    for line, prediction in zip(lines, expected, strict=True):
        labels = [int(x) for x in line.split()[1:]]
        assert len(labels) == 5 == len(set(labels)) and all(0 <= x < 6 for x in labels)
        assert labels == prediction.labels  # most likely first, same as predicting the file alone


def test_challenge_needs_five_classes(synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = make_checkpoint(tmp_path / "c.pt", 4, [])
    assert main(["predict", "--checkpoint", str(checkpoint), "--challenge", "--root", str(synth_root),
                 "--out", str(tmp_path / "x.txt"), "--workers", "0"]) == 2
    assert "only 4 classes" in capsys.readouterr().err and not (tmp_path / "x.txt").exists()
