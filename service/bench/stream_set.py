"""The multiple-choice set of `espalier bench stream`: loading it and grading an answer.

Owns the format of `data/stream_mc.jsonl` (one `{"id", "prompt", "answer"}` object a line; the prompt
ends with four option lines `A) ...` to `D) ...` and an instruction line, see data/README.md) and the
rule that turns a model's free-text answer into an option letter.

The packaged prompts end with INSTRUCTION. Its wording is what makes the default large model
(Qwen2.5-Coder-1.5B-Instruct) reply with a letter at once on every item: asked "Answer with the
letter only." it began working the answer out ("To determine ...") on half of them, and a short
answer budget cut it off before any letter. The instruction is part of the typed prompt, so every
way of answering (whole, plain, live) sees it alike.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

LETTERS = "ABCD"
PACKAGED = "data/stream_mc.jsonl"
INSTRUCTION = "Reply with the letter of the correct option and nothing else."  # the packaged prompts' last line
_KEYS = {"id", "prompt", "answer"}
# The four options, each on its own line, in order; what follows the last one is free.
_OPTIONS = re.compile(r"\nA\) .+\nB\) .+\nC\) .+\nD\) .+")
# A capital A-D that is not part of a word or number ("B", "B)", "**C**", "is D.").
_LETTER = re.compile(r"(?<![\w])([A-D])(?![\w])")
# ...except the article: "A good guess is B". "A is right" still counts as A.
_ARTICLE = re.compile(r"A\s+(?!is\b|was\b)[a-z]")


class MCSetError(ValueError):
    """A line of the set is malformed; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class MCItem:
    id: str
    prompt: str
    answer: str  # one of LETTERS


def load_mc(path: Path | None = None) -> list[MCItem]:
    """The items of `path`, or of the set packaged with Espalier when `path` is None."""
    if path is None:
        name = f"espalier.service.bench/{PACKAGED}"
        text = resources.files("espalier.service.bench").joinpath(PACKAGED).read_text(encoding="utf-8")
    else:
        name, text = str(path), Path(path).read_text(encoding="utf-8")
    items: list[MCItem] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        item = _parse(line, f"{name}:{number}")
        if item.id in seen:
            raise MCSetError(f"{name}:{number}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise MCSetError(f"{name}: no items")
    return items


def _parse(line: str, where: str) -> MCItem:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise MCSetError(f"{where}: not JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise MCSetError(f"{where}: expected an object with id, prompt and answer")
    if set(obj) != _KEYS:
        missing, extra = sorted(_KEYS - set(obj)), sorted(set(obj) - _KEYS)
        raise MCSetError(f"{where}: keys must be id, prompt, answer (missing {missing}, unexpected {extra})")
    item_id, prompt, answer = obj["id"], obj["prompt"], obj["answer"]
    if not isinstance(item_id, str) or not item_id.strip():
        raise MCSetError(f"{where}: id must be a non-empty string")
    if not isinstance(prompt, str) or not _OPTIONS.search(prompt):
        raise MCSetError(f"{where}: prompt must be a string with four option lines 'A) ...' to 'D) ...'")
    if not isinstance(answer, str) or answer not in LETTERS:
        raise MCSetError(f"{where}: answer must be one of {', '.join(LETTERS)} (got {answer!r})")
    return MCItem(item_id, prompt, answer)


def answer_letter(answer_text: str) -> str | None:
    """The first standalone option letter in a model's answer, or None."""
    for m in _LETTER.finditer(answer_text):
        if not _ARTICLE.match(answer_text, m.start()):
            return m.group(1)
    return None


def grade(answer_text: str, item: MCItem) -> bool:
    """Whether the model's answer names the item's correct option."""
    return answer_letter(answer_text) == item.answer
