"""Points started while the skeleton is written, on the real small model: they run beside the skeleton,
the final plan takes them over, and an answer closed mid-skeleton leaves nothing behind.

Needs the `small_engine` fixture (tests/conftest.py); budgets are short so the test stays fast on 2 cores.
"""

from __future__ import annotations

import asyncio
import re
from contextlib import aclosing

import pytest
from kv_checks import kv_now, wait_back_to

from espalier.planner import pipeline
from espalier.planner.engine import Engine
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
from espalier.planner.plan import Mode, Route
from espalier.planner.settings import PlannerSettings

pytestmark = pytest.mark.model

QUESTION = "How can I improve my time management skills?"
SETTINGS = PlannerSettings(point_max_tokens=24, skeleton_max_tokens=80, max_nodes=4, early_points=2)


async def test_points_start_while_the_skeleton_is_written_and_the_plan_takes_them_over(small_engine: Engine) -> None:
    before = await kv_now(small_engine)
    async with asyncio.timeout(300):
        async with aclosing(pipeline.answer(small_engine, QUESTION, Mode.SGD, SETTINGS)) as stream:
            events: list[Event] = [e async for e in stream]
    ready = next(i for i, e in enumerate(events) if isinstance(e, PlanReady))
    plan = events[ready].plan
    assert plan.route is Route.GRAPH, plan.reason
    early = [e.node_id for e in events[:ready] if isinstance(e, NodeStarted)]
    said = re.search(r"(\d+) point\(s\) started while the skeleton was written \(at most 2: set\)", plan.reason)
    assert said and int(said.group(1)) == len(early), plan.reason
    assert 1 <= len(early) <= 2  # the first point's line is done before the skeleton is
    assert all(not plan.node(i).depends_on for i in early)
    first_planned = next(i for i, e in enumerate(events) if isinstance(e, NodePlanned))
    first_text = next(i for i, e in enumerate(events) if isinstance(e, NodeDelta))
    assert first_planned < first_text  # the outline shows before any point's text
    done = events[-1]
    assert isinstance(done, AnswerDone)
    assert done.failed == (), [e for e in events if isinstance(e, NodeFailed)]
    for node in plan.nodes:  # each node started once and ended once, early or not
        assert sum(isinstance(e, NodeStarted) and e.node_id == node.id for e in events) == 1
        assert sum(isinstance(e, NodeFinished) and e.node_id == node.id for e in events) == 1
    finished = {e.node_id: e.text for e in events if isinstance(e, NodeFinished)}
    for node_id in early:  # an early point's text is in the answer like any other point's
        assert finished[node_id].strip() and finished[node_id].strip() in done.text
    await wait_back_to(small_engine, before)


async def test_an_answer_closed_mid_skeleton_frees_the_skeleton_and_its_early_points(small_engine: Engine) -> None:
    before = await kv_now(small_engine)
    settings = SETTINGS.replace(skeleton_max_tokens=200, point_max_tokens=200)
    async with asyncio.timeout(300):
        async with aclosing(pipeline.answer(small_engine, QUESTION, Mode.SGD, settings)) as stream:
            async for event in stream:
                if isinstance(event, NodeDelta):  # a point writes while the skeleton is still written
                    break
                assert not isinstance(event, PlanReady), "no point started before the skeleton ended"
    await wait_back_to(small_engine, before)
