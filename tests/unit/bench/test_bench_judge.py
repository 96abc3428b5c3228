"""Verdict parsing and combination, logprob margins and the pair rule, the judge prompt, the engine
judge, and the OpenAI-compatible judge over HTTP."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from engine_fakes import FakeEngine

from espalier.planner.engine import Chunk, FinishReason, GenerateRequest, Role, TokenLogprobs
from espalier.service.bench.judge import (
    EngineJudge,
    GradeJudge,
    JudgeError,
    MarginJudge,
    OpenAIJudge,
    absent_bound,
    chat_completions_url,
    combine,
    expected_grade,
    judge_messages,
    label_logprob,
    label_margin,
    margin_method,
    margin_outcome,
    outcome,
    parse_grade,
    parse_verdict,
    preference,
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


def lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def test_preference_cancels_a_constant_position_bias() -> None:
    assert preference(3.0, 2.0) == 0.5
    for bias in (-5.0, 0.0, 2.0, 9.0):  # the judge's pull towards A: the same in both orders
        assert preference(bias + 0.8, bias - 0.8) == pytest.approx(0.8)
    # a judge that says A ever more strongly in both orders still shows a preference by how much
    assert preference(6.0, 4.0) == 1.0 and preference(4.0, 6.0) == -1.0


@pytest.mark.parametrize(("p", "band", "result"), [
    (0.51, 0.5, "win"), (0.5, 0.5, "tie"), (0.0, 0.5, "tie"), (-0.5, 0.5, "tie"), (-0.51, 0.5, "lose"),
    (0.5, 0.4, "win"), (0.01, 0.0, "win"), (0.0, 0.0, "tie"), (-3.0, 1.0, "lose"),
])
def test_margin_outcome_band(p: float, band: float, result: str) -> None:
    assert margin_outcome(p, band) == result


def test_label_logprob_sums_the_variant_pieces() -> None:
    top = [("A", -1.0), (" B", -1.5), (" A", -2.0), ("a", -3.0), ("Answer", -3.5), ("b\n", -4.0), ("AB", -5.0)]
    assert label_logprob(top, "A") == pytest.approx(lse(-1.0, -2.0, -3.0))
    assert label_logprob(top, "B") == pytest.approx(lse(-1.5, -4.0))
    assert label_logprob(top, "tie") is None
    assert label_margin(top) == pytest.approx(lse(-1.0, -2.0, -3.0) - lse(-1.5, -4.0))


def test_an_absent_label_gets_an_upper_bound() -> None:
    peaked = [("A", math.log(0.97)), ("The", math.log(0.02)), ("**", math.log(0.001))]  # 0.009 left
    assert absent_bound(peaked) == pytest.approx(math.log(0.001))  # the last entry is the tighter bound
    assert label_margin(peaked) == pytest.approx(math.log(0.97) - math.log(0.001))
    wide = [("B", math.log(0.5)), ("x", math.log(0.3)), ("y", math.log(0.195))]  # 0.005 left
    assert absent_bound(wide) == pytest.approx(math.log(0.005))  # the leftover mass is the tighter bound
    assert label_margin(wide) == pytest.approx(math.log(0.005) - math.log(0.5))
    # no mass left, or less than rounding can resolve: the resolution, or a lower last entry, bounds it
    assert absent_bound([("A", math.log(0.6)), ("B", math.log(0.4))]) == pytest.approx(math.log(1e-6))
    assert absent_bound([("A", -1e-12), ("B", -30.0)]) == -30.0
    assert label_margin([("The", -0.1), ("**", -2.5)]) is None  # neither label: no margin from this order
    assert label_margin([]) is None


class LogprobEngine(FakeEngine):
    """The fake engine, sending the first token's top entries as the embedded engine would."""

    def __init__(self, top: tuple[tuple[str, float], ...]) -> None:
        super().__init__()
        self.top = top
        self.seen: list[GenerateRequest] = []

    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        return self._with_logprobs(request)

    async def _with_logprobs(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        self.seen.append(request)
        entry = TokenLogprobs(self.top[0][0], self.top[0][1], self.top[:request.top_logprobs])
        yield Chunk(entry.token, 1, FinishReason.LENGTH, logprobs=(entry,) if request.top_logprobs else ())


async def test_engine_judge_margin_asks_for_one_token_with_logprobs() -> None:
    engine = LogprobEngine(((" A", -0.2), ("A", -2.0), (" B", -3.0), ("tie", -4.0)))
    judge = EngineJudge(engine, Role.SMALL)
    assert isinstance(judge, MarginJudge)
    m = await judge.margin("Q?", "one", "two")
    assert m == pytest.approx(lse(-0.2, -2.0) + 3.0)
    request = engine.seen[-1]
    assert request.top_logprobs == 20 and request.sampling.max_tokens == 1 and request.sampling.temperature == 0
    assert request.role is Role.SMALL and "[Answer A]\none" in request.prompt and judge.logprobs


async def test_engine_judge_without_logprobs_falls_back_to_text_for_good() -> None:
    engine = FakeEngine()
    engine.script("[Answer A]", "B")
    judge = EngineJudge(engine, Role.LARGE)
    assert await judge.margin("Q?", "one", "two") is None
    assert not judge.logprobs and len(engine.calls) == 1
    assert await judge.margin("Q?", "one", "two") is None and len(engine.calls) == 1  # not asked again
    assert parse_verdict(await judge.reply("Q?", "one", "two")) == "B"


def test_margin_method_states_the_band() -> None:
    assert margin_method(0.5) == "logprob margin, both orders, tie band ±0.5 nats"
    assert margin_method(1.25) == "logprob margin, both orders, tie band ±1.25 nats"


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


OPENAI_LOGPROBS: dict[str, Any] = {"choices": [{"message": {"role": "assistant", "content": "A"}, "logprobs": {
    "content": [{"token": "A", "logprob": -0.1, "top_logprobs": [
        {"token": "A", "logprob": -0.1}, {"token": " B", "logprob": -2.5}, {"token": "b", "logprob": -4.0}]}]}}]}


async def test_openai_judge_margin_with_logprobs(endpoint: str) -> None:
    _Handler.reply = OPENAI_LOGPROBS
    try:
        judge = OpenAIJudge(endpoint, "m", logprobs=True)
        assert await judge.margin("Q?", "first", "second") == pytest.approx(-0.1 - lse(-2.5, -4.0))
        body = _Handler.seen[-1]["body"]
        assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 1
        assert await OpenAIJudge(endpoint, "m").margin("Q?", "a", "b") is None  # off unless asked
        assert len(_Handler.seen) == 1
    finally:
        _Handler.reply = {"choices": [{"message": {"role": "assistant", "content": " B"}}]}


async def test_openai_judge_without_logprobs_support_turns_them_off(endpoint: str) -> None:
    judge = OpenAIJudge(endpoint, "m", logprobs=True)
    assert await judge.margin("Q?", "a", "b") is None and not judge.logprobs
    assert await judge.margin("Q?", "a", "b") is None and len(_Handler.seen) == 1
    assert parse_verdict(await judge.reply("Q?", "a", "b")) == "B" and "logprobs" not in _Handler.seen[-1]["body"]


def test_expected_grade_weighs_the_digits() -> None:
    top = [("7", math.log(0.5)), (" 8", math.log(0.3)), ("6", math.log(0.1)), ("The", math.log(0.1))]
    assert expected_grade(top) == pytest.approx((7 * 0.5 + 8 * 0.3 + 6 * 0.1) / 0.9)
    assert expected_grade([("10", -0.1), ("The", -2.0)]) is None  # no single digit: no grade
    assert expected_grade([("9", math.log(0.3)), ("I", math.log(0.7))]) is None  # digits under half the mass
    assert expected_grade([("0", math.log(0.6)), ("5", math.log(0.4))]) is None  # 0 is off the scale


@pytest.mark.parametrize(("reply", "grade"), [("7", 7.0), (" Rating: 8/9", 8.0), ("none", None), ("0", None)])
def test_parse_grade(reply: str, grade: float | None) -> None:
    assert parse_grade(reply) == grade


async def test_engine_judge_grades_one_answer_by_its_expected_digit() -> None:
    engine = LogprobEngine((("8", math.log(0.75)), ("6", math.log(0.25))))
    judge = EngineJudge(engine, Role.LARGE)
    assert isinstance(judge, GradeJudge)
    assert await judge.grade("Q?", "the answer") == pytest.approx(7.5)
    request = engine.seen[-1]
    assert request.top_logprobs == 20 and request.sampling.max_tokens == 1
    assert "[Answer]\nthe answer\n[End of Answer]" in request.prompt and "[Answer A]" not in request.prompt
    text_only = FakeEngine()
    text_only.script("[Answer]", "6")
    assert await EngineJudge(text_only, Role.LARGE).grade("Q?", "x") == 6.0  # no logprobs: the replied digit


async def test_openai_judge_grades(endpoint: str) -> None:
    _Handler.reply = {"choices": [{"message": {"role": "assistant", "content": "4"}}]}
    try:
        assert await OpenAIJudge(endpoint, "m").grade("Q?", "an answer") == 4.0
        assert "[Answer]\nan answer" in _Handler.seen[-1]["body"]["messages"][1]["content"]
    finally:
        _Handler.reply = {"choices": [{"message": {"role": "assistant", "content": " B"}}]}


async def test_an_endpoint_grades_checklist_items_by_its_top_logprobs(endpoint: str) -> None:
    from espalier.service.bench.checklist import EndpointChecklistJudge

    _Handler.reply = {"choices": [{"message": {"role": "assistant", "content": "Yes"}, "logprobs": {
        "content": [{"token": "Yes", "logprob": math.log(0.6), "top_logprobs": [
            {"token": "Yes", "logprob": math.log(0.6)}, {"token": "No", "logprob": math.log(0.2)},
            {"token": "The", "logprob": math.log(0.1)}]}]}}]}
    try:
        judge = EndpointChecklistJudge(OpenAIJudge(endpoint, "big-model"))
        graded = await judge.grade_items("Q?", "An answer.", ["Does it say X?", "Does it say Y?"])
        assert graded.grades == pytest.approx((0.75, 0.75)) and judge.name == "big-model at " + endpoint
        body = _Handler.seen[-1]["body"]
        assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20
        user = body["messages"][1]["content"]
        assert "[Answer]\nAn answer." in user and "Does it say Y?" in user and "\u2060" not in user  # no split mark
        _Handler.reply = {"choices": [{"message": {"role": "assistant", "content": "Yes"}}]}  # no logprobs
        with pytest.raises(JudgeError, match="top_logprobs"):
            await judge.grade_items("Q?", "An answer.", ["Does it say X?"])
    finally:
        _Handler.reply = {"choices": [{"message": {"role": "assistant", "content": " B"}}]}
