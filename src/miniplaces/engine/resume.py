"""Resuming a run: which checkpoint a run folder resumes from, and what a resume may change.

`check_resume` refuses a resolved config that contradicts the checkpoint it would continue: only the
keys of `RESUME_MAY_CHANGE` may differ, since the others (model, data size, optimiser, seed, …) would
silently train something else than the run says it is. It runs before anything is written.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from miniplaces.config import ConfigError, TrainConfig, config_from_dict, resolve
from miniplaces.data import read_categories
from miniplaces.engine.checkpoint import CheckpointError, load_checkpoint
from miniplaces.engine.state import TrainState
from miniplaces.rundir import RunDir

# What a resume may change; every other key must equal the checkpoint's (see `check_resume`).
RESUME_MAY_CHANGE: dict[str, str] = {
    "epochs": "more epochs (never fewer than done); the cosine schedule of the remaining steps follows it",
    "device": "where the run continues",
    "workers": "loader processes",
    "log_every": "steps between progress updates",
    "limit_val_batches": "how much of the val split each epoch evaluates",
    "tta": "test-time augmentation of the per-epoch validation",
    "log_to": "where the numbers go from here on; MLflow and W&B continue their run of the same folder",
    "root": "the dataset folder, if its categories are the checkpoint's",
    "name": "ignored: a resumed run stays in the folder of its checkpoint",
    "out_dir": "ignored: a resumed run stays in the folder of its checkpoint",
}


def checkpoint_of(run_or_checkpoint: Path | str) -> Path:
    """`runs/<name>` → `runs/<name>/checkpoints/last.pt`; a file stays itself."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        path = RunDir(path).last
    if not path.is_file():
        hint = ""
        if path == RunDir.of_checkpoint(path).last and path.parent.parent.is_dir():
            hint = ("; the run stopped before its first checkpoint, so start it again with the same name "
                    "instead of resuming it")
        raise CheckpointError(f"nothing to resume: {path} does not exist{hint}")
    return path


def resume_config(run_or_checkpoint: Path | str) -> TrainConfig:
    """The config a checkpoint was trained with (settings given at resume are applied on top by the caller)."""
    path = checkpoint_of(run_or_checkpoint)
    return saved_config(load_checkpoint(path), path)


def open_resume(config: TrainConfig, run_or_checkpoint: Path | str) -> tuple[TrainConfig, dict[str, Any], RunDir]:
    """The checkpoint `config` continues (checked by `check_resume`), its run folder, and `config` pointed at it."""
    path = checkpoint_of(run_or_checkpoint)
    checkpoint, run = load_checkpoint(path), RunDir.of_checkpoint(path)
    check_resume(config, checkpoint, path)
    return dataclasses.replace(config, out_dir=str(run.path.parent), name=run.name), checkpoint, run


def resume_state(state: TrainState, checkpoint: dict[str, Any]) -> None:
    """Load `checkpoint` (checked by `check_resume`) into `state`, or say why its training state does not fit."""
    try:
        state.load_state_dict(checkpoint)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
        # `check_resume` checked the keys' types; what is left is a state that does not fit (another optimiser).
        raise CheckpointError(f"the checkpoint's training state does not fit this run "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                              "resume from another checkpoint") from err


def saved_config(checkpoint: dict[str, Any], path: Path) -> TrainConfig:
    """The checkpoint's training config, checked as a config file's would be."""
    if not isinstance(checkpoint.get("config"), dict):
        raise CheckpointError(f"{path} holds no training config, so it cannot be resumed")
    return config_from_dict(checkpoint["config"], where=f"{path} (config)")


def check_resume(config: TrainConfig, checkpoint: dict[str, Any], path: Path) -> None:
    """Refuse to continue `checkpoint` (at `path`) with a resolved `config` that contradicts it.

    Only the keys of `RESUME_MAY_CHANGE` may differ from the checkpoint's config: the others
    (model, data size, optimiser, seed, …) would silently train something else than the run
    says it is. Nothing is written before this check.
    """
    problem = _training_state_problem(checkpoint)
    if problem is not None:
        raise CheckpointError(f"{path} cannot be resumed: {problem}; resume from another checkpoint, or start "
                              "a new run from its weights")
    saved = resolve(saved_config(checkpoint, path))
    changed = [f"{key} {getattr(saved, key)!r} → {getattr(config, key)!r}" for key in _keys()
               if key not in RESUME_MAY_CHANGE and getattr(config, key) != getattr(saved, key)]
    spec = checkpoint["model"]
    if spec["name"] != config.model and not any(c.startswith("model ") for c in changed):
        changed.insert(0, f"model {spec['name']!r} → {config.model!r}")
    if changed:
        raise ConfigError(f"cannot resume {path} with other settings than it was trained with: "
                          f"{'; '.join(changed)}. Only {', '.join(RESUME_MAY_CHANGE)} may change on resume; "
                          "start a new run (another name) to change the rest")
    done = int(checkpoint.get("epoch") or 0) + (1 if checkpoint.get("step_in_epoch") else 0)
    if config.epochs < done:
        raise ConfigError(f"cannot resume {path} with epochs={config.epochs}: it has already trained "
                          f"{done} epoch(s); give epochs ≥ {done}")
    saved_categories = list(checkpoint.get("categories") or [])
    categories = read_categories(config.root)
    if saved_categories and categories != saved_categories:
        differ = next((i for i, (a, b) in enumerate(zip(saved_categories, categories, strict=False)) if a != b),
                      min(len(saved_categories), len(categories)))
        raise ConfigError(f"cannot resume {path} on {config.root}: its categories differ from the checkpoint's "
                          f"(class {differ}: {_at(categories, differ)} instead of {_at(saved_categories, differ)}); "
                          "resume on the dataset the run was trained on")


def _training_state_problem(checkpoint: dict[str, Any]) -> str | None:
    """What is missing or of the wrong type among the keys only a resume reads (see `TrainState`)."""
    for key in ("optimizer", "scheduler"):
        if not isinstance(checkpoint.get(key), dict):
            return f"key {key!r} must be a mapping, got {type(checkpoint.get(key)).__name__}"
    if not isinstance(checkpoint.get("epoch"), int):
        return "key 'epoch' is missing"
    if not isinstance(checkpoint.get("best_top1"), (int, float)):
        return f"key 'best_top1' must be a number, got {type(checkpoint.get('best_top1')).__name__}"
    rng = checkpoint.get("rng")
    if not isinstance(rng, list) or not rng or not all(isinstance(r, dict) for r in rng):
        return "key 'rng' must be a list of random states, one per process"
    sums = checkpoint.get("epoch_sums")
    if sums is not None and not (isinstance(sums, list) and all(isinstance(v, (int, float)) for v in sums)):
        return "key 'epoch_sums' must be a list of numbers or null"
    return None


def _keys() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _at(items: list[str], index: int) -> str:
    return repr(items[index]) if index < len(items) else "nothing"
