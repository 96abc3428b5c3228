"""The one settings checker: every settings class reads its bounds and choices from field metadata."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import pytest

from espalier.planner.engine import InvalidRequest, Sampling
from espalier.planner.fields import bounds_text, field_meta, first_bad_field


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"
    ANY = "any"


@dataclass(frozen=True)
class Knobs:
    count: int = field(default=1, metadata=field_meta("a count", 1, 8))
    share: float = field(default=0.5, metadata=field_meta("a share", 0, 1, hi_open=True))
    colour: Colour = field(default=Colour.RED, metadata=field_meta("a colour", choices=("red", "blue")))
    kind: str = field(default="a", metadata=field_meta("a kind", choices=("a", "b")))
    token: str = field(default="", metadata=field_meta("a secret", secret=True))
    flag: bool = field(default=False, metadata=field_meta("a flag"))
    free: object = None  # no metadata: its owner checks it


@pytest.mark.parametrize("changes, bad", [
    ({}, None),
    ({"count": 9}, ("count", "must be an integer from 1 to 8 (got 9)")),
    ({"count": True}, ("count", "must be an integer from 1 to 8 (got True)")),
    ({"share": 1.0}, ("share", "must be a number in [0, 1) (got 1.0)")),
    ({"share": float("nan")}, ("share", "must be a number in [0, 1) (got nan)")),
    ({"colour": Colour.ANY}, ("colour", "must be one of red, blue (got <Colour.ANY: 'any'>)")),
    ({"colour": "red"}, ("colour", "must be one of red, blue (got 'red')")),  # the text is not the enum
    ({"kind": "c"}, ("kind", "must be one of a, b (got 'c')")),
    ({"token": 5}, ("token", "must be a string (got <hidden>)")),
    ({"flag": 1}, ("flag", "must be true or false (got 1)")),
    ({"free": "anything"}, None),
])
def test_the_first_bad_field_and_what_it_must_be(changes: dict, bad: tuple[str, str] | None) -> None:
    assert first_bad_field(Knobs(**changes)) == bad


def test_bounds_read_the_same_in_help_and_errors() -> None:
    assert bounds_text(field_meta("x", 0, 5)) == "from 0 to 5"
    assert bounds_text(field_meta("x", 0, 1, lo_open=True)) == "in (0, 1]"
    assert bounds_text(field_meta("x", 0.5, 2)) == "from 0.5 to 2"
    assert bounds_text(field_meta("x")) == ""


def test_sampling_bounds_are_its_own_metadata() -> None:
    with pytest.raises(InvalidRequest, match=r"sampling.top_p must be a number in \(0, 1\] \(got 0.0\)") as exc:
        Sampling(top_p=0.0).validate()
    assert exc.value.field == "sampling.top_p"
    with pytest.raises(InvalidRequest, match="sampling.min_tokens must not exceed max_tokens") as exc:
        Sampling(max_tokens=4, min_tokens=5).validate()
    with pytest.raises(InvalidRequest, match="sampling.stop must be at most 16 strings"):
        Sampling(stop=("",)).validate()
    Sampling(temperature=5.0, top_p=1.0, min_p=0.0, seed=2**32 - 1).validate()
