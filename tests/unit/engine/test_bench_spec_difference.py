"""bench spec names where speculated output first departs from plain decoding (round, sequence, text)."""

from __future__ import annotations

from collections import Counter

from espalier.service.engine.bench_spec import _Run, first_difference


def run(*texts: str) -> _Run:
    return _Run(seconds=1.0, tokens=10, texts=list(texts), drafted=0, accepted=0, ks=Counter())


def test_identical_runs_have_no_difference() -> None:
    assert first_difference([run("a b", "c d")] * 2, [run("a b", "c d")] * 2) is None


def test_the_first_differing_round_sequence_and_offset_are_named() -> None:
    plain = [run("The sky is blue.", "Two"), run("The sky is blue.", "Two")]
    spec = [run("The sky is blue.", "Two"), run("The sky is grey.", "Two")]
    assert first_difference(plain, spec) == {"round": 1, "sequence": 0, "offset": 11, "common": "The sky is ",
                                             "expected": "blue.", "got": "grey."}


def test_a_text_cut_short_differs_where_it_ends() -> None:
    d = first_difference([run("abcdef")], [run("abc")])
    assert d is not None and d["offset"] == 3 and d["expected"] == "def" and d["got"] == ""
