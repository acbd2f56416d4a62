from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from miniplaces.cli import main
from miniplaces.config import ConfigError, TrainConfig, load_config, resolve, save_config
from miniplaces.engine.distributed import DistInfo
from miniplaces.engine.loaders import TrainBatches
from miniplaces.engine.loop import build_trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# The study's experiments: config file → (model, epochs, optimizer).
STUDY = {
    "simplenet": ("simplenet", 60, "sgd"),
    "simplenet_unfold": ("simplenet_unfold", 10, "sgd"),
    "vit": ("vit", 90, "adamw"),
    "msvit": ("msvit", 90, "adamw"),
    "resnet18": ("resnet18", 60, "sgd"),
}


def test_defaults_yaml_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\nlr: 0.5\nmodel_kwargs: {depth: 3}\n")
    config = load_config(path, ["lr=0.25", "amp=bf16", "name=007", "clip_grad=null", "model_kwargs.width=4"])
    assert (config.epochs, config.lr, config.amp, config.name) == (7, 0.25, "bf16", "007")
    assert config.model_kwargs == {"depth": 3, "width": 4}
    assert config.clip_grad is None and config.batch_size == 256  # untouched default


def test_family_defaults_fill_optimizer() -> None:
    cnn = resolve(TrainConfig(model="simplenet", root="x"))
    vit = resolve(TrainConfig(model="msvit", root="x"))
    assert (cnn.optimizer, cnn.lr, cnn.weight_decay, cnn.momentum) == ("sgd", 0.1, 1e-4, 0.9)
    assert (vit.optimizer, vit.lr, vit.weight_decay) == ("adamw", 0.01, 0.05)
    assert resolve(TrainConfig(model="vit", root="x", lr=0.003)).lr == 0.003


@pytest.mark.parametrize(("overrides", "message"), [
    (["nope=1"], "unknown key 'nope'"),
    (["epochs=ten"], "key 'epochs' must be int"),
    (["epochs=2.5"], "key 'epochs' must be int"),
    (["amp=fp8"], "key 'amp' must be 'none' | 'bf16' | 'fp16' | 'auto'"),
    (["channels_last=maybe"], "key 'channels_last' must be bool"),
    (["model_kwargs=3"], "key 'model_kwargs' must be mapping"),
    (["epochs"], "expected key=value"),
])
def test_flag_errors_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
        load_config(None, overrides)


def test_yaml_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\n\nbatch_sise: 64\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3: unknown key 'batch_sise'"):
        load_config(path)
    path.write_text("epochs: 3\nlr: fast\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: key 'lr' must be float"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)


def test_range_checks_and_missing_root() -> None:
    with pytest.raises(ConfigError, match="'root' is not set"):
        resolve(TrainConfig())
    with pytest.raises(ConfigError, match="'batch_size' must be ≥ 1"):
        resolve(TrainConfig(root="x", batch_size=0))


def test_saved_config_round_trips(tmp_path: Path) -> None:
    config = resolve(TrainConfig(root="data", model_kwargs={"depth": 2}, clip_grad=1.0))
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize("name", sorted(STUDY))
def test_every_study_config_loads(name: str) -> None:
    path = CONFIGS / f"{name}.yaml"
    assert "Study result to reproduce" in path.read_text()
    config = resolve(load_config(path, ["root=x"]))
    assert (config.model, config.epochs, config.optimizer) == STUDY[name]
    if config.optimizer == "adamw":
        assert (config.lr, config.weight_decay, config.clip_grad) == (0.01, 0.05, 1.0)
    else:
        assert (config.lr, config.weight_decay, config.momentum, config.batch_size) == (0.1, 1e-4, 0.9, 256)


def test_configs_folder_has_the_study_configs_and_the_fast_recipe() -> None:
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted([*STUDY, "fast"])
    for path in CONFIGS.glob("*.yaml"):
        assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_cli_reports_config_error_by_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--root", str(tmp_path), "--set", "warmup_epoch=3"])
    assert code == 2
    assert "unknown key 'warmup_epoch'" in capsys.readouterr().err


def test_nesterov_needs_sgd_with_momentum() -> None:
    config = resolve(load_config(None, ["root=x", "model=simplenet", "nesterov=true"]))
    assert config.nesterov and config.optimizer == "sgd"
    trainer = build_trainer(config, nn.Linear(2, 2), TrainBatches([], None, 1), DistInfo(), torch.device("cpu"), None)
    assert all(group["nesterov"] for group in trainer.optimizer.param_groups)
    with pytest.raises(ConfigError, match="'nesterov' needs SGD with momentum > 0, but optimizer is adamw"):
        resolve(load_config(None, ["root=x", "model=vit", "nesterov=true"]))
    with pytest.raises(ConfigError, match="but momentum is 0; set nesterov to false or momentum above 0"):
        resolve(load_config(None, ["root=x", "model=simplenet", "nesterov=true", "momentum=0"]))
