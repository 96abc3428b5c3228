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

    Checks every field that has metadata: an enum field holds a member of its enum, bool a bool, int an
    int (not a bool) and float a number within the bounds, str one of its choices when it has any.
    Nested settings and fields without metadata are their owner's to check.
    """
    hints = _hints(type(settings))
    for f in dataclasses.fields(settings):
        if not f.metadata:
            continue
        why = _why_bad(hints[f.name], getattr(settings, f.name), f.metadata)
        if why:
            shown = "<hidden>" if f.metadata.get("secret") else repr(getattr(settings, f.name))
            return f.name, f"must be {why} (got {shown})"
    return None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _why_bad(kind: Any, value: Any, meta: typing.Mapping[str, Any]) -> str:
    """What the value must be, when it is not; "" when it is fine."""
    span = bounds_text(meta)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        allowed = meta.get("choices") or tuple(str(e.value) for e in kind)
        return "" if isinstance(value, kind) and str(value.value) in allowed else "one of " + ", ".join(allowed)
    if kind is bool:
        return "" if isinstance(value, bool) else "true or false"
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and within(value, meta)
        return "" if ok else ("an integer " + span).strip()
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and within(value, meta)
        return "" if ok else ("a number " + span).strip()
    if kind is str:
        choices = meta.get("choices", ())
        if not isinstance(value, str):
            return "a string"
        return "one of " + ", ".join(choices) if choices and value not in choices else ""
    return ""


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
