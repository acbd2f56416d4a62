"""A mapping checked against a dataclass: its type hints say what each key holds, its field metadata the range.

The config, the run folder's records, a checkpoint's structure, an export's `config.json`, a benchmark's
options and the study's data files are all checked here; each caller words its own error from the `Problem`
this module finds, so every message names its file and says what to do.

```
@dataclass
class Spec:
    steps: int = key(10, minimum=1, help="PGD steps")
    mode: Literal["a", "b"] = "a"
    model: Model = key(expected="a mapping with a model 'name'")  # a nested mapping, checked key by key

values, problem = check(Spec, data)  # the values converted (an int where a float is wanted: a float)
```

The types understood: bool, int, float (an int is taken), str, None, `Literal[...]`, `X | Y`, `list[X]`,
`dict[K, V]`, `Any`, a dataclass (an instance, or a nested mapping checked key by key and kept a mapping, its
unknown keys with it) and any other class (by `isinstance`). A bool is never taken as a number.

Field metadata (`key(...)` sets it): `help` (what the key sets), `expected` (the words an error uses for what
the key must hold; without it, the type's name: `int`, `'sgd' | 'adamw' | null`), `minimum` and `maximum`
(inclusive bounds of a number), `check` (a predicate the value must also pass: a non-empty name, say).
A problem inside a nested dataclass is reported at its own dotted key (`model.kwargs`) when that field has
`expected` words, else at the key of the mapping that holds it, with that mapping's words.

This module imports only the standard library.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # the value of a key the mapping does not hold


@dataclass(frozen=True)
class Problem:
    """What is wrong with one key: it is `missing`, or its value is of the wrong type or out of `range`.

    `key` is dotted for a nested mapping (`model.kwargs.num_classes`); `expected` is what it must hold, in the
    field's `expected` words (or its type's name), or for a number out of range `an integer ≥ 0`,
    `a number from 0 to 1`.
    """

    key: str
    value: Any
    expected: str
    kind: Literal["missing", "type", "range"]

    @property
    def missing(self) -> bool:
        return self.kind == "missing"


def key(default: Any = MISSING, *, factory: Callable[[], Any] | None = None, help: str = "",
        expected: str | None = None, minimum: float | None = None, maximum: float | None = None,
        check: Callable[[Any], bool] | None = None) -> Any:
    """A dataclass field with what `check` reads beside it: its help, words, bounds and predicate."""
    metadata = {"help": help, "expected": expected, "minimum": minimum, "maximum": maximum, "check": check}
    metadata = {name: value for name, value in metadata.items() if value is not None and value != ""}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    if default is MISSING:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """The type hints of a dataclass's fields, by name."""
    return typing.get_type_hints(cls)


def type_name(tp: Any) -> str:
    """The type as an error shows it: `int`, `'sgd' | 'adamw' | null`, `list of str`, `mapping`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(tp))
    if origin is dict or dataclasses.is_dataclass(tp):
        return "mapping"
    if origin is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def accepts(tp: Any, kind: type) -> bool:
    """Whether `tp` is `kind` or a union that admits it (`float | None` accepts float)."""
    if tp is kind:
        return True
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and kind in typing.get_args(tp)


def conforms(tp: Any, value: Any) -> tuple[bool, Any]:
    """Whether `value` fits type `tp`, and the value converted (an int → float where a float is wanted)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, converted = conforms(arg, value)
            if ok:
                return True, converted
        return False, value
    if origin is Literal:
        return value in typing.get_args(tp), value
    if origin is dict or tp is dict:
        key_type, value_type = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            return False, value
        pairs = [(conforms(key_type, k), conforms(value_type, v)) for k, v in value.items()]
        ok = all(k[0] and v[0] for k, v in pairs)
        return ok, {k[1]: v[1] for k, v in pairs} if ok else value
    if origin is list or tp is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            return False, value
        items = [conforms(item, v) for v in value]
        ok = all(fits for fits, _ in items)
        return ok, [v for _, v in items] if ok else value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if dataclasses.is_dataclass(tp) and not isinstance(value, tp):  # type: ignore[arg-type]
        return isinstance(value, dict) and all(isinstance(k, str) for k in value), value
    return isinstance(value, tp), value


def range_words(tp: Any, minimum: float | None, maximum: float | None) -> str:
    """`an integer from 1 to 100000`, `a number ≥ 0`: what a number out of its bounds must be."""
    noun = "an integer" if accepts(tp, int) and not accepts(tp, float) else "a number"
    low, high = (f"{bound:g}" if isinstance(bound, float) else f"{bound}" for bound in (minimum, maximum))
    if minimum is not None and maximum is not None:
        return f"{noun} from {low} to {high}"
    return f"{noun} ≥ {low}" if minimum is not None else f"{noun} ≤ {high}"


def check_value(tp: Any, value: Any, name: str, metadata: Mapping[str, Any] | None = None
                ) -> tuple[Any, Problem | None]:
    """`value` as key `name` of type `tp` with `metadata` (see `key`): converted, or the problem with it."""
    metadata = metadata or {}
    words = metadata.get("expected")
    if value is MISSING:
        return value, Problem(name, value, words or type_name(tp), "missing")
    ok, converted = conforms(tp, value)
    if not ok:
        return value, Problem(name, value, words or type_name(tp), "type")
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        converted, inner, worded = _check_fields(tp, value, f"{name}.")  # type: ignore[arg-type]
        if inner is not None and not worded:  # the nested key has no words of its own: say the mapping's
            return value, Problem(name, value, words or type_name(tp), inner.kind)
        return (value, inner) if inner is not None else ({**value, **converted}, None)
    minimum, maximum = metadata.get("minimum"), metadata.get("maximum")
    if isinstance(converted, (int, float)) and not isinstance(converted, bool) and (
            (minimum is not None and converted < minimum) or (maximum is not None and converted > maximum)):
        return value, Problem(name, value, range_words(tp, minimum, maximum), "range")
    test = metadata.get("check")
    if test is not None and converted is not None and not test(converted):
        return value, Problem(name, value, words or type_name(tp), "type")
    return converted, None


def check_key(cls: type, name: str, value: Any, *, shown: str | None = None) -> tuple[Any, Problem | None]:
    """`value` checked as field `name` of dataclass `cls` (`shown`: the key the problem names, default `name`)."""
    found = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return check_value(hints(cls)[name], value, shown or name, found[name].metadata)


def check(cls: type, data: Mapping[str, Any], *, prefix: str = "") -> tuple[dict[str, Any], Problem | None]:
    """The fields of dataclass `cls` read from `data` and converted (a key it does not hold: the field's default),
    or the first problem in field order. Keys of `data` that are not fields are left out."""
    values, problem, _ = _check_fields(cls, data, prefix)
    return values, problem


def _check_fields(cls: type, data: Mapping[str, Any], prefix: str) -> tuple[dict[str, Any], Problem | None, bool]:
    """`check`, and whether the field with the problem has `expected` words of its own."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data and (f.default is not dataclasses.MISSING
                                   or f.default_factory is not dataclasses.MISSING):
            continue
        value, problem = check_value(hints(cls)[f.name], data.get(f.name, MISSING), prefix + f.name, f.metadata)
        if problem is not None:
            return values, problem, "expected" in f.metadata
        values[f.name] = value
    return values, None, False


T = typing.TypeVar("T")


def build(cls: type[T], data: Mapping[str, Any]) -> tuple[T | None, Problem | None]:
    """`cls(**values)` from `check(cls, data)`, or the first problem."""
    values, problem = check(cls, data)
    return (None, problem) if problem is not None else (cls(**values), None)
