"""The DAG runner over a scripted fake engine: order, concurrency, forwarding, failures, cancellation."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest
from engine_fakes import FakeEngine

from espalier.planner import prompts, runner
from espalier.planner.engine import EngineFault, FinishReason, InvalidRequest, Priority, Role
from espalier.planner.events import (
    AnswerDone,
    Event,
    NodeDelta,
    NodeFailed,
    NodeFinished,
    NodeStarted,
    PlanReady,
)
from espalier.planner.plan import Difficulty, Node, Plan, PlanInvalid, PointLength, Route, framed
from espalier.planner.settings import PlannerSettings

E, H = Difficulty.EASY, Difficulty.HARD
Q = "How can I improve my time management skills?"
EASY_SMALL = PlannerSettings(easy_role=Role.SMALL)  # easy points to the small model (large by default)


def graph(*nodes: Node, route: Route = Route.GRAPH) -> Plan:
    return Plan.validated(nodes, route)


async def collect(
    engine: FakeEngine, plan: Plan, settings: PlannerSettings | None = None, timeout: float = 5
) -> list[Event]:
    async with asyncio.timeout(timeout):
        async with aclosing(runner.run(engine, Q, plan, settings or PlannerSettings())) as events:
            return [e async for e in events]


def check_event_grammar(events: list[Event], plan: Plan) -> None:
    """PlanReady first, AnswerDone last; per node: Started, Delta*, then Finished or Failed."""
    assert isinstance(events[0], PlanReady) and events[0].plan == plan
    assert isinstance(events[-1], AnswerDone)
    assert not any(isinstance(e, (PlanReady, AnswerDone)) for e in events[1:-1])
    for node in plan.nodes:
        mine = [e for e in events[1:-1] if getattr(e, "node_id", None) == node.id]
        assert isinstance(mine[0], NodeStarted), mine
        assert isinstance(mine[-1], (NodeFinished, NodeFailed)), mine
        assert all(isinstance(e, NodeDelta) for e in mine[1:-1]), mine
        if isinstance(mine[-1], NodeFinished):
            assert mine[-1].text == "".join(e.text for e in mine[1:-1] if isinstance(e, NodeDelta))


def index(events: list[Event], kind: type, node_id: int) -> int:
    return next(
        i for i, e in enumerate(events) if isinstance(e, kind) and getattr(e, "node_id", None) == node_id
    )


async def test_dependency_order_and_event_grammar() -> None:
    engine = FakeEngine(delay=0.001)
    plan = graph(
        Node(1, "Set goals"),
        Node(2, "Plan the week", (1,)),
        Node(3, "Use a timer"),
        Node(4, "Review", (2, 3)),
    )
    events = await collect(engine, plan)
    check_event_grammar(events, plan)
    for child, parent in [(2, 1), (4, 2), (4, 3)]:
        assert index(events, NodeFinished, parent) < index(events, NodeStarted, child)
    # independent nodes run together: 1 and 3 both start before either finishes
    assert max(index(events, NodeStarted, 1), index(events, NodeStarted, 3)) < min(
        index(events, NodeFinished, 1), index(events, NodeFinished, 3)
    )
    done = events[-1]
    assert isinstance(done, AnswerDone) and done.failed == () and done.route is Route.GRAPH
    assert done.text.split("\n\n") == [
        "1. **Set goals**: Some helpful text.",
        "2. **Plan the week**: Some helpful text.",
        "3. **Use a timer**: Some helpful text.",
        "4. **Review**: Some helpful text.",
    ]
    assert engine.open_sequences == 0 and all(c.closed for c in engine.calls)


async def test_concurrency_bounded_by_free_slots_and_settings() -> None:
    plan = graph(*(Node(i, f"Point {i}") for i in range(1, 7)), route=Route.PARALLEL)
    engine = FakeEngine(slots=2, delay=0.002)
    events = await collect(engine, plan)
    check_event_grammar(events, plan)
    assert engine.max_in_flight[Role.LARGE] == 2
    engine = FakeEngine(slots=8, delay=0.002)
    await collect(engine, plan, PlannerSettings(max_concurrency=3))
    assert engine.max_in_flight[Role.LARGE] == 3
    engine = FakeEngine(slots=0, delay=0.001)  # no free slot at start: still makes progress, one at a time
    await collect(engine, plan)
    assert engine.max_in_flight[Role.LARGE] == 1


async def test_slots_that_free_up_while_an_answer_runs_are_taken_up() -> None:
    # planned while the engine was full (other answers), the points ran one at a time to the end
    plan = graph(*(Node(i, f"Point {i}") for i in range(1, 7)), route=Route.PARALLEL)
    engine = FakeEngine(slots=0, delay=0.1)  # a point outlasts a poll of the engine's free slots
    hold = asyncio.Event()
    engine.script_point(1, "first point", hold=hold, delay=0.001)
    answer = asyncio.create_task(collect(engine, plan))
    while not engine.calls:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.3)  # several polls: still one at a time while nothing is free
    assert len(engine.calls) == 1
    engine.slots = 4  # the other answers finished
    hold.set()
    events = await answer
    check_event_grammar(events, plan)
    assert engine.max_in_flight[Role.LARGE] == 4


async def test_forwarding_and_shared_prefix() -> None:
    engine = FakeEngine()
    engine.script_point(1, "Write down three goals.")
    engine.script_point(2, "Block time for each goal.")
    plan = graph(Node(1, "Set goals"), Node(2, "Plan the week", (1,)), Node(3, "Review", (1, 2)))
    events = await collect(engine, plan)
    starts = {e.node_id: e for e in events if isinstance(e, NodeStarted)}
    assert starts[1].parents == () and starts[2].parents == (1,) and starts[3].parents == (1, 2)
    (p,) = engine.prefix_opens  # one prefix for the one role in use, forked by every point
    assert p.role is Role.LARGE and Q in p.text and "3. Review\n" in p.text
    assert p.text.endswith("\n")  # up to the assistant's turn: a clean token boundary
    assert engine.prefix_closes == [p]
    for call in engine.calls:
        assert call.request.prefix is p and call.full_prompt.startswith(p.text)
        assert Q not in call.request.prompt  # the tail holds only what differs
    (three,) = engine.calls_for_point(3)
    assert "1. Set goals: Write down three goals." in three.request.prompt
    assert "2. Plan the week: Block time for each goal." in three.request.prompt
    (one,) = engine.calls_for_point(1)
    assert one.request.prompt == "1. Set goals:"  # only the heading is prefilled per point
    # a detailed point may take several lines: it ends where another part of the outline starts
    assert "\n" not in one.request.sampling.stop and "\n2" in one.request.sampling.stop
    assert " 2. " in one.request.sampling.stop and "\nClosing" in one.request.sampling.stop
    assert one.request.sampling.max_tokens == PlannerSettings().point_max_tokens
    assert one.request.sampling.min_tokens == PlannerSettings().point_min_tokens > 0


async def test_difficulty_picks_the_role_and_single_role_fallback() -> None:
    plan = graph(Node(1, "Easy one", (), E), Node(2, "Hard one", (), H), Node(3, "Easy two", (), E))
    engine = FakeEngine()
    events = await collect(engine, plan)  # by default every point is the large model's
    assert {e.role for e in events if isinstance(e, NodeStarted)} == {Role.LARGE}
    engine = FakeEngine()
    events = await collect(engine, plan, EASY_SMALL)
    roles = {e.node_id: e.role for e in events if isinstance(e, NodeStarted)}
    assert roles == {1: Role.SMALL, 2: Role.LARGE, 3: Role.SMALL}
    assert [p.role for p in engine.prefix_opens] == [Role.SMALL]  # the large role runs one point: no prefix
    assert engine.calls_for_point(2)[0].request.prefix is None
    engine = FakeEngine(roles=[Role.SMALL])
    events = await collect(engine, plan, EASY_SMALL)
    assert {e.role for e in events if isinstance(e, NodeStarted)} == {Role.SMALL}
    done = events[-1]
    assert isinstance(done, AnswerDone)
    assert done.usage.role(Role.SMALL).calls == 3 and done.usage.role(Role.LARGE).calls == 0
    swapped = PlannerSettings(easy_role=Role.LARGE, hard_role=Role.SMALL)
    events = await collect(FakeEngine(), plan, swapped)
    assert {e.node_id: e.role for e in events if isinstance(e, NodeStarted)}[1] is Role.LARGE


async def test_a_role_chosen_by_the_caller_wins_over_difficulty() -> None:
    plan = graph(Node(1, "Hard but small", (), H, Role.SMALL), Node(2, "Easy but large", (), E, Role.LARGE),
                 Node(3, "Hard", (), H))
    events = await collect(FakeEngine(), plan)
    assert {e.node_id: e.role for e in events if isinstance(e, NodeStarted)} == {
        1: Role.SMALL, 2: Role.LARGE, 3: Role.LARGE}
    with pytest.raises(PlanInvalid, match="role"):
        graph(Node(1, "Bad role", (), H, "medium"))  # type: ignore[arg-type]


async def test_one_node_failing_keeps_the_others() -> None:
    engine = FakeEngine(delay=0.001)
    engine.script_point(2, "Half of the text and then", fail_after=3)
    plan = graph(Node(1, "Alpha"), Node(2, "Beta"), Node(3, "Gamma", (2,)))
    events = await collect(engine, plan)
    check_event_grammar(events, plan)
    failed = [e for e in events if isinstance(e, NodeFailed)]
    assert len(failed) == 1 and failed[0].node_id == 2
    assert failed[0].error == "EngineFault" and "injected" in failed[0].reason
    # tried twice: the second attempt continued the text the first one streamed, and failed too
    _, second = engine.calls_for_point(2)
    assert second.full_prompt.endswith("2. Beta:Half of the") and second.request.request_id == ""
    assert failed[0].partial_text == "Half of the text and then"
    starts = {e.node_id: e for e in events if isinstance(e, NodeStarted)}
    assert starts[3].parents == ()  # a failed parent forwards nothing, but its child still runs
    done = events[-1]
    assert isinstance(done, AnswerDone) and done.failed == (2,)
    lines = done.text.split("\n\n")
    assert lines[0] == "1. **Alpha**: Some helpful text."
    assert lines[1] == "2. **Beta**: Half of the text and then [point 2 failed: decoder fault injected]"
    assert lines[2] == "3. **Gamma**: Some helpful text."
    assert engine.open_sequences == 0


async def test_the_opening_and_closing_run_with_the_points_and_frame_the_answer() -> None:
    engine = FakeEngine(delay=0.001)
    engine.script_point("Opening:", " Here is how.")
    engine.script_point("Closing:", "Half a sum", fail_after=2)
    plan = graph(*framed([Node(1, "Alpha"), Node(2, "Beta", (1,))]))
    events = await collect(engine, plan)
    check_event_grammar(events, plan)
    # the opening starts with the first wave of points (it needs nothing), not after them
    assert index(events, NodeStarted, 3) < index(events, NodeFinished, 1)
    # the closing starts once every point is done and is shown their text, so it sums up what they say
    closing = next(e for e in events if isinstance(e, NodeStarted) and e.node_id == 4)
    assert closing.parents == (1, 2) and index(events, NodeFinished, 2) < index(events, NodeStarted, 4)
    first_try = engine.calls_for_point("Closing:")[0]
    assert "1. Alpha: Some helpful text.\n2. Beta: Some helpful text.\nClosing:" in first_try.full_prompt
    done = events[-1]
    assert isinstance(done, AnswerDone) and done.failed == (4,)
    assert done.text.split("\n\n") == [
        "Here is how.",
        "1. **Alpha**: Some helpful text.",
        "2. **Beta**: Some helpful text.",
        "Half a sum [closing failed: decoder fault injected]",  # tried twice, the second one continued
    ]
    assert {c.request.role for c in engine.calls_for_point("Opening:")} == {Role.LARGE}
    # an opening that writes nothing, twice, is reported failed but leaves no gap in the answer
    quiet = FakeEngine()
    quiet.script_point("Opening:", "")
    events = await collect(quiet, plan)
    assert events[-1].text.startswith("1. **Alpha**: ")  # type: ignore[union-attr]
    assert [e.node_id for e in events if isinstance(e, NodeFailed)] == [3]


async def test_engine_reported_error_finish_is_a_failure() -> None:
    engine = FakeEngine()
    engine.script_point(1, "Partial", finish=FinishReason.ERROR)
    plan = graph(Node(1, "Alpha"), Node(2, "Beta"))
    events = await collect(engine, plan)
    (failed,) = [e for e in events if isinstance(e, NodeFailed)]
    assert failed.node_id == 1 and failed.error == "error" and failed.partial_text == "Partial"


async def test_length_finish_is_a_normal_finish() -> None:
    engine = FakeEngine()
    engine.script(prompts.POINT_INSTRUCTIONS[PointLength.DETAILED], "one two three four five six")
    events = await collect(engine, graph(Node(1, "A"), Node(2, "B")), PlannerSettings(point_max_tokens=2))
    finished = [e for e in events if isinstance(e, NodeFinished)]
    assert [(e.text, e.finish, e.tokens) for e in finished] == [("one two", FinishReason.LENGTH, 2)] * 2


async def test_whole_request_cancellation_frees_everything() -> None:
    engine = FakeEngine(delay=0.001)
    hold = asyncio.Event()  # never set: nodes 1 and 2 hang mid-way
    engine.script_point(1, "stuck", hold=hold)
    engine.script_point(2, "stuck too", hold=hold)
    plan = graph(Node(1, "A"), Node(2, "B"), Node(3, "C"), Node(4, "D", (1, 3)))
    seen: list[Event] = []

    async def consume() -> None:
        async with aclosing(runner.run(engine, Q, plan, PlannerSettings())) as events:
            async for e in events:
                seen.append(e)

    async def main() -> None:
        before = asyncio.all_tasks()
        async with asyncio.timeout(5):
            task = asyncio.create_task(consume())
            while not any(isinstance(e, NodeFinished) and e.node_id == 3 for e in seen):
                await asyncio.sleep(0.001)
            assert engine.open_sequences == 2
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            else:
                raise AssertionError("cancellation was swallowed")
            assert task.cancelled()
            assert engine.open_sequences == 0 and all(c.closed for c in engine.calls)
            assert len(engine.prefix_closes) == len(engine.prefix_opens) == 1
            assert not engine.calls_for_point(4)  # never started
            assert asyncio.all_tasks() - before == set()  # nothing left running

    await main()
    assert not any(isinstance(e, AnswerDone) for e in seen)


async def test_closing_the_iterator_early_cancels_the_nodes() -> None:
    engine = FakeEngine(delay=0.01)
    plan = graph(*(Node(i, f"P{i}") for i in range(1, 5)), route=Route.PARALLEL)

    async def main() -> None:
        before = asyncio.all_tasks()
        async with asyncio.timeout(5):
            async with aclosing(runner.run(engine, Q, plan, PlannerSettings())) as events:
                async for e in events:
                    if isinstance(e, NodeDelta):
                        break
            assert engine.open_sequences == 0
            assert engine.prefix_closes == engine.prefix_opens
            assert asyncio.all_tasks() - before == set()  # nothing left running

    await main()


async def test_prefix_refused_falls_back_to_whole_prompts() -> None:
    engine = FakeEngine()
    engine.fail_prefix = True
    events = await collect(engine, graph(Node(1, "A"), Node(2, "B")))
    assert isinstance(events[-1], AnswerDone) and events[-1].failed == ()
    assert all(
        c.request.prefix is None and c.full_prompt.startswith("<|im_start|>system") for c in engine.calls
    )


async def test_direct_plan_is_one_plain_node() -> None:
    engine = FakeEngine()
    engine.script("2+2", "It is 4.")
    events = await collect(engine, Plan.direct())
    check_event_grammar(events, Plan.direct())
    (call,) = engine.calls
    assert call.request.prefix is None and call.request.sampling.stop == ()
    assert call.request.sampling.max_tokens == PlannerSettings().direct_max_tokens
    assert call.request.priority is Priority.FIRST  # the only sequence of the answer
    assert "Outline" not in call.full_prompt and engine.prefix_opens == []
    done = events[-1]
    assert isinstance(done, AnswerDone) and done.text == "Some helpful text." and done.route is Route.DIRECT


async def test_usage_and_timings() -> None:
    engine = FakeEngine(delay=0.001)
    events = await collect(engine, graph(Node(1, "A", (), E), Node(2, "B"), Node(3, "C")), EASY_SMALL)
    done = events[-1]
    assert isinstance(done, AnswerDone)
    large, small = done.usage.role(Role.LARGE), done.usage.role(Role.SMALL)
    assert (large.calls, small.calls) == (2, 1)
    assert large.completion_tokens == 6 and small.completion_tokens == 3 and done.usage.completion_tokens == 9
    assert large.reused_tokens > 0 and small.reused_tokens == 0 and large.prompt_tokens > large.reused_tokens
    t = done.timings
    assert t.first_token_s is not None and 0 <= t.plan_s <= t.first_token_s <= t.total_s
    deltas = [e for e in events if isinstance(e, NodeDelta)]
    assert sum(e.tokens for e in deltas) == 9


async def test_driver_error_is_raised_from_the_iterator() -> None:
    engine = FakeEngine(roles=[])

    async def main() -> None:
        async with asyncio.timeout(5):
            async with aclosing(runner.run(engine, Q, graph(Node(1, "A"), Node(2, "B")))) as events:
                first = await anext(events)
                assert isinstance(first, PlanReady)
                try:
                    await anext(events)
                except Exception as exc:  # noqa: BLE001
                    assert type(exc).__name__ == "RoleNotLoaded"
                else:
                    raise AssertionError("expected RoleNotLoaded")

    await main()


async def test_engine_fault_class_is_reported() -> None:
    engine = FakeEngine()
    engine.script_point(1, "x", fail_after=0, error=EngineFault("boom"))
    events = await collect(engine, graph(Node(1, "A"), Node(2, "B")))
    (failed,) = [e for e in events if isinstance(e, NodeFailed)]
    assert (failed.reason, failed.error, failed.partial_text) == ("boom", "EngineFault", "")
    assert "1. **A**: [point 1 failed: boom]" in events[-1].text  # type: ignore[union-attr]


async def test_the_speculation_setting_reaches_every_point_request() -> None:
    from espalier.planner.engine import Speculation

    engine = FakeEngine()
    plan = graph(Node(1, "Set goals"), Node(2, "Review", (1,)))
    await collect(engine, plan, PlannerSettings().replace(speculation=Speculation.OFF))
    assert [c.request.speculation for c in engine.calls] == [Speculation.OFF, Speculation.OFF]
    engine = FakeEngine()
    await collect(engine, graph(Node(1, "Only"), route=Route.DIRECT))
    assert [c.request.speculation for c in engine.calls] == [Speculation.DEFAULT]


async def test_point_length_reaches_every_point_prompt() -> None:
    engine = FakeEngine()
    plan = graph(Node(1, "Set goals"), Node(2, "Plan the week"))
    await collect(engine, plan, PlannerSettings(point_length=PointLength.DETAILED))
    (p,) = engine.prefix_opens
    assert prompts.POINT_INSTRUCTIONS[PointLength.DETAILED] in p.text
    with pytest.raises(InvalidRequest, match="planner.point_length"):
        PlannerSettings(point_length="long").validate()  # type: ignore[arg-type]


async def test_an_empty_point_is_retried_once_and_then_reported_failed() -> None:
    engine = FakeEngine()
    replies = iter(["  ", "Now it says something."])
    engine.script_point(1, lambda prompt: next(replies))  # empty (only blanks) the first time
    engine.script_point(2, "")  # empty both times
    events = await collect(engine, graph(Node(1, "Alpha"), Node(2, "Beta"), Node(3, "Gamma")))
    first, second = engine.calls_for_point(1)
    # the retry insists harder on text before the point may end
    assert second.request.sampling.min_tokens > first.request.sampling.min_tokens > 0
    finished = {e.node_id: e for e in events if isinstance(e, NodeFinished)}
    assert finished[1].text.strip() == "Now it says something."
    (failed,) = [e for e in events if isinstance(e, NodeFailed)]
    assert (failed.node_id, failed.error) == (2, "empty") and len(engine.calls_for_point(2)) == 2
    assert "2. **Beta**: [point 2 failed: the point came back empty twice]" in events[-1].text  # type: ignore[union-attr]
    assert len(engine.calls_for_point(3)) == 1  # a point that wrote text is not retried


async def test_an_invalid_request_is_not_retried() -> None:
    engine = FakeEngine()
    engine.script_point(1, "x", fail_after=0, error=InvalidRequest("prompt too long", field="prompt"))
    events = await collect(engine, graph(Node(1, "A"), Node(2, "B")))
    (failed,) = [e for e in events if isinstance(e, NodeFailed)]
    assert failed.error == "InvalidRequest" and len(engine.calls_for_point(1)) == 1


async def test_the_opening_ends_at_its_first_sentence() -> None:
    engine = FakeEngine()
    engine.script_point("Opening:", " Time is the one thing you cannot buy back. So here is how to spend it.")
    plan = graph(*framed([Node(1, "Alpha"), Node(2, "Beta")], closing=False))
    events = await collect(engine, plan)
    check_event_grammar(events, plan)
    opening = next(e for e in events if isinstance(e, NodeFinished) and e.node_id == 3)
    assert opening.text == " Time is the one thing you cannot buy back." and opening.finish is FinishReason.STOP
    assert events[-1].text.startswith("Time is the one thing you cannot buy back.\n\n1. **Alpha**")  # type: ignore[union-attr]
    (call,) = engine.calls_for_point("Opening:")
    assert call.request.sampling.stop == ("\n",) and call.request.sampling.max_tokens == prompts.FRAME_MAX_TOKENS
    assert call.request.priority is Priority.FIRST  # what a reader sees first
    assert {c.request.priority for c in engine.calls_for_point(1) + engine.calls_for_point(2)} == {Priority.NORMAL}


async def test_a_node_budget_wins_over_the_point_budget() -> None:
    engine = FakeEngine()
    plan = graph(Node(1, "Bubble sort in C++", max_tokens=700), Node(2, "Summary"))
    await collect(engine, plan, PlannerSettings(point_max_tokens=100))
    assert engine.calls_for_point(1)[0].request.sampling.max_tokens == 700
    assert engine.calls_for_point(2)[0].request.sampling.max_tokens == 100
    with pytest.raises(PlanInvalid, match="max_tokens"):
        graph(Node(1, "Too long", max_tokens=10**6))


async def test_a_brief_point_is_one_line() -> None:
    engine = FakeEngine()
    await collect(engine, graph(Node(1, "A"), Node(2, "B")), PlannerSettings(point_length=PointLength.BRIEF))
    assert {c.request.sampling.stop for c in engine.calls} == {("\n",)}


async def test_a_point_that_opens_with_code_or_a_list_starts_under_its_heading() -> None:
    engine = FakeEngine()
    engine.script_point(1, "```python\nprint('hi')\n```")
    engine.script_point(2, "- one\n- two")
    engine.script_point(3, "Plain text.")
    events = await collect(engine, graph(Node(1, "Code"), Node(2, "List"), Node(3, "Prose")))
    assert events[-1].text.split("\n\n") == [  # type: ignore[union-attr]
        "1. **Code**:\n```python\nprint('hi')\n```", "2. **List**:\n- one\n- two", "3. **Prose**: Plain text."]


async def test_a_part_that_falls_into_a_loop_ends_there() -> None:
    # what the large model wrote for "They use filler words", to the end of its budget
    fillers = '"um", "uh", "like", "ummm", "ahhh", "yeah", "no", "right", "wrong", "okay", "oh", "well",'
    engine = FakeEngine()
    engine.script_point(1, " Fillers give it away: " + " ".join([fillers] * 20))
    plan = graph(Node(1, "They use filler words"), Node(2, "They avoid eye contact"))
    events = await collect(engine, plan)
    check_event_grammar(events, plan)
    looped, other = (next(e for e in events if isinstance(e, NodeFinished) and e.node_id == n) for n in (1, 2))
    assert looped.finish is FinishReason.STOP and looped.tokens == 4 + 2 * 12
    assert looped.text == " Fillers give it away: " + " ".join([fillers] * 2)
    assert other.text.strip() == "Some helpful text."
    # a short sentence is a loop once it has come 4 times (24 words): the check spares short repeats
    engine = FakeEngine()
    engine.script("time management", "Use a timer. " + "Write it down, then do it. " * 40)
    direct = await collect(engine, Plan.direct())
    assert direct[-1].text == "Use a timer. " + "Write it down, then do it. " * 3 + "Write it down, then do it."  # type: ignore[union-attr]
