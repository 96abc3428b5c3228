"""The Python client and `espalier ask` carry the caller's system text and conversation into the request."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from espalier.clients.python import ask_cli
from espalier.clients.python.client import asked
from espalier.v1 import espalier_pb2 as pb


def test_a_bare_question_stays_a_question_and_a_conversation_becomes_messages() -> None:
    assert asked("Why?") == {"question": "Why?"}
    msgs = asked("And the second?", "In French.", [("user", "Name two."), pb.ChatMessage(role="assistant", content="A, B.")])
    assert [(m.role, m.content) for m in msgs["messages"]] == [  # type: ignore[union-attr]
        ("system", "In French."), ("user", "Name two."), ("assistant", "A, B."), ("user", "And the second?")]
    assert [m.role for m in asked("Q", history=[("user", "x")])["messages"]] == ["user", "user"]  # type: ignore[union-attr]


def test_ask_takes_the_question_from_the_messages_file_or_the_argument(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name two planets."},
                    {"role": "assistant", "content": "Mercury, Venus."}, {"role": "user", "content": "The second?"}]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(conversation), encoding="utf-8")
    question, system, turns = ask_cli.conversation("", "In French.", path)
    assert (question, system) == ("The second?", "In French.")
    assert turns == [("system", "Be brief."), ("user", "Name two planets."), ("assistant", "Mercury, Venus.")]
    question, _, turns = ask_cli.conversation("And the first?", "", path)  # the argument comes after the file
    assert question == "And the first?" and turns[-1] == ("user", "The second?")
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(conversation[:2])))
    assert ask_cli.conversation("", "", Path("-"))[0] == "Name two planets."


@pytest.mark.parametrize("content", ["not json", '{"role": "user"}', '[{"role": "user", "content": 3}]',
                                     '[{"role": "assistant", "content": "hi"}]'])
def test_ask_refuses_a_messages_file_it_cannot_use(tmp_path: Path, content: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "chat.json"
    path.write_text(content, encoding="utf-8")
    assert ask_cli.run(["--messages", str(path), "--target", "127.0.0.1:1"]) == 2
    assert "espalier ask:" in capsys.readouterr().err


def test_ask_needs_a_question_somewhere(capsys: pytest.CaptureFixture[str]) -> None:
    assert ask_cli.run(["--target", "127.0.0.1:1"]) == 2
    assert "give the question" in capsys.readouterr().err
