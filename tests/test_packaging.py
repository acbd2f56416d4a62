"""The package declares torch/torchvision as ranges, so `pip install` keeps a user's own torch; its wheel carries
what the commands read (the presets), so an installed copy runs outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import torchvision

from miniplaces.cli import main
from miniplaces.config import load_config
from miniplaces.errors import MiniPlacesError
from miniplaces.presets import config_file, preset_names, preset_path, presets_dir

packaging = pytest.importorskip("packaging.requirements")
from packaging.requirements import Requirement  # noqa: E402
from packaging.version import Version  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {Requirement(r).name: Requirement(r) for r in project["dependencies"]}


@pytest.mark.parametrize("name", ["torch", "torchvision"])
def test_torch_is_a_range_with_a_lower_bound_and_no_pin(name):
    spec = requirements()[name].specifier
    operators = {s.operator for s in spec}
    assert ">=" in operators, f"{name} needs the lowest tested version as a lower bound"
    assert "==" not in operators and "~=" not in operators and "<" not in operators and "<=" not in operators, (
        f"{name} must not be pinned or capped: pip would replace the user's own build"
    )
    # Versions far above today's release are admitted; a version below the floor is not.
    assert spec.contains("99.0")
    floor = Version(next(s.version for s in spec if s.operator == ">="))
    assert not spec.contains(f"{floor.major - 1}.0")


@pytest.mark.parametrize("module", [torch, torchvision])
def test_the_running_torch_is_admitted(module):
    version = module.__version__.split("+")[0]  # local tags like +cpu or +cu121 are not part of the range
    assert requirements()[module.__name__].specifier.contains(version)


def test_ci_pins_what_the_package_leaves_open():
    pins = {}
    for line in (ROOT / ".ci" / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins[req.name.lower()] = req
    for name in ("torch", "torchvision"):
        assert [s.operator for s in pins[name].specifier] == ["=="], f".ci/constraints.txt must pin {name} exactly"


def test_the_presets_are_package_data_and_the_checkout_links_to_them() -> None:
    assert presets_dir() == ROOT / "src" / "miniplaces" / "configs"
    assert (ROOT / "configs").resolve() == presets_dir().resolve()
    assert preset_names() == sorted(["fast", "msvit", "resnet18", "simplenet", "simplenet_unfold", "vit"])
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert "configs/*.yaml" in package_data["package-data"]["miniplaces"]


def test_a_config_argument_is_a_file_or_a_preset_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert config_file("fast") == preset_path("fast") and load_config(config_file("fast")).model == "fastnet"
    Path("fast").write_text("model: vit\n", encoding="utf-8")
    assert config_file("fast") == Path("fast")  # a file of that name wins over the preset
    assert config_file("mine.yaml") == Path("mine.yaml")  # a path is left for the reader to report
    with pytest.raises(MiniPlacesError, match=r"'fastt' is neither a file nor a packaged preset.*fast, msvit"):
        config_file("fastt")
    # The README's `configs/simplenet.yaml` outside a checkout: the error names the preset to use instead.
    with pytest.raises(MiniPlacesError, match=r"config file configs/simplenet.yaml does not exist here; "
                                              r"'simplenet' is a packaged preset: use --config simplenet"):
        config_file("configs/simplenet.yaml")
    Path("configs").mkdir()
    Path("configs/simplenet.yaml").write_text("model: vit\n", encoding="utf-8")
    assert config_file("configs/simplenet.yaml") == Path("configs/simplenet.yaml")  # the user's own file


def test_train_names_an_unknown_preset_in_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--config", "fastt", "--root", str(tmp_path), "--name", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: config 'fastt' is neither") and "Traceback" not in err


def _ok(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_the_wheel_runs_the_study_and_bench_recipes_outside_the_checkout(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    # Built from a copy of what the wheel is made of, so that the build's own folders stay out of the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _ok([*pip, "wheel", ".", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheels")], cwd=source)
    (wheel,) = (tmp_path / "wheels").glob("miniplaces-*.whl")
    site = tmp_path / "site"
    _ok([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], cwd=tmp_path)
    shutil.rmtree(source)  # nothing but the installed wheel can be imported now

    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "TORCH_HOME": str(tmp_path / "torch_home")}
    located = _ok([sys.executable, "-c", "import miniplaces; print(miniplaces.__file__)"], work, env).strip()
    assert Path(located).resolve().is_relative_to(site.resolve()), located
    assert not (work / "configs").exists()  # the presets can only come from the package

    def miniplaces(*args: str) -> str:
        return _ok([sys.executable, "-m", "miniplaces", *args], work, env)

    # 128 training images: one batch of the mini scale's 128
    miniplaces("synth", "--root", "data", "--classes", "4", "--per-class", "32", "--val-per-class", "4",
               "--image-size", "32")
    printed = miniplaces("study", "--root", "data", "--out", "study", "--scale", "mini", "--experiments",
                         "simplenet_unfold", "--device", "cpu")
    assert "simplenet_unfold train: ran" in printed, printed
    assert "simplenet_unfold" in (work / "study" / "report" / "results.md").read_text(encoding="utf-8")
    printed = miniplaces("bench", "recipes", "--quick", "--device", "cpu", "--threads", "1", "--out", "bench")
    assert (work / "bench" / "recipes.json").is_file() and "| fast" in printed, printed
    # Each recipe ran at its own precision, whatever `amp: auto` picks on this machine.
    recipes = json.loads((work / "bench" / "recipes.json").read_text(encoding="utf-8"))["rows"]
    assert [row["recipe"] for row in recipes] == ["simplenet (study) float32", "fast float32 (EMA)",
                                                  "fast bf16 (EMA)"]
