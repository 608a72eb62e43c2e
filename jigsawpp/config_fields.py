"""Strict overrides for the project's frozen config dataclasses (the protocols' Fast R-CNN, VOC classification, FCN
and probe configs; the model, puzzle, pretext and transfer configs).

As fast-rcnn's ``_merge_a_into_b`` (rbgirshick/fast-rcnn@b612190 ``lib/fast_rcnn/config.py``): an unknown key is an
error naming it and listing the valid ones, and every value must have its field's type. JSON (``--set key=value``,
a saved ``config.json``) gives lists where a field wants a tuple and ints where it wants a float; those, and only
those, are converted.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

__all__ = ["ConfigKeyError", "check_types", "coerce", "config_from_dict", "config_to_dict", "matches", "refuse_unknown"]

C = TypeVar("C")


class ConfigKeyError(KeyError, ValueError):
    """An unknown config key. Both a KeyError and a ValueError (callers catch either); prints unquoted."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def refuse_unknown(cls: type, values: Mapping[str, Any], *, what: str) -> None:
    """Raise ConfigKeyError naming the keys of `values` that are not fields of the dataclass `cls`, and the valid
    ones (``what``: how the message names the keys, e.g. "HOG option(s)")."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigKeyError(f"unknown {what} {unknown}; known: {', '.join(sorted(known))}.")


def coerce(value: Any, hint: Any) -> Any:
    """JSON gives lists and ints where the dataclass wants tuples and floats; convert only those."""
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list):
        value = tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if origin is tuple and isinstance(value, tuple):
        args = typing.get_args(hint)
        inner = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if inner is float or float in args:
            value = tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
    return value


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type ``hint`` (Literal, unions, tuples, None, exact int/float/bool)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, h) for h in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(matches(v, a) for v, a in zip(value, args))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, float)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def check_types(cfg: Any) -> None:
    """Raise TypeError naming the first field of the dataclass ``cfg`` whose value does not have its type."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not matches(value, hints[f.name]):
            raise TypeError(f"{type(cfg).__name__}.{f.name} = {value!r} does not have the type {hints[f.name]}.")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-ready fields (tuples as lists)."""
    return {f.name: (list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v) for f in dataclasses.fields(cfg)}


def config_from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
    """``cls(**values)`` after refusing unknown keys (ConfigKeyError naming them and the valid ones) and coercing
    JSON."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigKeyError(f"{cls.__name__}: unknown key(s) {unknown}; valid keys are: {', '.join(sorted(known))}.")
    hints = typing.get_type_hints(cls)
    return cls(**{k: coerce(v, hints[k]) for k, v in values.items()})
