"""resnet18 against torchvision's, and its weight loading."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn

from miniplaces.engine.checkpoint import describe_model, load_model, save_checkpoint
from miniplaces.errors import MiniPlacesError
from miniplaces.layers import Normalize
from miniplaces.models import create_model
from miniplaces.models.resnet import imagenet_cache_path


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """A torchvision resnet18 with a 1000-class head (random, not downloaded) and its state dict on disk."""
    torch.manual_seed(1)
    tv = torchvision.models.resnet18().eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18_imagenet_like.pth"
    torch.save(tv.state_dict(), path)
    return tv, path


def test_equals_torchvision_apart_from_head_and_normalisation(imagenet_like: tuple[nn.Module, Path]) -> None:
    tv, path = imagenet_like
    ours = create_model("resnet18", num_classes=7, weights=str(path)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        tv_features = nn.Sequential(*list(tv.children())[:-1])(Normalize()(x)).flatten(1)  # torchvision up to fc
        ours_features = ours.forward_head(ours.forward_features(x), pre_logits=True)
        torch.testing.assert_close(ours_features, tv_features)
        # Same head weights → same logits as torchvision's forward.
        tv.fc = ours.fc
        torch.testing.assert_close(ours(x), tv(Normalize()(x)))
    assert ours.fc.out_features == 7
    # Every torchvision parameter and buffer is in ours, under the same name.
    assert set(tv.state_dict()) | {"normalize.mean", "normalize.std"} == set(ours.state_dict())


def test_imagenet_head_is_dropped_and_checkpoint_head_kept(imagenet_like: tuple[nn.Module, Path],
                                                           tmp_path: Path) -> None:
    tv, path = imagenet_like
    soon_gone = tmp_path / "soon_gone.pth"
    soon_gone.write_bytes(path.read_bytes())
    ours = create_model("resnet18", num_classes=5, weights=soon_gone).eval()
    assert ours.model_kwargs["weights"] == str(soon_gone)  # a str, so the checkpoint loads with weights_only
    assert torch.equal(ours.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    assert ours.fc.weight.shape == (5, 512)
    ckpt = save_checkpoint({"model": describe_model(ours), "state_dict": ours.state_dict(), "categories": []},
                           tmp_path / "c.pt")
    soon_gone.unlink()
    x = torch.rand(1, 3, 32, 32)
    # Rebuilding from a checkpoint ignores the weights argument it was made with (the file is gone).
    rebuilt, _ = load_model(ckpt)
    torch.testing.assert_close(rebuilt(x), ours(x))
    # A miniplaces checkpoint (whole file or its state dict) as weights restores the head too.
    torch.save(ours.state_dict(), tmp_path / "sd.pth")
    for source in (ckpt, tmp_path / "sd.pth"):
        again = create_model("resnet18", num_classes=5, weights=str(source)).eval()
        torch.testing.assert_close(again(x), ours(x))


def test_bad_weights_files_fail_clearly(tmp_path: Path, imagenet_like: tuple[nn.Module, Path]) -> None:
    not_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], not_dict)
    with pytest.raises(MiniPlacesError, match=r"list\.pth is not a state dict"):
        create_model("resnet18", weights=str(not_dict))
    whole_module = tmp_path / "module.pth"
    torch.save(nn.Linear(2, 2), whole_module)
    with pytest.raises(MiniPlacesError, match=r"cannot read weights file .*module\.pth"):
        create_model("resnet18", weights=str(whole_module))
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(MiniPlacesError, match="notes.txt"):
        create_model("resnet18", weights=str(text))
    with pytest.raises(MiniPlacesError, match="does not exist"):
        create_model("resnet18", weights=str(tmp_path / "absent.pth"))
    simplenet = tmp_path / "simplenet.pth"
    torch.save(create_model("simplenet").state_dict(), simplenet)
    with pytest.raises(MiniPlacesError, match=r"simplenet\.pth is not a resnet18 state dict: missing 120 .*unexp"):
        create_model("resnet18", weights=str(simplenet))
    grey = dict(imagenet_like[0].state_dict(), **{"conv1.weight": torch.zeros(64, 1, 7, 7)})
    torch.save(grey, tmp_path / "grey.pth")
    with pytest.raises(MiniPlacesError, match=r"not a resnet18 state dict: wrong shape 1 \(conv1.weight\)"):
        create_model("resnet18", weights=str(tmp_path / "grey.pth"))


def test_imagenet_offline_names_cache_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                           imagenet_like: tuple[nn.Module, Path]) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("no network (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_cache_path() == expected
    with pytest.raises(MiniPlacesError) as info:
        create_model("resnet18", weights="imagenet")
    assert str(expected) in str(info.value) and "weights=PATH" in str(info.value)
    # With the file in the cache, "imagenet" loads it without the network.
    expected.write_bytes(imagenet_like[1].read_bytes())
    model = create_model("resnet18", weights="imagenet")
    assert torch.equal(model.conv1.weight, imagenet_like[0].conv1.weight)
