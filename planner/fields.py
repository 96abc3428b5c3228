"""The one vocabulary of settings: each field says once what it is, and one checker reads it.

Owns `field_meta` (a dataclass field's help text, bounds, allowed values, whether it is secret) and
`first_bad_field` (the first field of a settings object whose value breaks its type or metadata, with
a message). Every settings class uses both: the planner's, the sampling settings, each model
context's and the remote roles'; the server's loader derives flags, environment names, `--help` and
its messages from the same metadata. So a bound is written once, and an error reads the same
whether it comes from a flag, a TOML file or a request.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import typing
from collections.abc import Sequence
from typing import Any


def field_meta(help: str, lo: float | None = None, hi: float | None = None, *, choices: Sequence[str] = (),
               secret: bool = False, lo_open: bool = False, hi_open: bool = False) -> dict[str, Any]:
    """A settings field's metadata: help text, numeric bounds (min, max; lo_open/hi_open exclude them),
    allowed values (choices; an enum field's default to all its values) and whether it is
    a secret (never printed)."""
    meta: dict[str, Any] = {"help": help}
    if lo is not None:
        meta["min"] = lo
    if hi is not None:
        meta["max"] = hi
    if lo_open:
        meta["min_open"] = True
    if hi_open:
        meta["max_open"] = True
    if choices:
        meta["choices"] = tuple(choices)
    if secret:
        meta["secret"] = True
    return meta


def bounds_text(meta: typing.Mapping[str, Any]) -> str:
    """"from 0 to 5", "in (0, 1]": how a field's bounds read in help and errors ("" without both)."""
    lo, hi = meta.get("min"), meta.get("max")
    if lo is None or hi is None:
        return ""
    if meta.get("min_open") or meta.get("max_open"):
        return f"in {'(' if meta.get('min_open') else '['}{_num(lo)}, {_num(hi)}{')' if meta.get('max_open') else ']'}"
    return f"from {_num(lo)} to {_num(hi)}"


def within(value: float, meta: typing.Mapping[str, Any]) -> bool:
    """Whether a finite number keeps the field's bounds."""
    lo, hi = meta.get("min"), meta.get("max")
    if not math.isfinite(value):
        return False
    if lo is not None and (value <= lo if meta.get("min_open") else value < lo):
        return False
    return hi is None or (value < hi if meta.get("max_open") else value <= hi)


def first_bad_field(settings: Any) -> tuple[str, str] | None:
    """(field name, "must be ... (got ...)") for the first field that breaks its type or metadata, or None.

    Checks every field that has metadata (see `fits`). Nested settings and fields without metadata are
    their owner's to check.
    """
    hints = _hints(type(settings))
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.metadata and not fits(hints[f.name], value, f.metadata):
            shown = "<hidden>" if f.metadata.get("secret") else repr(value)
            return f.name, f"must be {expected(hints[f.name], f.metadata)} (got {shown})"
    return None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def choices_of(kind: Any, meta: typing.Mapping[str, Any]) -> tuple[str, ...]:
    """The values a field may take: its metadata's choices, else an enum's values, else none (any)."""
    if meta.get("choices"):
        return tuple(meta["choices"])
    if _is_enum(kind):
        return tuple(str(e.value) for e in kind)
    return ()


def fits(kind: Any, value: Any, meta: typing.Mapping[str, Any]) -> bool:
    """Whether a value fits its field: an enum field holds a member of its enum among its choices, bool a
    bool, int an int (not a bool) and float a number within the bounds, str one of its choices when it
    has any. Other kinds (lists, nested settings) are their owner's to check."""
    if _is_enum(kind):
        return isinstance(value, kind) and str(value.value) in choices_of(kind, meta)
    if kind is bool:
        return isinstance(value, bool)
    if kind in (int, float):
        number = (int,) if kind is int else (int, float)
        return isinstance(value, number) and not isinstance(value, bool) and within(value, meta)
    if kind is str:
        choices = choices_of(kind, meta)
        return isinstance(value, str) and (not choices or value in choices)
    return True


def expected(kind: Any, meta: typing.Mapping[str, Any]) -> str:
    """What a field's value must be, as help and errors say it: "an integer from 1 to 8", "one of a, b"."""
    choices = choices_of(kind, meta)
    if choices:
        return "one of " + ", ".join(choices)
    if kind is bool:
        return "true or false"
    if kind in (int, float):
        return (("an integer " if kind is int else "a number ") + bounds_text(meta)).strip()
    return "a string"


def _is_enum(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, enum.Enum)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
