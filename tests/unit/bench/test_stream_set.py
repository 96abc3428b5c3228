"""The streaming benchmark's multiple-choice set: the packaged file's shape, loading errors, grading."""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from espalier.planner.sentences import split_sentences
from espalier.service.bench import stream_set
from espalier.service.bench.stream_set import INSTRUCTION, MCItem, MCSetError, answer_letter, grade, load_mc

ROOT = Path(__file__).resolve().parents[3]
GOOD_PROMPT = "Ann has two cats. How many cats does Ann have?\nA) 1\nB) 2\nC) 3\nD) 4\nAnswer with the letter only."


def test_packaged_set_loads_with_the_correct_letters_balanced() -> None:
    items = load_mc()
    assert len(items) >= 40  # one item is 2.5 points: enough to tell a 5-point gap from noise, roughly
    assert load_mc(ROOT / "service/bench/data/stream_mc.jsonl") == items
    counts = Counter(item.answer for item in items)
    assert set(counts) == set("ABCD") and max(counts.values()) - min(counts.values()) <= 1, counts
    assert [item.id for item in items] == [f"mc-{n:02d}" for n in range(1, len(items) + 1)]


def test_packaged_prompts_have_5_to_25_sentences_then_four_options_and_the_instruction() -> None:
    # The sentence count is over the passage and the question: split_sentences makes each option line
    # and the closing instruction a segment of its own, and those five are not counted.
    counts = []
    for item in load_mc():
        segments = split_sentences(item.prompt)
        assert segments[-1] == "\n" + INSTRUCTION, item.id
        options = segments[-5:-1]
        assert [s[:4] for s in options] == ["\nA) ", "\nB) ", "\nC) ", "\nD) "], (item.id, options)
        assert all("\n" not in s[1:] for s in options), item.id
        assert len({s[4:] for s in options}) == 4, item.id  # four different options
        counts.append(len(segments) - 5)
        assert 5 <= counts[-1] <= 25, (item.id, counts[-1])
    assert min(counts) <= 6 and max(counts) >= 15  # short and long passages both


@pytest.mark.parametrize(("item_id", "early"), [
    ("mc-13", "Its light can be seen from 28 kilometres out at sea."),
    ("mc-18", "Captain Irene Vass was given command of the research ship Petrel in March."),
    ("mc-28", "Dr Amara Nwosu moved to the town of Keswold in 2015 to open a dental practice."),
])
def test_some_items_state_the_key_fact_early_in_a_long_passage(item_id: str, early: str) -> None:
    item = {i.id: i for i in load_mc()}[item_id]
    sentences = [s.strip() for s in split_sentences(item.prompt)]
    assert sentences.index(early) <= 1 and len(sentences) - 5 >= 10


@pytest.mark.parametrize(("item_id", "asked_first", "asked_last"), [
    ("mc-14", "Which way of travelling is cheapest?", "where should he stay to spend the least?"),
    ("mc-19", "How many hens do they have?", "how many goats do they have?"),
    ("mc-26", "Which gallery shows the Roman coins?", "which gallery shows the clocks?"),
    ("mc-32", "Which flat is the cheapest?", "cheapest flat that gives her a spare room."),
    ("mc-39", "How many rooms does the hotel have?", "on which floor are the rooms with balconies?"),
])
def test_some_items_change_the_question_in_the_last_sentence(item_id: str, asked_first: str, asked_last: str) -> None:
    item = {i.id: i for i in load_mc()}[item_id]
    question = [s.strip() for s in split_sentences(item.prompt)][:-5]
    assert question[-2] == asked_first and question[-1].endswith(asked_last)


def test_the_data_file_is_packaged() -> None:
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    globs = package_data["espalier.service.bench"]
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
    # Replies of Qwen2.5-Coder-1.5B-Instruct to the packaged set (issue 7's diagnosis):
    ("A) Monday", "A"),
    ("B) The Q", "B"),                # the option's text cut off by the answer budget
    ("D)", "D"),
    ("To determine how many parcels are still in the van when Sade Okafor arrives back in Hollin, we need",
     None),                           # working it out, cut off before a letter: wrong, not a guess
    ("The correct answer is", None),
    ("The shops close at noon on Mondays.", None),  # the right fact, but no option named
])
def test_answer_letter(text: str, letter: str | None) -> None:
    assert answer_letter(text) == letter


def test_grade_compares_with_the_key() -> None:
    item = MCItem("x", GOOD_PROMPT, "B")
    assert grade("The answer is B.", item)
    assert not grade("A", item)
    assert not grade("no idea", item)
