"""The command line meets a timm or torchvision user halfway (issue 22): a bare `miniplaces` lists the commands,
common flags have their own names, `--print-config` shows what a run would use without writing anything, a
`--set` without `=` gets a hint, recipes keep their shape under one override, and messages say what they mean."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from miniplaces.cli import main
from miniplaces.config import ConfigError, load_config, resolve
from miniplaces.data.cache import build_cache, disk_size_text
from miniplaces.data.layout import LayoutError, read_split

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LIBRARY_NAMES = ("verify_dataset", "download_dataset", "synthesize")


def _printed_config(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["train", *argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_bare_command_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "attack", "saliency", "study", "serve"):
        assert f"    {command}" in out


def test_set_with_a_space_gets_the_key_value_hint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--set", "image_size", "64"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "--set image_size=64" in err


def test_short_flags_equal_their_set_keys(capsys: pytest.CaptureFixture[str], synth_root: Path) -> None:
    short = _printed_config(capsys, "--root", str(synth_root), "--model", "simplenet", "--epochs", "3",
                            "--lr", "0.05", "-b", "16")
    long = _printed_config(capsys, "--root", str(synth_root), "--set", "model=simplenet", "--set", "epochs=3",
                           "--set", "lr=0.05", "--set", "batch_size=16")
    assert short == long
    assert (short["model"], short["epochs"], short["lr"], short["batch_size"]) == ("simplenet", 3, 0.05, 16)


def test_print_config_is_resolved_and_writes_nothing(capsys: pytest.CaptureFixture[str], synth_root: Path,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "runs"
    printed = _printed_config(capsys, "--config", str(CONFIGS / "vit.yaml"), "--root", str(synth_root),
                              "--set", f"out_dir={out_dir}", "--name", "x")
    # Resolved: the model card's optimiser defaults are filled in, not left null.
    assert printed["lr"] is not None and printed["weight_decay"] is not None
    assert printed["out_dir"] == str(out_dir)
    assert list(tmp_path.iterdir()) == []


def test_fast_recipe_keeps_its_progressive_shape_under_one_override(synth_root: Path) -> None:
    def resolved(*overrides: str) -> tuple[int, int, int]:
        config = resolve(load_config(CONFIGS / "fast.yaml", [f"root={synth_root}", *overrides]))
        return config.progressive_start_size, config.progressive_start_epoch, config.progressive_end_epoch

    assert resolved() == (80, 0, 10)  # the file's own run: 5/8 of 128 px, one epoch past the last of 10
    assert resolved("epochs=20") == (80, 0, 20)
    assert resolved("image_size=64") == (40, 0, 10)
    assert resolved("image_size=64", "epochs=3") == (40, 0, 3)


def test_progressive_counts_stay_counts_and_bad_fractions_are_refused(synth_root: Path) -> None:
    base = [f"root={synth_root}", "model=simplenet", "epochs=10", "image_size=64"]
    config = resolve(load_config(None, [*base, "progressive_start_size=40", "progressive_end_epoch=7"]))
    assert (config.progressive_start_size, config.progressive_end_epoch) == (40, 7)
    with pytest.raises(ConfigError, match="progressive_start_size.*fraction"):
        resolve(load_config(None, [*base, "progressive_start_size=1.5"]))
    with pytest.raises(ConfigError, match="progressive_end_epoch.*fraction"):
        resolve(load_config(None, [*base, "progressive_end_epoch=2.0"]))


def test_dataset_errors_name_no_library_function(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(LayoutError) as caught:
        read_split(tmp_path / "absent", "train")
    assert not any(name in str(caught.value) for name in LIBRARY_NAMES)
    assert main(["verify", "--root", str(tmp_path / "absent")]) != 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert not any(name in text for name in LIBRARY_NAMES)


def test_cache_messages_name_the_side_and_the_size_before_building(synth_root: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="miniplaces.data.cache"):
        build_cache(synth_root, "val", 24, tmp_path / "cache", workers=0)
    building = [r.getMessage() for r in caplog.records if r.getMessage().startswith("building")]
    count = len(read_split(synth_root, "val"))
    assert len(building) == 1
    assert building[0].startswith(f"building the val cache: {count} images at 24 px, "
                                  f"{disk_size_text(count * 24 * 24 * 3)} on disk, in {tmp_path / 'cache'}")
    assert disk_size_text(1_900_000_000) == "1.9 GB" and disk_size_text(312_000_000) == "312 MB"


def test_attack_and_saliency_describe_their_own_outputs(capsys: pytest.CaptureFixture[str]) -> None:
    def help_of(command: str) -> str:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        return " ".join(capsys.readouterr().out.split())

    attack, saliency = help_of("attack"), help_of("saliency")
    assert "attack.json" in attack and "saliency_<method>.png" not in attack
    assert "saliency_<method>.png" in saliency and "attack.json" not in saliency
    seed_help = saliency.split("--seed SEED", 1)[1]
    assert "random start" not in seed_help.split("(default", 1)[0]
