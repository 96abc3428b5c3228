"""The modes on the real small model: each gives a non-empty answer, with well-formed events; and the
defects a reader saw in skeleton answers, provoked: points that end at once, points asked for code.

Needs the `small_engine` fixture (an Engine with only the small role loaded, from tests/conftest.py);
skipped when it is not provided. Budgets are short so the test stays fast on a 2-core CPU. Runs on the
event loop tests/conftest.py gives async tests (uvloop for integration tests).
"""

from __future__ import annotations

import asyncio
import csv
import re
from contextlib import aclosing
from pathlib import Path

import pytest

from espalier.planner import pipeline, prompts
from espalier.planner.decode import collect
from espalier.planner.engine import Engine, FinishReason, GenerateRequest, Role, Sampling
from espalier.planner.events import (
    AnswerDone,
    Event,
    NodeDelta,
    NodeFailed,
    NodeFinished,
    NodePlanned,
    NodeStarted,
    PlanReady,
)
from espalier.planner.plan import Mode, Node, Part, Plan, Route
from espalier.planner.settings import PlannerSettings

pytestmark = pytest.mark.model

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "vicuna80.csv"
SETTINGS = PlannerSettings(point_max_tokens=24, skeleton_max_tokens=64, direct_max_tokens=48, max_nodes=4)
ALLOWED = {
    Mode.AUTO: set(Route),
    Mode.DIRECT: {Route.DIRECT},
    Mode.SOT: {Route.PARALLEL, Route.DIRECT},  # direct only if the skeleton could not be parsed
    Mode.SGD: {Route.GRAPH, Route.DIRECT},
    Mode.LIVE: {Route.DIRECT},  # nothing streamed in: plain decoding
}


def _questions() -> list[str]:
    if not DATA.exists():
        return [
            "How can I improve my time management skills?",
            "What if the Internet had been invented during the Renaissance period?",
        ]
    with open(DATA, newline="", encoding="utf-8") as f:
        rows = [r["request"] for r in csv.DictReader(f)]
    return [rows[0], rows[50]]  # a generic question and a counterfactual one


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> Engine:
    try:
        return request.getfixturevalue("small_engine")
    except pytest.FixtureLookupError:
        pytest.skip("no small_engine fixture (tests/conftest.py provides it with the real small model)")


@pytest.mark.parametrize("question", _questions(), ids=["generic", "counterfactual"])
@pytest.mark.parametrize("mode", list(Mode), ids=[m.value for m in Mode])
async def test_mode_answers(engine: Engine, mode: Mode, question: str) -> None:
    events: list[Event] = []
    async with asyncio.timeout(240):
        async with aclosing(pipeline.answer(engine, question, mode, SETTINGS)) as stream:
            events = [e async for e in stream]
    outline = [e for e in events if isinstance(e, NodePlanned)]  # a skeleton's points, as written
    assert all(isinstance(e, NodePlanned) for e in events[:len(outline)])
    events = events[len(outline):]
    first, done = events[0], events[-1]
    assert isinstance(first, PlanReady) and isinstance(done, AnswerDone)
    plan = first.plan
    if outline:
        assert [e.node.title for e in outline] == [n.title for n in plan.points]
    assert plan.route in ALLOWED[mode], plan.reason
    for node in plan.nodes:
        mine = [e for e in events[1:-1] if getattr(e, "node_id", None) == node.id]
        assert isinstance(mine[0], NodeStarted) and mine[0].role is Role.SMALL
        assert isinstance(mine[-1], (NodeFinished, NodeFailed))
        assert all(isinstance(e, NodeDelta) for e in mine[1:-1])
    assert done.failed == (), [e for e in events if isinstance(e, NodeFailed)]
    assert done.text.strip(), plan
    assert done.route is plan.route
    assert done.usage.role(Role.SMALL).completion_tokens > 0
    t = done.timings
    assert t.first_token_s is not None and t.plan_s <= t.first_token_s <= t.total_s
    if plan.route is not Route.DIRECT:
        assert len(plan.points) >= 2 and len(plan.nodes) == len(plan.points) + 1  # and the opening
        assert "1. **" in done.text
        texts = {e.node_id: e.text for e in events if isinstance(e, NodeFinished)}
        assert all(any(c.isalnum() for c in texts[n.id]) for n in plan.points), texts  # no empty point


# A question whose points are questions themselves: the small model, pre-filled with "3. What is the
# meaning of life?", ends the point at once (an empty point, as a reader saw in sgd answers) unless
# the first tokens may not end it (Sampling.min_tokens).
PHILOSOPHY = "What are some of the deepest philosophical questions? Attempt to provide answers to them as well."
PHILOSOPHY_PLAN = Plan.validated([Node(1, "What is the nature of reality?"), Node(2, "Does free will exist?"),
                                  Node(3, "What is the meaning of life?")], Route.PARALLEL)


