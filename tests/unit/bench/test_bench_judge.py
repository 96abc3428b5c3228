"""Verdict parsing and combination, the judge prompt, and the OpenAI-compatible judge over HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from engine_fakes import FakeEngine

from planner.engine import Role
from service.bench.judge import (
    EngineJudge,
    JudgeError,
    OpenAIJudge,
    chat_completions_url,
    combine,
    judge_messages,
    outcome,
    parse_verdict,
)


@pytest.mark.parametrize(("reply", "verdict"), [
    ("A", "A"), ("B", "B"), (" b\n", "B"), ("tie", "tie"), ("Tie.", "tie"), ("TIE", "tie"),
    ("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie"), ("**B**", "B"), ("(A)", "A"), ("'B'", "B"),
    ("Answer B", "B"), ("Answer A is better", "A"), ("Assistant B.", "B"), ("A.", "A"), ("A is better", "A"),
    ("The better answer is B", "B"), ("Verdict: A", "A"), ("Final verdict: tie", "tie"),
    ("Both are equally good", "tie"), ("Equal", "tie"), ("neither", "tie"), ("a tie", "tie"),
    ("It is a tie", None), ("", None), ("Hmm, hard to say", None), ("Because", None), ("123", None),
])
def test_parse_verdict(reply: str, verdict: str | None) -> None:
    assert parse_verdict(reply) == verdict


def test_outcome_depends_on_the_side_of_the_mode() -> None:
    assert outcome("A", mode_is_a=True) == "win"
    assert outcome("A", mode_is_a=False) == "lose"
    assert outcome("B", mode_is_a=False) == "win"
    assert outcome("B", mode_is_a=True) == "lose"
    assert outcome("tie", mode_is_a=True) == "tie"
    assert outcome(None, mode_is_a=False) is None


@pytest.mark.parametrize(("first", "second", "combined"), [
    ("win", "win", "win"), ("lose", "lose", "lose"), ("tie", "tie", "tie"),
    ("win", "tie", "win"), ("tie", "win", "win"), ("lose", "tie", "lose"), ("tie", "lose", "lose"),
    ("win", "lose", "tie"), ("lose", "win", "tie"),
    ("win", None, "win"), (None, "lose", "lose"), (None, "tie", "tie"), (None, None, None),
])
def test_combine_both_orders(first: Any, second: Any, combined: Any) -> None:
    assert combine(first, second) == combined


def test_judge_prompt_shows_both_answers_and_cuts_long_ones() -> None:
    msgs = judge_messages("Why?", "alpha " * 10, "beta", max_chars=20)
    assert msgs[0].role == "system" and "tie" in msgs[0].content
    user = msgs[1].content
    assert "Why?" in user and "[Answer A]\nalpha alpha" in user and "[...]" in user and "[Answer B]\nbeta" in user
    assert "(no answer)" in judge_messages("Q", "", "x")[1].content


async def test_engine_judge_is_greedy_and_short() -> None:
    engine = FakeEngine()
    engine.script("[Answer A]", "B because it is longer and more detailed")
    judge = EngineJudge(engine, Role.SMALL)
    reply = await judge.reply("Q?", "one", "two")
    assert parse_verdict(reply) == "B"
    call = engine.calls[-1]
    assert call.request.role is Role.SMALL and "[Answer A]\none" in call.full_prompt and "[Answer B]\ntwo" in call.full_prompt
    assert len(call.output.split()) <= 4


def test_chat_completions_url() -> None:
    assert chat_completions_url("http://h:8080") == "http://h:8080/v1/chat/completions"
    assert chat_completions_url("http://h:8080/v1/") == "http://h:8080/v1/chat/completions"
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"


class _Handler(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, Any]]] = []
    status = 200
    reply: ClassVar[Any] = {"choices": [{"message": {"role": "assistant", "content": " B"}}]}

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                "body": json.loads(body)})
        data = json.dumps(type(self).reply).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def endpoint() -> Iterator[str]:
    _Handler.seen = []
    _Handler.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_openai_judge_posts_a_chat_completion(endpoint: str) -> None:
    judge = OpenAIJudge(endpoint, "big-model", api_key="sekrit")
    reply = await judge.reply("Q?", "first", "second")
    assert parse_verdict(reply) == "B"
    (req,) = _Handler.seen
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sekrit"
    body = req["body"]
    assert body["model"] == "big-model" and body["temperature"] == 0 and body["max_tokens"] <= 8
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "[Answer A]\nfirst" in body["messages"][1]["content"]
    assert "big-model" in judge.name


async def test_openai_judge_reports_http_errors(endpoint: str) -> None:
    _Handler.status = 500
    judge = OpenAIJudge(endpoint + "/v1", "m", retries=0)
    with pytest.raises(JudgeError, match="HTTP 500"):
        await judge.reply("Q?", "a", "b")
    assert _Handler.seen[0]["auth"] is None


async def test_openai_judge_unreachable() -> None:
    judge = OpenAIJudge("http://127.0.0.1:9", "m", retries=0, timeout_s=2)
    with pytest.raises(JudgeError, match="unreachable"):
        await judge.reply("Q?", "a", "b")
