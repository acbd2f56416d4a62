from __future__ import annotations

from pathlib import Path

import pytest
import torch

from miniplaces.engine.checkpoint import CheckpointError, describe_model, load_checkpoint, load_model, save_checkpoint
from miniplaces.errors import MiniPlacesError
from miniplaces.models import create_model


def test_simplenet_parameter_count() -> None:
    model = create_model("simplenet")
    # conv 3·64·49+64, 64·64+64, 64·64·9+64, 64·256+256, 256·128+128, 128·128·9+128, 128·512+512; fc 512·100+100
    assert sum(p.numel() for p in model.parameters()) == 365_028
    assert model(torch.rand(2, 3, 128, 128)).shape == (2, 100)


def test_unknown_model_lists_known() -> None:
    with pytest.raises(MiniPlacesError, match="known models: .*simplenet"):
        create_model("nope")


def test_checkpoint_round_trip_and_errors(tmp_path: Path) -> None:
    model = create_model("simplenet", num_classes=7)
    path = save_checkpoint({"model": describe_model(model), "state_dict": model.state_dict(), "categories": []},
                           tmp_path / "c.pt")
    rebuilt, _ = load_model(path)
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(rebuilt(x), model.eval()(x))
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="t.pt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "f.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a miniplaces checkpoint"):
        load_checkpoint(foreign)
