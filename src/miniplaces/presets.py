"""The packaged presets: `miniplaces/configs/<name>.yaml`, one per experiment of the study plus the fast recipe.

They ship inside the package (package data), so a wheel installed anywhere finds them through
`importlib.resources`; a source checkout's top-level `configs/` is a link to the same folder.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from miniplaces.errors import MiniPlacesError


def presets_dir() -> Path:
    """The folder of the packaged presets."""
    # An installed wheel or a checkout is a plain folder; a zipped package would need `resources.as_file`.
    return Path(str(resources.files("miniplaces") / "configs"))


def preset_names() -> list[str]:
    """The names of the packaged presets, sorted (`fast`, `msvit`, …)."""
    return sorted(path.stem for path in presets_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of the packaged preset `name`."""
    path = presets_dir() / f"{name}.yaml"
    if not path.is_file():
        raise MiniPlacesError(f"no packaged preset {name!r}; the presets are {', '.join(preset_names())}")
    return path


def config_file(text: str) -> Path:
    """A config argument as a file: `text` itself when it is a file, else the packaged preset of that name.

    A name (`fast`) only means a preset when no file of that name exists here, so a user's own file wins.
    """
    path = Path(text)
    if not path.exists() and path.suffix in (".yaml", ".yml") and (presets_dir() / f"{path.stem}.yaml").is_file():
        # `configs/fast.yaml` typed outside a checkout (a wheel has no configs/ folder): name the preset.
        raise MiniPlacesError(f"config file {text} does not exist here; {path.stem!r} is a packaged preset: "
                              f"use --config {path.stem}")
    if path.is_file() or path.suffix or len(path.parts) > 1:
        return path  # a path: reading it reports what is wrong with it
    if (presets_dir() / f"{text}.yaml").is_file():
        return preset_path(text)
    raise MiniPlacesError(f"config {text!r} is neither a file nor a packaged preset; give a YAML file or one of "
                          f"{', '.join(preset_names())}")
