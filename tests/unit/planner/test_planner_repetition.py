"""Loops in greedy text: caught where a stretch repeats back to back at the end, and only there.

The loops below are what the default models wrote in bench runs (vicuna80); the texts that must pass
are ordinary answers, code and tables, which repeat words and phrases but not stretches back to back.
"""

from __future__ import annotations

import pytest

from espalier.planner.repetition import ends_in_loop

FILLERS = '"um", "uh", "like", "ummm", "ahhh", "yeah", "no", "right", "wrong", "okay", "oh", "well", '
ITEM = "{n}. They use phrases like \"I'm not sure what you're trying to say\" or \"I don't know.\"\n"
SENTENCE = "A good night's sleep is essential for maintaining good mental health and reducing stress. "


@pytest.mark.parametrize("text", [
    "5. **They use filler words**: " + FILLERS * 2,
    "".join(ITEM.format(n=n) for n in (8, 9)),  # the list numbers differ, the items do not
    "Sleep matters. " + SENTENCE * 2,
    "in space stations, in space vehicles, in space habitats, in space colonies, " * 2,
    "very " * 24,
])
def test_a_loop_is_caught_once_its_stretch_repeats(text: str) -> None:
    assert ends_in_loop(text)


def test_a_loop_is_caught_only_when_the_repeat_is_complete() -> None:
    text = "Sleep matters. " + SENTENCE * 2
    assert not ends_in_loop(text[:-20]) and not ends_in_loop(SENTENCE)
    assert not ends_in_loop("very " * 7)  # short units need MIN_LOOP_WORDS words in all


@pytest.mark.parametrize("text", [
    # a phrase that comes back is not a loop: the stretches between differ
    ("Check the author: this helps ensure the information is accurate. Check the date: this helps ensure "
    "the information is accurate. Check the sources: this helps ensure the information is accurate."),
    # code: closing braces and a repeated call are short units
    ("```cpp\nfor (int i = 0; i < n; i++) {\n  for (int j = 0; j < n - i - 1; j++) {\n    if (a[j] > a[j + 1]) {\n"
    "      std::swap(a[j], a[j + 1]);\n    }\n  }\n}\n```\n"),
    # a table's rules and rows
    "| mode | speed |\n| --- | --- |\n| direct | 1.0 |\n| sot | 1.4 |\n| sgd | 1.3 |\n",
    # a table of figures: its rows share their shape, not their numbers
    "| x | 1 | 2 | 3 |\n" + "".join(f"| {i} | {i} | {2 * i} | {3 * i} |\n" for i in range(1, 10)),
    # a list whose items share their start
    "".join(f"- Step {n}: do task {n} and note what it took.\n" for n in "ABCDEF"),
    "",
    "word",
])
def test_ordinary_text_is_not_a_loop(text: str) -> None:
    words = text.split(" ")
    assert not any(ends_in_loop(" ".join(words[:i])) for i in range(1, len(words) + 1))
