"""Loading question sets (CSV with a request column, label;request CSV, JSONL) and matching labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from espalier.service.bench.questions import QuestionSetError, load_labels, load_questions, match_labels

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_csv_with_request_column(tmp_path: Path) -> None:
    p = write(tmp_path, "q.csv", 'category,request\ngeneric,"How do I sleep better, and why?"\nmath,Solve x+1=2\n\n')
    qs = load_questions(p)
    assert [q.text for q in qs] == ["How do I sleep better, and why?", "Solve x+1=2"]
    assert qs[0].category == "generic" and qs[0].label is None
    assert [q.text for q in load_questions(p, limit=1)] == ["How do I sleep better, and why?"]


def test_label_semicolon_csv(tmp_path: Path) -> None:
    p = write(tmp_path, "labels.csv", "label;request\n1;What are the ways to relax, briefly?\n0;Write a poem\n")
    qs = load_labels(p)
    assert [(q.label, q.text) for q in qs] == [(1, "What are the ways to relax, briefly?"), (0, "Write a poem")]


def test_jsonl_forms(tmp_path: Path) -> None:
    lines = [json.dumps({"request": "First?"}), "", json.dumps({"question": "Second?", "label": 1}),
             json.dumps({"question_id": 3, "category": "writing", "turns": ["Third?", "follow-up"]}),
             json.dumps("Fourth?")]
    p = write(tmp_path, "q.jsonl", "\n".join(lines) + "\n")
    qs = load_questions(p)
    assert [q.text for q in qs] == ["First?", "Second?", "Third?", "Fourth?"]
    assert qs[1].label == 1 and qs[2].category == "writing"


@pytest.mark.parametrize(("name", "text", "message"), [
    ("q.csv", "prompt_id,answer\n1,x\n", "no `request` column"),
    ("q.csv", "request\n\n", "no questions"),
    ("q.jsonl", "{not json\n", "not JSON"),
    ("q.jsonl", '{"id": 1}\n', "no request"),
    ("l.csv", "label;request\n2;Hello there friend\n", "label must be 0 or 1"),
])
def test_bad_files_name_the_problem(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(QuestionSetError, match=message):
        load_questions(write(tmp_path, name, text))


def test_missing_file_and_missing_labels(tmp_path: Path) -> None:
    with pytest.raises(QuestionSetError, match="cannot read"):
        load_questions(tmp_path / "nope.csv")
    with pytest.raises(QuestionSetError, match="without a label"):
        load_labels(write(tmp_path, "q.csv", "request\nOne?\n"))


def test_match_labels_by_normalised_text(tmp_path: Path) -> None:
    questions = load_questions(write(tmp_path, "q.csv", "request\nWhat  are the WAYS to relax?\nUnlabelled?\n"))
    labels = load_labels(write(tmp_path, "l.csv", "label;request\n0;Other\n1;what are the ways to relax?\n"))
    matched = match_labels(questions, labels)
    assert [(q.label, q.text) for q in matched] == [(1, "what are the ways to relax?")]


@pytest.mark.skipif(not (SHARED / "vicuna80.csv").exists(), reason="shared data not present")
def test_the_shared_vicuna_files() -> None:
    questions = load_questions(SHARED / "vicuna80.csv")
    labels = load_labels(SHARED / "vicuna80_router.csv")
    assert len(questions) == 80 and len(labels) == 80
    assert len(match_labels(questions, labels)) == 80
    assert sum(q.label or 0 for q in labels) == 37  # per DESIGN.md: 10 + 8 + 8 + 10 + 1 suit a skeleton
