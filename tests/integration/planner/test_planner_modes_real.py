"""The four modes on the real small model: each gives a non-empty answer, with well-formed events.

Needs the `small_engine` fixture (an Engine with only the small role loaded, from tests/conftest.py);
skipped when it is not provided. Budgets are short so the test stays fast on a 2-core CPU. Runs on the
event loop tests/conftest.py gives async tests (uvloop for integration tests).
"""

from __future__ import annotations

import asyncio
import csv
from contextlib import aclosing
from pathlib import Path

import pytest

from planner import pipeline
from planner.engine import Engine, Role
from planner.events import AnswerDone, Event, NodeDelta, NodeFailed, NodeFinished, NodeStarted, PlanReady
from planner.plan import Mode, Route
from planner.settings import PlannerSettings

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
    first, done = events[0], events[-1]
    assert isinstance(first, PlanReady) and isinstance(done, AnswerDone)
    plan = first.plan
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
        assert len(plan.points) >= 2 and len(plan.nodes) == len(plan.points) + 2  # and the opening and closing
        assert "1. **" in done.text
