"""The study's data: the seed's published numbers and the scales the study runs at, read from YAML files.

`seed_results.yaml` (the seed's accuracies, its attack and the unfold convolution's time/memory ratios)
and `scales.yaml` (per scale: config keys on top of `configs/`, eval/attack caps, torch threads) ship
with the package; both readers take another path, so a changed copy can be read instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from miniplaces import schema
from miniplaces.config import load_yaml
from miniplaces.errors import MiniPlacesError
from miniplaces.pixels import parse_eps

SEED_FILE = Path(__file__).with_name("seed_results.yaml")
SCALES_FILE = Path(__file__).with_name("scales.yaml")


class StudyDataError(MiniPlacesError):
    """A study data file is missing a key or holds a value of the wrong kind."""


@dataclass(frozen=True)
class SeedRatios:
    """The experiment against `baseline` on the seed's device: time and memory as multiples of the baseline's."""

    baseline: str
    time: float | None = None
    memory: float | None = None


@dataclass(frozen=True)
class SeedExperiment:
    """One experiment's published val accuracies (percent); None where the seed has no number."""

    name: str
    epochs: int
    top1: float
    top5: float
    adv_top1: float | None = None
    ratios: SeedRatios | None = None


@dataclass(frozen=True)
class SeedAttack:
    mode: str
    eps: float
    steps: int


@dataclass(frozen=True)
class SeedResults:
    """`seed_results.yaml`, read: the experiments in the file's order."""

    train_images: int
    val_images: int
    image_size: int
    device: str
    attack: SeedAttack
    experiments: dict[str, SeedExperiment]
    path: Path


@dataclass(frozen=True)
class Scale:
    """One scale of the study (`scales.yaml`): config keys for every experiment and for each one, and caps.

    `include` names the experiments the scale trains (empty: the seed's); `compare_with` maps an experiment
    the seed did not run to the seed experiment its numbers are compared with (the fast recipe → SimpleNet).
    """

    name: str
    description: str
    config: dict[str, Any] = field(default_factory=dict)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    eval_images: int | None = None
    attack_images: int | None = None
    saliency_images: int = 16
    threads: int | None = None
    include: tuple[str, ...] = ()
    compare_with: dict[str, str] = field(default_factory=dict)

    def names(self, seed: SeedResults) -> list[str]:
        """The experiments this scale trains: its `include` list, else every experiment of the seed."""
        return list(self.include) if self.include else list(seed.experiments)

    def config_for(self, experiment: str) -> dict[str, Any]:
        """The keys this scale sets on `configs/<experiment>.yaml`."""
        return {**self.config, **self.experiments.get(experiment, {})}


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        data = load_yaml(Path(path).read_text(encoding="utf-8"))  # a key given twice is refused, with its lines
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise StudyDataError(f"cannot read study data file {path}: {err}") from err
    if not isinstance(data, dict):
        raise StudyDataError(f"{path}: expected a mapping at the top")
    return data


def _get(data: dict[str, Any], key: str, kind: Any, where: str, default: Any = ...) -> Any:
    """Key `key` of `data` as type `kind` (`float` takes an int; a bool is no number), `default` when absent or null."""
    if key not in data or data[key] is None:
        if default is ...:
            raise StudyDataError(f"{where}: key {key!r} is missing")
        return default
    value, problem = schema.check_value(kind, data[key], key)
    if problem is not None:
        raise StudyDataError(f"{where}: key {key!r} has the wrong kind of value: {data[key]!r}")
    return value


def _number(data: dict[str, Any], key: str, where: str, default: Any = ...) -> Any:
    return _get(data, key, float, where, default)


def load_seed(path: Path | str | None = None) -> SeedResults:
    """Read the seed's results (default: the packaged `seed_results.yaml`)."""
    path = Path(path) if path is not None else SEED_FILE
    data = _read_mapping(path)
    scale = _get(data, "scale", dict, str(path))
    attack = _get(data, "attack", dict, str(path))
    try:
        eps = parse_eps(_get(attack, "eps", str | float, f"{path}: attack"))
    except MiniPlacesError as err:
        raise StudyDataError(f"{path}: attack: {err}") from None
    experiments = {}
    for name, entry in _get(data, "experiments", dict, str(path)).items():
        where = f"{path}: experiments.{name}"
        if not isinstance(entry, dict):
            raise StudyDataError(f"{where}: expected a mapping")
        ratios = _get(entry, "ratios", dict, where, None)
        experiments[str(name)] = SeedExperiment(
            name=str(name), epochs=_get(entry, "epochs", int, where), top1=_number(entry, "top1", where),
            top5=_number(entry, "top5", where), adv_top1=_number(entry, "adv_top1", where, None),
            ratios=None if ratios is None else SeedRatios(
                baseline=_get(ratios, "baseline", str, f"{where}.ratios"),
                time=_number(ratios, "time", f"{where}.ratios", None),
                memory=_number(ratios, "memory", f"{where}.ratios", None)),
        )
    return SeedResults(
        train_images=_get(scale, "train_images", int, f"{path}: scale"),
        val_images=_get(scale, "val_images", int, f"{path}: scale"),
        image_size=_get(scale, "image_size", int, f"{path}: scale"),
        device=_get(scale, "device", str, f"{path}: scale"),
        attack=SeedAttack(mode=_get(attack, "mode", str, f"{path}: attack"), eps=eps,
                          steps=_get(attack, "steps", int, f"{path}: attack")),
        experiments=experiments, path=path,
    )


def load_scales(path: Path | str | None = None) -> dict[str, Scale]:
    """Read the study's scales (default: the packaged `scales.yaml`), by name."""
    path = Path(path) if path is not None else SCALES_FILE
    scales = {}
    for name, entry in _read_mapping(path).items():
        where = f"{path}: {name}"
        if not isinstance(entry, dict):
            raise StudyDataError(f"{where}: expected a mapping")
        experiments = _get(entry, "experiments", dict, where, {})
        for experiment, keys in experiments.items():
            if not isinstance(keys, dict):
                raise StudyDataError(f"{where}: experiments.{experiment}: expected a mapping of config keys")
        include = _get(entry, "include", list, where, [])
        compare_with = _get(entry, "compare_with", dict, where, {})
        if not all(isinstance(name, str) for name in (*include, *compare_with, *compare_with.values())):
            raise StudyDataError(f"{where}: include and compare_with hold experiment names")
        scales[str(name)] = Scale(
            name=str(name), description=_get(entry, "description", str, where, ""),
            config=dict(_get(entry, "config", dict, where, {})),
            experiments={str(k): dict(v) for k, v in experiments.items()},
            eval_images=_get(entry, "eval_images", int, where, None),
            attack_images=_get(entry, "attack_images", int, where, None),
            saliency_images=_get(entry, "saliency_images", int, where, 16),
            threads=_get(entry, "threads", int, where, None),
            include=tuple(include), compare_with=dict(compare_with),
        )
    return scales
