"""The streaming benchmark's multiple-choice set: the packaged file's shape, loading errors, grading."""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from planner.sentences import split_sentences
from service.bench import stream_set
from service.bench.stream_set import MCItem, MCSetError, answer_letter, grade, load_mc

ROOT = Path(__file__).resolve().parents[3]
GOOD_PROMPT = "Ann has two cats. How many cats does Ann have?\nA) 1\nB) 2\nC) 3\nD) 4\nAnswer with the letter only."


def test_packaged_set_loads_with_answers_spread_over_the_letters() -> None:
    items = load_mc()
    assert len(items) == 12
    assert load_mc(ROOT / "service/bench/data/stream_mc.jsonl") == items
    counts = Counter(item.answer for item in items)
    assert set(counts) == set("ABCD") and min(counts.values()) >= 2, counts


def test_packaged_prompts_have_6_to_14_sentences_then_four_options_and_the_instruction() -> None:
    # The sentence count is over the passage and the question: split_sentences makes each option line
    # and the closing instruction a segment of its own, and those five are not counted.
    for item in load_mc():
        segments = split_sentences(item.prompt)
        assert segments[-1] == "\nAnswer with the letter only.", item.id
        options = segments[-5:-1]
        assert [s[:4] for s in options] == ["\nA) ", "\nB) ", "\nC) ", "\nD) "], (item.id, options)
        assert all("\n" not in s[1:] for s in options), item.id
        assert 6 <= len(segments) - 5 <= 14, (item.id, len(segments) - 5)


def test_the_data_file_is_packaged() -> None:
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    globs = package_data["service.bench"]
    assert any(Path(stream_set.PACKAGED).match(g) for g in globs)


def write(tmp_path: Path, *lines: object) -> Path:
    p = tmp_path / "mc.jsonl"
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return p


def test_load_reads_items_and_skips_blank_lines(tmp_path: Path) -> None:
    p = write(tmp_path, {"id": "x1", "prompt": GOOD_PROMPT, "answer": "B"}, "",
              {"id": "x2", "prompt": GOOD_PROMPT, "answer": "D"})
    assert load_mc(p) == [MCItem("x1", GOOD_PROMPT, "B"), MCItem("x2", GOOD_PROMPT, "D")]


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "not JSON"),
    (["a list"], "expected an object"),
    ({"id": "x", "prompt": GOOD_PROMPT}, "missing ['answer']"),
    ({"id": "x", "prompt": GOOD_PROMPT, "answer": "B", "answr": "B"}, "unexpected ['answr']"),
    ({"id": "", "prompt": GOOD_PROMPT, "answer": "B"}, "id must be"),
    ({"id": 3, "prompt": GOOD_PROMPT, "answer": "B"}, "id must be"),
    ({"id": "x", "prompt": "No options here.", "answer": "B"}, "four option lines"),
    ({"id": "x", "prompt": GOOD_PROMPT.replace("C) 3\n", ""), "answer": "B"}, "four option lines"),
    ({"id": "x", "prompt": GOOD_PROMPT, "answer": "E"}, "answer must be one of A, B, C, D"),
    ({"id": "x", "prompt": GOOD_PROMPT, "answer": "b"}, "answer must be"),
])
def test_bad_lines_are_named(tmp_path: Path, line: object, message: str) -> None:
    p = write(tmp_path, {"id": "ok", "prompt": GOOD_PROMPT, "answer": "A"}, line)
    with pytest.raises(MCSetError, match=r"mc\.jsonl:2: ") as e:
        load_mc(p)
    assert message in str(e.value)
    assert isinstance(e.value, ValueError)


def test_duplicate_ids_and_empty_files(tmp_path: Path) -> None:
    item = {"id": "same", "prompt": GOOD_PROMPT, "answer": "A"}
    with pytest.raises(MCSetError, match=r":2: duplicate id 'same'"):
        load_mc(write(tmp_path, item, item))
    with pytest.raises(MCSetError, match="no items"):
        load_mc(write(tmp_path, ""))


@pytest.mark.parametrize(("text", "letter"), [
    ("B", "B"),
    ("B)", "B"),
    (" C.\n", "C"),
    ("The answer is B.", "B"),
    ("**C**", "C"),
    ("Answer: D) 4", "D"),
    ("(A)", "A"),
    ("A good guess is B.", "B"),      # the article is not an option
    ("A is correct.", "A"),
    ("D, because 47 is less than 49.", "D"),
    ("Bruno, so D.", "D"),            # letters inside words do not count
    ("The A4 sheet", None),
    ("I think it is b", None),        # lower case is too often a word to count
    ("", None),
])
def test_answer_letter(text: str, letter: str | None) -> None:
    assert answer_letter(text) == letter


def test_grade_compares_with_the_key() -> None:
    item = MCItem("x", GOOD_PROMPT, "B")
    assert grade("The answer is B.", item)
    assert not grade("A", item)
    assert not grade("no idea", item)
