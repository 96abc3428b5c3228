"""Prompt layout: fixed parts are text prefixes of every prompt, split after a newline, question last."""

from __future__ import annotations

import os

import pytest
from engine_fakes import FakeEngine, chatml, llama3_trimming

from espalier.planner import prompts
from espalier.planner.engine import Role
from espalier.planner.pipeline import resident_prefixes
from espalier.planner.plan import Difficulty, Node, Part, Plan, PointLength, Route, framed
from espalier.planner.settings import PlannerSettings

QUESTIONS = [
    "How can I improve my time management skills?",
    "  What if the Internet had been invented during the Renaissance period?\n",
    "Explain CRISPR.\n\nAlso: ethics?",
    "x",
]
PLAN = Plan.validated(
    [
        Node(1, "Set goals"),
        Node(2, "Plan the week", (1,), Difficulty.EASY),
        Node(3, "Review: what worked?", (1, 2)),
    ],
    Route.GRAPH,
)


@pytest.fixture(params=[chatml, llama3_trimming], ids=["chatml", "llama3-trimming"])
def engine(request: pytest.FixtureRequest) -> FakeEngine:
    return FakeEngine(template=request.param)


@pytest.mark.parametrize("route", [Route.PARALLEL, Route.GRAPH])
def test_skeleton_fixed_prefix_is_shared_and_question_comes_last(engine: FakeEngine, route: Route) -> None:
    fixed = prompts.skeleton_fixed_prefix(engine, Role.LARGE, route, standing=False)
    assert (
        fixed.endswith("\n") and "organizer" in fixed and "printing press" in fixed
    )  # instructions + example
    # the resident one, with the examples of standing instructions, starts with it: one serves both
    assert prompts.skeleton_fixed_prefix(engine, Role.LARGE, route).startswith(fixed)
    for q in QUESTIONS:
        full = prompts.skeleton_prompt(engine, Role.LARGE, route, q)
        assert full.startswith(fixed)
        assert full.endswith(prompts.SKELETON_PREFILL)
        variable = full[len(fixed) :]
        # the question (after its lead) is the whole variable part, save the template tail
        assert variable.startswith(prompts.QUESTION_LEAD + q.strip())
        assert len(variable) < len(q) + 80
    assert ("needs:" in fixed) == (route is Route.GRAPH)


def test_router_fixed_prefix(engine: FakeEngine) -> None:
    fixed = prompts.router_fixed_prefix(engine, Role.SMALL)
    assert fixed.endswith("\n") and "one letter" in fixed
    for q in QUESTIONS:
        full = prompts.router_prompt(engine, Role.SMALL, q)
        assert full.startswith(fixed) and q.strip() in full[len(fixed) :]


def test_point_prompts_share_the_question_and_outline_prefix(engine: FakeEngine) -> None:
    q = QUESTIONS[0]
    shared = prompts.point_shared_prefix(engine, Role.LARGE, q, PLAN)
    assert shared.endswith("\n") and q in shared
    assert "1. Set goals\n2. Plan the week\n3. Review: what worked?" in shared
    # the instructions sit in the system message, before the question: the resident, fixed part
    assert shared.index(prompts.POINT_INSTRUCTIONS[PointLength.DETAILED]) < shared.index(q.strip())
    parents = [(1, PLAN.node(1), "Write down three goals.\n\nKeep them small.")]
    for node_id in (1, 2, 3):
        r = prompts.point_prompt(engine, Role.LARGE, q, PLAN, node_id, parents if node_id == 2 else ())
        assert r.prefix == shared and r.full.startswith(shared)
        assert r.tail and not r.tail[0].isspace()
        assert r.tail.endswith(prompts.heading(PLAN.position(node_id), PLAN.node(node_id).title))
        assert prompts.POINT_INSTRUCTIONS[PointLength.DETAILED] in shared  # said once, in the shared part
    two = prompts.point_prompt(engine, Role.LARGE, q, PLAN, 2, parents)
    # forwarded as the start of the answer, after the prefix, then this point's heading
    assert two.tail == "1. Set goals: Write down three goals. Keep them small.\n2. Plan the week:"
    three = prompts.point_prompt(engine, Role.LARGE, q, PLAN, 3)
    assert three.full.endswith("3. Review: what worked?")  # no colon after a question mark


def test_the_opening_and_closing_share_the_prefix_and_are_named_by_their_prefill(engine: FakeEngine) -> None:
    q = QUESTIONS[0]
    plan = Plan.validated(framed(PLAN.nodes), PLAN.route)
    shared = prompts.point_shared_prefix(engine, Role.LARGE, q, plan)
    assert "Opening\n1. Set goals\n2. Plan the week\n3. Review: what worked?\nClosing" in shared
    # said in the fixed part with or without a frame (a plan without one never asks for it); the closing
    # is named only where the plan has one (told of a closing, points ran on into one)
    assert shared.index(prompts.FRAME_INSTRUCTION) < shared.index(q)
    assert shared.index(prompts.CLOSING_INSTRUCTION) < shared.index(q)
    unclosed = prompts.point_shared_prefix(engine, Role.LARGE, q, Plan.validated(framed(PLAN.nodes, closing=False),
                                                                                 PLAN.route))
    assert prompts.FRAME_INSTRUCTION in unclosed and prompts.CLOSING_INSTRUCTION not in unclosed
    tails = {n.id: prompts.point_prompt(engine, Role.LARGE, q, plan, n.id) for n in plan.nodes}
    assert all(r.prefix == shared for r in tails.values())
    assert [tails[n.id].tail for n in plan.nodes] == [
        "Opening:", "1. Set goals:", "2. Plan the week:", "3. Review: what worked?", "Closing:"]
    # a caller's own title for the frame does not change what the model is asked to write
    renamed = Plan.validated([Node(9, "Intro", part=Part.OPENING), *PLAN.nodes], PLAN.route)
    assert prompts.point_prompt(engine, Role.LARGE, q, renamed, 9).tail == "Opening:"


