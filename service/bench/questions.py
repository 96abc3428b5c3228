"""Question sets and router labels for `espalier bench answers`.

Owns reading a question set from CSV (a `request` column, `,` or `;` separated, optionally with a
`label` column as in the router files `label;request`) or JSONL (one object a line with `request`,
`question`, `prompt`, `text` or FastChat's `turns`), and matching labels to questions by their
whitespace- and case-normalised text.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEXT_KEYS = ("request", "question", "prompt", "text")


class QuestionSetError(ValueError):
    """The file cannot be read as a question set; the message names the file and why."""


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    label: int | None = None  # 1 = suits a skeleton, 0 = does not (router files only)
    category: str = ""


def normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def _label(value: object, where: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        label = int(str(value).strip())
    except ValueError:
        raise QuestionSetError(f"{where}: label must be 0 or 1 (got {value!r})") from None
    if label not in (0, 1):
        raise QuestionSetError(f"{where}: label must be 0 or 1 (got {label})")
    return label


def _read_csv(text: str, name: str) -> list[Question]:
    header = text.split("\n", 1)[0]
    # The router files use `;` (their requests contain commas); pick whichever names the column.
    delimiter = ";" if header.count(";") > header.count(",") or header.strip().startswith("label;") else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    key = next((k for k in TEXT_KEYS if k in fields), None)
    if key is None:
        raise QuestionSetError(f"{name}: no `request` column (columns: {', '.join(fields) or 'none'})")
    out: list[Question] = []
    for line, row in enumerate(reader, 2):
        row = {(k or "").strip().lower(): v for k, v in row.items()}
        q = (row.get(key) or "").strip()
        if not q:
            continue
        out.append(Question(q, _label(row.get("label"), f"{name}:{line}"), (row.get("category") or "").strip()))
    return out


def jsonl_objects(text: str, name: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line; QuestionSetError naming the line if not JSON."""
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            yield line, json.loads(raw)
        except json.JSONDecodeError as exc:
            raise QuestionSetError(f"{name}:{line}: not JSON ({exc.msg})") from None


def _read_jsonl(text: str, name: str) -> list[Question]:
    out: list[Question] = []
    for line, obj in jsonl_objects(text, name):
        q: str | None
        if isinstance(obj, str):
            q = obj
            obj = {}
        elif isinstance(obj, dict):
            q = next((str(obj[k]) for k in TEXT_KEYS if isinstance(obj.get(k), str)), None)
            turns = obj.get("turns")
            if q is None and isinstance(turns, list) and turns and isinstance(turns[0], str):
                q = turns[0]  # FastChat's question.jsonl: the first turn is the question
            if q is None:
                raise QuestionSetError(f"{name}:{line}: no request/question/prompt/text/turns field")
        else:
            raise QuestionSetError(f"{name}:{line}: expected an object or a string")
        if q.strip():
            out.append(Question(q.strip(), _label(obj.get("label"), f"{name}:{line}"),
                                str(obj.get("category") or "").strip()))
    return out


def load_questions(path: str | Path, limit: int | None = None) -> list[Question]:
    """The questions of a CSV or JSONL file (by extension; .json/.jsonl/.ndjson are JSONL), in order."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise QuestionSetError(f"{p}: cannot read ({exc.strerror or exc})") from None
    questions = _read_jsonl(text, str(p)) if p.suffix.lower() in (".jsonl", ".json", ".ndjson") \
        else _read_csv(text, str(p))
    if not questions:
        raise QuestionSetError(f"{p}: no questions")
    return questions[:limit] if limit is not None else questions


def load_labels(path: str | Path) -> list[Question]:
    """Labelled questions (every row must carry a 0/1 label)."""
    rows = load_questions(path)
    missing = [i for i, q in enumerate(rows, 1) if q.label is None]
    if missing:
        raise QuestionSetError(f"{path}: {len(missing)} row(s) without a label (first: row {missing[0]})")
    return rows


def label_rows(path: str | Path) -> list[tuple[int, str]]:
    """(label, question) rows of a labelled set, as the router's scorers take them (1 = suits a skeleton)."""
    return [(int(q.label), q.text) for q in load_labels(path) if q.label is not None]


def match_labels(questions: list[Question], labels: list[Question]) -> list[Question]:
    """The labelled rows whose text is one of `questions`, in the question set's order."""
    by_text = {normalize(q.text): q for q in labels}
    out: list[Question] = []
    seen: set[str] = set()
    for q in questions:
        key = normalize(q.text)
        if key in by_text and key not in seen:
            seen.add(key)
            out.append(by_text[key])
    return out