async def _point_text(engine: Engine, min_tokens: int) -> tuple[str, FinishReason | None]:
    rendered = prompts.point_prompt(engine, Role.SMALL, PHILOSOPHY, PHILOSOPHY_PLAN, 3)
    sampling = Sampling(max_tokens=24, min_tokens=min_tokens, stop=prompts.point_stop(PHILOSOPHY_PLAN, 3))
    out = await collect(engine, GenerateRequest(rendered.full, Role.SMALL, sampling))
    return out.text, out.finish


async def test_a_point_that_would_end_at_once_writes_text_first(engine: Engine) -> None:
    async with asyncio.timeout(240):
        bare, finish = await _point_text(engine, 0)
        assert bare.strip() == "" and finish is FinishReason.STOP  # the defect, provoked
        text, _ = await _point_text(engine, 4)
        assert len(text.split()) >= 4 and "\n" not in text.strip()[:1]
        # the planner's defaults (and its retry, were the first attempt still empty) give every point text
        settings = PlannerSettings(point_max_tokens=24)
        async with aclosing(pipeline.expand(engine, PHILOSOPHY, PHILOSOPHY_PLAN, settings)) as stream:
            events = [e async for e in stream]
        done = events[-1]
        assert isinstance(done, AnswerDone) and done.failed == ()
        finished = [e for e in events if isinstance(e, NodeFinished)]
        assert len(finished) == 3 and all(len(e.text.split()) >= 4 for e in finished), finished
        # with no minimum, the empty first attempt is retried (insisting on text) and then holds up
        events = []
        bare_settings = settings.replace(point_min_tokens=0)
        async with aclosing(pipeline.expand(engine, PHILOSOPHY, PHILOSOPHY_PLAN, bare_settings)) as stream:
            events = [e async for e in stream]
        third = next(e for e in events if isinstance(e, NodeFinished) and e.node_id == 3)
        assert len(third.text.split()) >= 4


async def test_a_point_asked_for_code_carries_a_code_block_and_stops_at_the_next_point(engine: Engine) -> None:
    question = "Compare bubble sort and insertion sort, and show me an easy Python code example for each one."
    settings = PlannerSettings(long_point_max_tokens=160)
    # the second title as a skeleton wrote it: pre-filled with it, a model starts the code block at once
    points = [pipeline.budgeted(Node(i, t), question, settings)
              for i, t in ((1, "Bubble sort"), (2, "Here is an example of insertion sort in Python"))]
    assert all(n.max_tokens == 160 for n in points)  # the question asks for code: each point may say more
    plan = Plan.validated(points, Route.PARALLEL)
    async with asyncio.timeout(480):
        async with aclosing(pipeline.expand(engine, question, plan, settings)) as stream:
            events = [e async for e in stream]
    done = events[-1]
    assert isinstance(done, AnswerDone)
    assert "```" in done.text, done.text
    # code over several lines, each statement on its own (not squeezed onto the heading's line)
    assert re.search(r"^\s*def \w+\(", done.text, re.MULTILINE), done.text
    for e in events:
        if isinstance(e, NodeFinished) and plan.node(e.node_id).part is Part.POINT:
            # a point never runs on into the next numbered part of the outline
            assert not re.search(r"^\s*\d+\.\s", e.text.strip(), re.MULTILINE) or "```" in e.text, e.text



async def _direct(engine: Engine, question: str, budget: int) -> tuple[str, int, FinishReason]:
    settings = PlannerSettings(direct_max_tokens=budget)
    async with asyncio.timeout(240), aclosing(pipeline.answer(engine, question, Mode.DIRECT, settings)) as stream:
        events = [e async for e in stream]
    (finished,) = [e for e in events if isinstance(e, NodeFinished)]
    return finished.text, finished.tokens, finished.finish


async def test_an_answer_that_falls_into_a_loop_ends_there_and_a_count_does_not(engine: Engine) -> None:
    # the small model repeats the word to the end of any budget; the loop rule cannot tell that from a
    # loop (nor should it: a stretch of ten words twice), so the answer ends after 20 of them
    text, tokens, finish = await _direct(engine, "Repeat the word hello 100 times.", 160)
    assert finish is FinishReason.STOP and tokens < 40, (tokens, text)
    assert 20 <= text.lower().count("hello") < 30, text
    # a count repeats its shape but not its words: it runs to its end
    text, tokens, finish = await _direct(engine, "Count from 1 to 20, one number per line, nothing else.", 200)
    numbers = [int(n) for n in re.findall(r"\b\d+\b", text)]
    assert numbers[:20] == list(range(1, 21)), (finish, tokens, text)
