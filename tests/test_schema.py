"""miniplaces.schema: a mapping checked against a dataclass's type hints and field metadata, and its callers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from miniplaces import schema
from miniplaces.records import RunFileError, read_metrics
from miniplaces.study import StudyDataError, load_seed


@dataclass(frozen=True)
class Inner:
    name: str = schema.key(check=bool)  # no words of its own: a problem is said as one of the mapping holding it
    size: int | None = schema.key(None, expected="an integer ≥ 1", minimum=1)


@dataclass(frozen=True)
class Outer:
    inner: Inner = schema.key(expected="a mapping with a 'name'")
    mode: Literal["a", "b"] = "a"
    rate: float = schema.key(0.5, minimum=0, maximum=1)
    tags: list[str] = schema.key(factory=list)
    extra: dict[str, Any] | None = None


def test_types_are_checked_as_declared_and_numbers_converted() -> None:
    assert schema.conforms(int, True) == (False, True)  # a bool is never a number
    assert schema.conforms(float, 3) == (True, 3.0) and isinstance(schema.conforms(float, 3)[1], float)
    assert schema.conforms(float | None, None) == (True, None)
    assert schema.conforms(Literal["x", "y"], "z")[0] is False
    assert schema.conforms(list[Literal["x"]], ["x", "x"]) == (True, ["x", "x"])
    assert schema.conforms(list[Literal["x"]], ["x", "y"])[0] is False
    assert schema.conforms(dict[str, Any], {1: "a"})[0] is False
    assert schema.conforms(dict, {1: "a"})[0] is True  # a bare dict says nothing of its keys
    assert schema.type_name(Literal["sgd", "adamw"] | None) == "'sgd' | 'adamw' | null"
    assert schema.type_name(list[int]) == "list of int"


def test_check_gives_values_with_defaults_or_the_first_problem() -> None:
    values, problem = schema.check(Outer, {"inner": {"name": "n", "other": 1}, "rate": 1, "unknown": 2})
    assert problem is None
    assert values == {"inner": {"name": "n", "other": 1}, "rate": 1.0}
    assert schema.build(Outer, {"inner": {"name": "n"}})[0] == Outer(inner={"name": "n"})  # type: ignore[arg-type]

    _, problem = schema.check(Outer, {"inner": {"name": "n"}, "mode": "c"})
    assert problem == schema.Problem("mode", "c", "'a' | 'b'", "type")
    _, problem = schema.check(Outer, {"inner": {"name": "n"}, "rate": 1.5})
    assert problem == schema.Problem("rate", 1.5, "a number from 0 to 1", "range")
    _, problem = schema.check(Outer, {})
    assert problem is not None and problem.missing and problem.key == "inner"


def test_a_nested_problem_is_named_by_its_own_key_only_when_it_has_words() -> None:
    _, problem = schema.check(Outer, {"inner": {"name": "n", "size": 0}})
    assert problem == schema.Problem("inner.size", 0, "an integer ≥ 1", "range")
    for inner in ({"name": ""}, {"size": 3}, {"name": 7}, "text"):  # empty name, none, not a string, no mapping
        _, problem = schema.check(Outer, {"inner": inner})
        assert problem is not None and (problem.key, problem.value) == ("inner", inner)
        assert problem.expected == "a mapping with a 'name'"


def test_a_metrics_row_out_of_its_bounds_is_refused_by_file_line_and_key(tmp_path: Path) -> None:
    row = {"epoch": 1, "train_loss": 2.0, "train_top1": 10.0, "train_top5": 50.0, "val_loss": 2.1, "val_top1": 12.5,
           "val_top5": 55.0, "lr": 0.1, "epoch_time_s": 3.0, "images_per_s": 100.0, "peak_memory_mb": 500.0,
           "peak_memory_kind": "cpu_max_rss"}
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "epoch": 2, "val_top1": 1250.0}) + "\n")
    with pytest.raises(RunFileError, match=r"metrics\.jsonl:2: key 'val_top1' must be a number from 0 to 100, "
                                           r"got 1250\.0"):
        read_metrics(path)
    path.write_text(json.dumps({**row, "lr": "0.1"}) + "\n")
    with pytest.raises(RunFileError, match=r"metrics\.jsonl:1: key 'lr' must be float, got '0\.1'"):
        read_metrics(path)
    path.write_text(json.dumps({**row, "train_loss": float("nan"), "lr": 1}) + "\n")
    (read,) = read_metrics(path)  # a diverged epoch's NaN loss is a row; an int rate is a float
    assert read.lr == 1.0 and isinstance(read.lr, float) and read.train_loss != read.train_loss


def test_the_study_data_keys_are_checked_by_kind(tmp_path: Path) -> None:
    import yaml

    seed = yaml.safe_load((Path(load_seed().path)).read_text(encoding="utf-8"))
    name = next(iter(seed["experiments"]))
    seed["experiments"][name]["top1"] = 43  # an int where a number is wanted: taken as a float
    path = tmp_path / "seed.yaml"
    path.write_text(yaml.safe_dump(seed))
    top1 = load_seed(path).experiments[name].top1
    assert top1 == 43.0 and isinstance(top1, float)
    seed["experiments"][name]["epochs"] = True
    path.write_text(yaml.safe_dump(seed))
    with pytest.raises(StudyDataError, match=rf"experiments\.{name}: key 'epochs' has the wrong kind of value: True"):
        load_seed(path)
    del seed["experiments"][name]["epochs"]
    path.write_text(yaml.safe_dump(seed))
    with pytest.raises(StudyDataError, match=rf"experiments\.{name}: key 'epochs' is missing"):
        load_seed(path)


def test_a_benchmark_option_of_the_wrong_type_is_refused_before_it_runs() -> None:
    from miniplaces.bench.registry import Benchmark, Option
    from miniplaces.errors import MiniPlacesError

    bench = Benchmark("toy", "nowhere", "a toy", (Option("size", 128, "side", minimum=8),
                                                  Option("limit", None, "cap", minimum=1),
                                                  Option("where", None, "folder", type=Path)))
    assert bench.resolve({"where": Path("x")}) == {"size": 128, "limit": None, "where": Path("x")}
    with pytest.raises(MiniPlacesError, match=r"benchmark 'toy': size is '64'; it must be int$"):
        bench.resolve({"size": "64"})
    with pytest.raises(MiniPlacesError, match=r"benchmark 'toy': limit is 0; it must be at least 1$"):
        bench.resolve({"limit": 0})


def test_a_study_data_file_that_names_a_key_twice_is_refused_with_its_lines(tmp_path: Path) -> None:
    text = Path(load_seed().path).read_text(encoding="utf-8")
    path = tmp_path / "seed.yaml"
    first = next(i for i, line in enumerate(text.splitlines()) if line[:1].isalpha())  # a top-level key
    path.write_text(text.rstrip("\n") + "\n" + text.splitlines()[first] + "\n", encoding="utf-8")
    with pytest.raises(StudyDataError, match=rf"appears twice \(lines {first + 1} and \d+\)"):
        load_seed(path)