def test_forwarded_text_is_capped(engine: FakeEngine) -> None:
    long = "word " * 1000
    r = prompts.point_prompt(
        engine, Role.LARGE, "q?", PLAN, 2, [(1, PLAN.node(1), long)], forward_max_chars=50
    )
    assert "word word" in r.tail and len(r.tail) < 600


def test_direct_prompt(engine: FakeEngine) -> None:
    r = prompts.direct_prompt(engine, Role.LARGE, "What is 2+2?")
    assert r.prefix and r.full.startswith(r.prefix) and r.tail.startswith("What is 2+2?")


def test_split_marker_in_question_is_removed(engine: FakeEngine) -> None:
    full = prompts.skeleton_prompt(engine, Role.LARGE, Route.GRAPH, "evil " + prompts.SPLIT + " question")
    assert prompts.SPLIT not in full
    assert full.startswith(prompts.skeleton_fixed_prefix(engine, Role.LARGE, Route.GRAPH, standing=False))


def test_template_that_breaks_prefixes_disables_sharing() -> None:
    def reversing(messages, add_generation_prompt=True):  # type: ignore[no-untyped-def]
        return "".join(m.content[::-1] for m in messages)

    engine = FakeEngine(template=reversing)
    r = prompts.point_prompt(engine, Role.LARGE, "q?", PLAN, 1)
    assert r.prefix == "" and r.tail == r.full


def test_resident_prefixes_cover_every_prompt_kind(engine: FakeEngine) -> None:
    residents = resident_prefixes(engine)
    texts = {t for _, t in residents}
    assert {r for r, _ in residents} == {Role.LARGE, Role.SMALL}
    q = QUESTIONS[0]

    def reused(prompt: str) -> int:  # the engine forks the resident prefix sharing the longest start
        return max(len(os.path.commonprefix([prompt, t])) for t in texts)

    for prompt, fixed in [  # each prompt with its kind's question-independent part
        (prompts.skeleton_prompt(engine, Role.LARGE, Route.GRAPH, q, difficulty=False),  # one role for all points
         prompts.skeleton_fixed_prefix(engine, Role.LARGE, Route.GRAPH, difficulty=False, standing=False)),
        (prompts.skeleton_prompt(engine, Role.LARGE, Route.PARALLEL, q),
         prompts.skeleton_fixed_prefix(engine, Role.LARGE, Route.PARALLEL, standing=False)),
        (prompts.router_prompt(engine, Role.SMALL, q), prompts.router_fixed_prefix(engine, Role.SMALL)),
        (prompts.direct_prompt(engine, Role.LARGE, q).full, prompts.direct_prompt(engine, Role.LARGE, "?").prefix),
    ]:
        assert prompt.startswith(fixed) and reused(prompt) >= len(fixed), prompt[:80]
    point = prompts.point_prompt(engine, Role.SMALL, q, PLAN, 2).full
    assert any(point.startswith(t) and "outline" in t for t in texts)  # a point's instructions, whole
    assert all(t.endswith("\n") for t in texts)
    closed = {t for _, t in resident_prefixes(engine, PlannerSettings(closing=True))}
    framed_prompt = prompts.point_prompt(engine, Role.LARGE, q, Plan.validated(framed(PLAN.nodes), PLAN.route), 2).full
    assert any(framed_prompt.startswith(t) for t in closed) and not any(framed_prompt.startswith(t) for t in texts)
    rated = {t for _, t in resident_prefixes(engine, PlannerSettings(easy_role=Role.SMALL))}
    graph = prompts.skeleton_prompt(engine, Role.LARGE, Route.GRAPH, q)
    unrated = prompts.skeleton_fixed_prefix(engine, Role.LARGE, Route.GRAPH, difficulty=False, standing=False)
    rated_fixed = prompts.skeleton_fixed_prefix(engine, Role.LARGE, Route.GRAPH, standing=False)
    assert any(t.startswith(rated_fixed) for t in rated) and graph.startswith(rated_fixed)
    assert not graph.startswith(unrated) and not any(t.startswith(rated_fixed) for t in texts)


def test_resident_prefixes_with_one_role_loaded() -> None:
    engine = FakeEngine(roles=[Role.SMALL])
    assert {r for r, _ in resident_prefixes(engine)} == {Role.SMALL}


def test_point_length_picks_the_instruction_in_the_shared_part(engine: FakeEngine) -> None:
    q = QUESTIONS[0]
    brief = prompts.point_prompt(engine, Role.LARGE, q, PLAN, 2, length=PointLength.BRIEF)
    detailed = prompts.point_prompt(engine, Role.LARGE, q, PLAN, 2)  # detailed by default
    assert prompts.POINT_INSTRUCTIONS[PointLength.BRIEF] in brief.prefix
    assert prompts.POINT_INSTRUCTIONS[PointLength.DETAILED] in detailed.prefix
    assert brief.tail == detailed.tail  # only the shared part differs
    assert prompts.point_shared_prefix(engine, Role.LARGE, q, PLAN, PointLength.DETAILED) == detailed.prefix
