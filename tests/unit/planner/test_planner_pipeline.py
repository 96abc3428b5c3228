"""make_plan / expand / answer over the fake engine, in every mode."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest
from engine_fakes import FakeEngine

from espalier.planner import pipeline
from espalier.planner.engine import InvalidRequest, Priority, Role
from espalier.planner.events import AnswerDone, Event, NodeFinished, NodePlanned, NodeStarted, PlanReady
from espalier.planner.plan import Difficulty, Mode, Node, Part, Plan, PlanInvalid, Route
from espalier.planner.settings import PlannerSettings

OPEN_Q = "Why do some people enjoy being scared by horror movies while others avoid it?"
GRAPH_SKELETON = (
    " Thrill of fear (needs: none; easy)\n2. Brain chemistry (needs: 1; hard)\n"
    "3. Personality differences (needs: 1, 2; hard)\n\nNow the answer: ..."
)
ROUTED = PlannerSettings(use_router_model=True)  # the router model is off by default
PLAIN_SKELETON = " Thrill of fear\n2. Brain chemistry\n3. Personality differences\n"


def engine_with_skeletons(**kw: object) -> FakeEngine:
    engine = FakeEngine(**kw)  # type: ignore[arg-type]
    engine.script("(needs: 2", GRAPH_SKELETON)  # only in the graph skeleton prompt (its example)
    engine.script("You are an organizer", PLAIN_SKELETON)
    return engine


async def run(coro_factory, timeout: float = 5):  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        return await coro_factory()


async def answer_events(
    engine: FakeEngine, question: str, mode: Mode | str, settings: PlannerSettings | None = None
) -> list[Event]:
    async with asyncio.timeout(5):
        async with aclosing(pipeline.answer(engine, question, mode, settings or ROUTED)) as events:
            return [e async for e in events]


async def test_sgd_mode_plans_a_graph_on_the_large_role() -> None:
    engine = engine_with_skeletons()
    plan = await run(lambda: pipeline.make_plan(engine, OPEN_Q, Mode.SGD))
    assert plan.route is Route.GRAPH
    assert [(n.id, n.title, n.depends_on, n.difficulty, n.part) for n in plan.nodes] == [
        (4, "Opening", (), Difficulty.HARD, Part.OPENING),  # the frame takes ids after the points'
        (1, "Thrill of fear", (), Difficulty.EASY, Part.POINT),
        (2, "Brain chemistry", (1,), Difficulty.HARD, Part.POINT),
        (3, "Personality differences", (1,), Difficulty.HARD, Part.POINT),  # (1, 2) cut to two stages
    ]  # no closing unless asked for (planner.closing)
    assert plan.reason.endswith("; 3 points")
    deeper = await run(lambda: pipeline.make_plan(engine_with_skeletons(), OPEN_Q, Mode.SGD,
                                                  PlannerSettings(max_depth=3)))
    assert deeper.points[2].depends_on == (1, 2)
    assert "forced" in plan.reason and plan.skeleton.startswith("1. Thrill of fear")
    (call,) = engine.calls
    assert call.request.role is Role.LARGE and call.request.sampling.stop == ("\n\n",)
    # the skeleton's words are penalised so its points differ; a setting turns it off
    assert call.request.sampling.word_repeat_penalty == PlannerSettings().skeleton_word_penalty > 1
    plain = engine_with_skeletons()
    await run(lambda: pipeline.make_plan(plain, OPEN_Q, Mode.SGD, PlannerSettings(skeleton_word_penalty=1.0)))
    assert plain.calls[0].request.sampling.word_repeat_penalty == 1.0
    assert call.full_prompt.endswith(OPEN_Q + "<|im_end|>\n<|im_start|>assistant\n1.")
    assert "Now the answer" not in plan.skeleton  # the stop string ended the list
    # easy and hard points go to one model by default, so the skeleton is not asked to rate them
    assert "easy or hard" not in call.full_prompt and "(easy)" not in call.full_prompt
    rated = engine_with_skeletons()
    await run(lambda: pipeline.make_plan(rated, OPEN_Q, Mode.SGD, PlannerSettings(easy_role=Role.SMALL)))
    assert "easy or hard" in rated.calls[0].full_prompt and "(needs: 2; hard)" in rated.calls[0].full_prompt


async def test_sot_mode_plans_independent_hard_points() -> None:
    engine = engine_with_skeletons()
    plan = await run(lambda: pipeline.make_plan(engine, OPEN_Q, "sot"))
    assert plan.route is Route.PARALLEL
    assert all(n.depends_on == () and n.difficulty is Difficulty.HARD for n in plan.nodes)
    assert len(plan.points) == 3 and "needs:" not in engine.calls[0].full_prompt
    assert [n.part for n in plan.nodes] == [Part.OPENING, Part.POINT, Part.POINT, Part.POINT]
    closed = await run(lambda: pipeline.make_plan(engine_with_skeletons(), OPEN_Q, "sot",
                                                  PlannerSettings(closing=True)))
    assert [n.part for n in closed.nodes] == [Part.OPENING, Part.POINT, Part.POINT, Part.POINT, Part.CLOSING]
    bare = await run(lambda: pipeline.make_plan(engine_with_skeletons(), OPEN_Q, "sot", PlannerSettings(frame=False)))
    assert [n.id for n in bare.nodes] == [1, 2, 3] and bare.points == bare.nodes


async def test_direct_mode_makes_no_engine_call() -> None:
    engine = engine_with_skeletons()
    plan = await run(lambda: pipeline.make_plan(engine, OPEN_Q, Mode.DIRECT))
    assert plan.route is Route.DIRECT and engine.calls == []


async def test_auto_mode_uses_rules_then_the_router_model() -> None:
    engine = engine_with_skeletons()
    plan = await run(lambda: pipeline.make_plan(engine, "Implement quicksort in Python.", Mode.AUTO))
    assert plan.route is Route.DIRECT and "rules" in plan.reason and engine.calls == []
    plan = await run(lambda: pipeline.make_plan(engine, OPEN_Q, Mode.AUTO))
    assert plan.route is Route.DIRECT and "default" in plan.reason and engine.calls == []
    engine.script("sort questions", "B")
    plan = await run(lambda: pipeline.make_plan(engine, OPEN_Q, Mode.AUTO, ROUTED))
    assert plan.route is Route.GRAPH and "model" in plan.reason
    assert [c.request.role for c in engine.calls] == [Role.SMALL, Role.LARGE]  # router, then skeleton
    # the whole answer waits for both: under load they take the next free slot ahead of points
    assert [c.request.priority for c in engine.calls] == [Priority.FIRST, Priority.FIRST]


async def test_skeleton_role_is_configurable() -> None:
    engine = engine_with_skeletons()
    await run(lambda: pipeline.make_plan(engine, OPEN_Q, Mode.SGD, PlannerSettings(skeleton_role=Role.SMALL)))
    assert engine.calls[0].request.role is Role.SMALL


async def test_unparseable_skeleton_falls_back_to_direct() -> None:
    engine = FakeEngine()
    engine.script("You are an organizer", " I cannot make a list for this.")
    events = await answer_events(engine, OPEN_Q, Mode.SGD)
    first, last = events[0], events[-1]
    assert (
        isinstance(first, PlanReady) and first.plan.route is Route.DIRECT and "unusable" in first.plan.reason
    )
    assert isinstance(last, AnswerDone) and last.text == "Some helpful text." and last.route is Route.DIRECT


async def test_truncated_skeleton_drops_the_cut_line() -> None:
    engine = FakeEngine()
    engine.script(
        "You are an organizer",
        " Alpha point\n2. Beta point\n3. Gamma point\n4. Delta is very long and goes on and on",
    )
    plan = await run(
        lambda: pipeline.make_plan(engine, OPEN_Q, Mode.SOT, PlannerSettings(skeleton_max_tokens=16))
    )
    assert [n.title for n in plan.points] == ["Alpha point", "Beta point", "Gamma point"]
    plan = await run(
        lambda: pipeline.make_plan(engine, OPEN_Q, Mode.SOT, PlannerSettings(skeleton_max_tokens=64))
    )
    assert len(plan.points) == 4


@pytest.mark.parametrize("mode", list(Mode))
async def test_answer_in_every_mode(mode: Mode) -> None:
    engine = engine_with_skeletons(delay=0.001)
    engine.script("sort questions", "A")
    events = await answer_events(engine, OPEN_Q, mode)
    # the outline as the skeleton is written, a point a line, then the plan
    outline = [e for e in events if isinstance(e, NodePlanned)]
    assert all(isinstance(e, NodePlanned) for e in events[:len(outline)])
    events = events[len(outline):]
    assert isinstance(events[0], PlanReady) and isinstance(events[-1], AnswerDone)
    plan = events[0].plan
    assert [(e.position, e.node.title) for e in outline] == [(plan.position(n.id), n.title) for n in plan.points
                                                            if plan.route is not Route.DIRECT]
    done = events[-1]
    assert done.text and done.failed == ()
    started = [e for e in events if isinstance(e, NodeStarted)]
    finished = [e for e in events if isinstance(e, NodeFinished)]
    assert len(started) == len(finished) == len(plan.nodes)
    expected_route = {
        Mode.AUTO: Route.PARALLEL,
        Mode.SOT: Route.PARALLEL,
        Mode.SGD: Route.GRAPH,
        Mode.DIRECT: Route.DIRECT,
        Mode.LIVE: Route.DIRECT,  # nothing streamed in: plain decoding
    }[mode]
    assert plan.route is expected_route and done.route is expected_route
    t = done.timings
    assert t.route_s <= t.plan_s <= (t.first_token_s or 0) <= t.total_s
    if mode not in (Mode.DIRECT, Mode.LIVE):
        # the opening, then the points with bold titles a blank line apart (no closing by default)
        opening, first, _, third = done.text.split("\n\n")
        assert opening == "Some helpful text."
        assert first.startswith("1. **Thrill of fear**: ") and third.startswith("3. **Personality differences**: ")
        assert done.usage.role(Role.LARGE).calls >= 1


async def test_expand_an_edited_plan() -> None:
    engine = FakeEngine()
    edited = Plan(nodes=(Node(7, "Intro"), Node(3, "Details", (7,), Difficulty.EASY)), route=Route.GRAPH)

    async def go() -> list[Event]:
        async with aclosing(pipeline.expand(engine, OPEN_Q, edited)) as events:
            return [e async for e in events]

    events = await run(go)
    done = events[-1]
    assert isinstance(done, AnswerDone)
    assert done.text == "1. **Intro**: Some helpful text.\n\n2. **Details**: Some helpful text."
    assert [e.node_id for e in events if isinstance(e, NodeStarted)] == [7, 3]


def test_expand_rejects_bad_input_before_streaming() -> None:
    engine = FakeEngine()
    cyclic = Plan(nodes=(Node(1, "A", (2,)), Node(2, "B", (1,))), route=Route.GRAPH)
    with pytest.raises(PlanInvalid) as info:
        pipeline.expand(engine, OPEN_Q, cyclic)
    assert info.value.field.startswith("plan.nodes[")
    with pytest.raises(PlanInvalid):
        pipeline.expand(
            engine,
            OPEN_Q,
            Plan(tuple(Node(i, "x") for i in range(1, 5)), Route.PARALLEL),
            PlannerSettings(max_nodes=3),
        )
    with pytest.raises(InvalidRequest) as q_info:
        pipeline.expand(engine, "  ", Plan.direct())
    assert q_info.value.field == "question"


async def test_make_plan_rejects_bad_input() -> None:
    engine = FakeEngine()
    with pytest.raises(InvalidRequest) as info:
        await run(lambda: pipeline.make_plan(engine, "", Mode.AUTO))
    assert info.value.field == "question"
    with pytest.raises(InvalidRequest) as info:
        await run(lambda: pipeline.make_plan(engine, "What?", "fastest"))
    assert info.value.field == "mode"


async def test_cancel_while_planning_frees_the_skeleton_sequence() -> None:
    engine = FakeEngine()
    hold = asyncio.Event()  # never set: the skeleton hangs
    engine.script("You are an organizer", PLAIN_SKELETON, hold=hold)

    async def consume() -> None:
        async with aclosing(pipeline.answer(engine, OPEN_Q, Mode.SOT)) as events:
            async for _ in events:
                raise AssertionError("no event before the plan is ready")

    async with asyncio.timeout(5):
        task = asyncio.create_task(consume())
        while not engine.calls:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.open_sequences == 0 and engine.calls[0].closed


@pytest.mark.parametrize(("question", "title", "long"), [
    ("Compare six sorting algorithms and show me an easy C++ code example for each one.", "Bubble sort", True),
    ("How do I reverse a list? Give a snippet.", "Slicing", True),
    ("What are the main differences between Python and JavaScript?", "Python code example", True),
    ("What are the most effective ways to deal with stress?", "Exercise regularly", False),
    ("What are the functions of the liver?", "Filtering the blood", False),
])
def test_a_point_that_carries_code_gets_the_long_budget(question: str, title: str, long: bool) -> None:
    settings = PlannerSettings(long_point_max_tokens=700)
    got = pipeline.budgeted(Node(1, title), question, settings)
    assert got.max_tokens == (700 if long else 0)
    assert pipeline.budgeted(Node(1, title, max_tokens=50), question, settings).max_tokens == 50  # the caller's own


async def test_a_code_question_plans_points_with_their_own_budget() -> None:
    engine = engine_with_skeletons()
    plan = await run(lambda: pipeline.make_plan(engine, "Show me Python code for three sorting algorithms.", "sot"))
    assert {n.max_tokens for n in plan.points} == {PlannerSettings().long_point_max_tokens}
    assert {n.max_tokens for n in plan.nodes if n.part is not Part.POINT} == {0}  # the frame stays one sentence


async def test_the_outline_arrives_before_the_skeleton_ends_and_a_bad_line_is_skipped() -> None:
    engine = FakeEngine(delay=0.01)
    engine.script("You are an organizer", " Thrill of fear\nnot a point, just chatter\n2. Brain chemistry\n"
                                          "3. Personality differences\n")
    events: list[Event] = []
    async with asyncio.timeout(5):
        async with aclosing(pipeline.answer(engine, OPEN_Q, Mode.SOT, ROUTED)) as stream:
            async for event in stream:
                events.append(event)
                if isinstance(event, NodePlanned) and event.position == 1:
                    (skeleton,) = engine.calls  # the skeleton is still being written
                    assert not skeleton.closed
    kinds = [type(e).__name__ for e in events]
    assert kinds[:4] == ["NodePlanned"] * 3 + ["PlanReady"]
    plan = events[3].plan  # type: ignore[union-attr]
    assert [n.title for n in plan.points] == ["Thrill of fear", "Brain chemistry", "Personality differences"]
    assert "1 skeleton line(s) skipped (not a numbered point: 'not a point, just chatter')" in plan.reason
    assert isinstance(events[-1], AnswerDone) and not events[-1].failed


async def close_at(kind: type, answer: AsyncIterator[Event]) -> None:
    """Read an answer until its first event of `kind`, then close it (a client that goes away)."""
    async with asyncio.timeout(5), aclosing(answer) as stream:
        async for event in stream:
            if isinstance(event, kind):
                return


async def test_closing_the_answer_while_the_skeleton_is_written_frees_its_sequence() -> None:
    engine = FakeEngine(delay=0.05)
    engine.script("You are an organizer", " One\n2. Two\n3. Three\n4. Four\n5. Five\n")
    before = asyncio.all_tasks()
    await close_at(NodePlanned, pipeline.answer(engine, OPEN_Q, Mode.SOT, ROUTED))
    assert engine.open_sequences == 0 and all(c.closed for c in engine.calls)
    assert asyncio.all_tasks() - before == set()  # nothing left running


def early_events(events: list[Event]) -> tuple[list[int], list[int]]:
    """(nodes started before PlanReady, nodes started after it)."""
    ready = next(i for i, e in enumerate(events) if isinstance(e, PlanReady))
    before = [e.node_id for e in events[:ready] if isinstance(e, NodeStarted)]
    after = [e.node_id for e in events[ready:] if isinstance(e, NodeStarted)]
    return before, after


async def test_points_start_while_the_skeleton_is_written_within_the_budget() -> None:
    engine = FakeEngine(delay=0.005)
    engine.script("You are an organizer", " Thrill of fear\n2. Brain chemistry\n3. Personality differences\n"
                                          "4. Culture and habit\n", delay=0.02)
    settings = PlannerSettings(early_points=2)
    events = await answer_events(engine, OPEN_Q, Mode.SOT, settings)
    before, after = early_events(events)
    assert before == [1, 2] and sorted(after) == [3, 4, 5]  # two points early, then the rest and the opening
    plan = next(e.plan for e in events if isinstance(e, PlanReady))
    assert "2 point(s) started while the skeleton was written (at most 2: set)" in plan.reason
    # an early point saw the outline as it stood: the point started after line 1 knows no later title
    (first,) = engine.calls_for_point(1)
    assert "1. Thrill of fear" in first.full_prompt and "Brain chemistry" not in first.full_prompt
    # every node started once and ended once; the answer holds all of them
    for node in plan.nodes:
        assert sum(isinstance(e, NodeStarted) and e.node_id == node.id for e in events) == 1
        assert sum(isinstance(e, NodeFinished) and e.node_id == node.id for e in events) == 1
    done = events[-1]
    assert isinstance(done, AnswerDone) and done.failed == () and "4. **Culture and habit**" in done.text
    assert engine.open_sequences == 0


async def test_a_point_that_needs_another_never_starts_early() -> None:
    engine = FakeEngine(delay=0.005)
    engine.script("(needs: 2", " Thrill of fear\n2. Brain chemistry (needs: 1)\n3. Habit\n", delay=0.02)
    events = await answer_events(engine, OPEN_Q, Mode.SGD, PlannerSettings(early_points=5))
    before, _ = early_events(events)
    assert before == [1, 3]


async def test_the_budget_follows_the_measured_batch_cost() -> None:
    from espalier.planner.runner import early_budget

    engine = FakeEngine()
    assert early_budget(engine, PlannerSettings()) == (0, "no measured batch cost")
    engine.batch_cost = ((1, 1.0), (2, 1.9), (4, 2.5))  # a small CPU: a second sequence nearly doubles a step
    assert early_budget(engine, PlannerSettings())[0] == 0
    engine.batch_cost = ((1, 1.0), (2, 1.02), (4, 1.1), (8, 1.2), (16, 1.6))  # a GPU
    budget, why = early_budget(engine, PlannerSettings())
    assert budget == 7 and "1.02x" in why
    assert early_budget(engine, PlannerSettings(early_points=1)) == (1, "set")
    assert early_budget(engine, PlannerSettings(max_concurrency=3))[0] == 3


async def test_closing_the_answer_mid_skeleton_frees_the_early_points_too() -> None:
    engine = FakeEngine(delay=0.05)
    engine.script("You are an organizer", " One\n2. Two\n3. Three\n4. Four\n5. Five\n", delay=0.05)
    before = asyncio.all_tasks()
    await close_at(NodeStarted, pipeline.answer(engine, OPEN_Q, Mode.SOT, PlannerSettings(early_points=3)))
    assert engine.open_sequences == 0 and all(c.closed for c in engine.calls)
    assert any(c.request.prompt.endswith("1. One:") or c.full_prompt.endswith("1. One:") for c in engine.calls)
    assert asyncio.all_tasks() - before == set()  # nothing left running
