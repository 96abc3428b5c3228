"""The caller's system text and earlier turns: kept, fitted, and placed in every prompt that writes the answer."""

from __future__ import annotations

import asyncio
import os
from contextlib import aclosing

import pytest
from engine_fakes import FakeEngine
from test_planner_pipeline import engine_with_skeletons

from espalier.planner import pipeline, prompts
from espalier.planner.conversation import NO_CONTEXT, Conversation
from espalier.planner.engine import InvalidRequest, Message, Role
from espalier.planner.events import AnswerDone, PlanReady
from espalier.planner.live import StreamedPrompt
from espalier.planner.plan import Mode, Node, Plan, PointLength, Route
from espalier.planner.settings import PlannerSettings

SYSTEM = "You are the support assistant of Acme Billing. Always answer in French."
HISTORY = (Message("user", "Which two planets are closest to the Sun?"),
           Message("assistant", "Mercury, then Venus."))
CONTEXT = Conversation(SYSTEM, HISTORY)
QUESTION = "And what about the second one?"
PLAN = Plan.validated([Node(1, "Its atmosphere"), Node(2, "Its surface"), Node(3, "Its rotation")], Route.PARALLEL)


def test_system_messages_join_and_the_other_turns_keep_their_order() -> None:
    context = Conversation.from_messages([Message("system", " Be formal. "), *HISTORY, Message("system", "In French."),
                                          Message("user", "  ")])
    assert context.system == "Be formal.\n\nIn French."
    assert context.history == HISTORY  # an empty turn is dropped, the others kept in order
    assert Conversation.from_messages([]) == NO_CONTEXT and NO_CONTEXT.empty
    with pytest.raises(InvalidRequest):
        Conversation(history=(Message("system", "x"),))  # earlier turns are user or assistant only


def test_fitting_drops_the_oldest_turns_first_and_says_how_many() -> None:
    turns = tuple(Message("user" if i % 2 == 0 else "assistant", f"turn {i} " + "x" * 90) for i in range(6))
    context = Conversation("Be brief.", turns)
    assert context.fitted(10_000) is context and context.noted("route sot") == "route sot"
    fitted = context.fitted(250)  # each turn is 97 characters: the newest two fit
    assert fitted.history == turns[-2:] and fitted.trimmed == 4 and fitted.system == "Be brief."
    assert fitted.noted("route sot") == ("route sot; 4 earlier turn(s) left out, oldest first, to fit "
                                         "planner.history_max_chars")
    assert context.fitted(50).history == ()  # a turn longer than the budget is left out, not cut
    assert fitted.fitted(250).trimmed == 4  # fitting again counts nothing twice


def test_a_router_reads_a_follow_up_after_the_previous_question() -> None:
    assert CONTEXT.about(QUESTION) == f"{HISTORY[0].content}\n{QUESTION}"
    assert NO_CONTEXT.about(QUESTION) == QUESTION
    long = Conversation(history=(Message("user", "y" * 5000),))
    assert long.about(QUESTION).endswith("\n" + QUESTION) and len(long.about(QUESTION)) < 500


def _every_answer_prompt(engine: FakeEngine, context: Conversation) -> dict[str, str]:
    role = Role.LARGE
    prompts_by_stage = {
        "direct": prompts.direct_prompt(engine, role, QUESTION, context).full,
        "skeleton parallel": prompts.skeleton_prompt(engine, role, Route.PARALLEL, QUESTION, context=context),
        "skeleton graph": prompts.skeleton_prompt(engine, role, Route.GRAPH, QUESTION, context=context),
        "live note": prompts.live_note_prompt(engine, role, QUESTION, context),
        "live answer": prompts.live_answer_prompt(engine, role, QUESTION, ["a note"], context),
    }
    for node in PLAN.nodes:
        prompts_by_stage[f"point {node.id}"] = prompts.point_prompt(engine, role, QUESTION, PLAN, node.id,
                                                                    context=context).full
    return prompts_by_stage


def test_the_system_text_and_earlier_turns_reach_every_prompt_that_writes_the_answer() -> None:
    engine = FakeEngine()
    for stage, text in _every_answer_prompt(engine, CONTEXT).items():
        assert SYSTEM in text, stage
        assert all(turn.content in text for turn in HISTORY), stage
        # the question still comes after the conversation, and the planner's own instructions before it
        assert text.index(HISTORY[-1].content) < text.rindex(QUESTION), stage
    for stage, text in _every_answer_prompt(engine, NO_CONTEXT).items():
        assert SYSTEM not in text and HISTORY[0].content not in text and "Standing instructions" not in text, stage
    # the router sees the conversation (to place a follow-up), not the caller's style rules
    routed = prompts.router_prompt(engine, Role.SMALL, QUESTION, CONTEXT)
    assert HISTORY[0].content in routed and SYSTEM not in routed


def test_the_callers_system_text_follows_the_planners_own_instructions() -> None:
    engine = FakeEngine()
    direct = prompts.direct_prompt(engine, Role.LARGE, QUESTION, CONTEXT).full
    assert direct.index(prompts.ANSWER_SYSTEM) < direct.index(prompts.STANDING_LEAD) < direct.index(SYSTEM)
    point = prompts.point_prompt(engine, Role.LARGE, QUESTION, PLAN, 2, context=CONTEXT).full
    assert point.index(prompts.POINT_INSTRUCTIONS[PointLength.DETAILED]) < point.index(SYSTEM)
    # in a skeleton prompt, with the question, as the worked examples of standing instructions show
    skeleton = prompts.skeleton_prompt(engine, Role.LARGE, Route.PARALLEL, QUESTION, context=CONTEXT)
    assert skeleton.rindex(QUESTION) < skeleton.rindex(prompts.STANDING_TAG + SYSTEM)
    assert "Always answer in Spanish." in skeleton and "Always answer in Spanish." not in \
        prompts.skeleton_prompt(engine, Role.LARGE, Route.PARALLEL, QUESTION)


def test_earlier_turns_sit_in_the_points_shared_prefix_and_the_resident_prefixes_still_serve() -> None:
    engine = FakeEngine()
    shared = prompts.point_shared_prefix(engine, Role.LARGE, QUESTION, PLAN, context=CONTEXT)
    assert all(turn.content in shared for turn in HISTORY) and SYSTEM in shared
    for node in PLAN.nodes:  # prefilled once per answer, not once per point
        rendered = prompts.point_prompt(engine, Role.LARGE, QUESTION, PLAN, node.id, context=CONTEXT)
        assert rendered.prefix == shared and HISTORY[0].content not in rendered.tail
    resident = [text for _, text in pipeline.resident_prefixes(engine)]

    def reused(text: str) -> int:  # what the engine forks from a resident prefix: the longest common start
        return max(len(os.path.commonprefix([text, r])) for r in resident)

    with_turns = Conversation(history=HISTORY)  # without system text, all before the caller's first turn
    for text in (prompts.skeleton_prompt(engine, Role.LARGE, Route.PARALLEL, QUESTION, context=with_turns),
                 prompts.point_prompt(engine, Role.LARGE, QUESTION, PLAN, 1, context=with_turns).full,
                 prompts.direct_prompt(engine, Role.LARGE, QUESTION, with_turns).full,
                 prompts.router_prompt(engine, Role.SMALL, QUESTION, with_turns)):
        first_turn = text.index(HISTORY[0].content)
        assert reused(text) >= text.rindex("<|im_start|>user\n", 0, first_turn) + len("<|im_start|>user\n")
    # with standing instructions, the skeleton's resident prefix (which holds their examples) is whole
    graph = prompts.skeleton_prompt(engine, Role.LARGE, Route.GRAPH, QUESTION, context=CONTEXT, difficulty=False)
    assert any(graph.startswith(r) for r in resident)
    # and a point's or a direct answer's keeps the planner's own instructions
    direct = prompts.direct_prompt(engine, Role.LARGE, QUESTION, CONTEXT).full
    assert reused(direct) >= direct.index(prompts.ANSWER_SYSTEM) + len(prompts.ANSWER_SYSTEM)


async def test_every_decoded_prompt_of_a_skeleton_answer_carries_the_conversation() -> None:
    engine = engine_with_skeletons()
    settings = PlannerSettings(closing=True)
    async with asyncio.timeout(5), aclosing(pipeline.answer(engine, QUESTION, Mode.SOT, settings,
                                                             context=CONTEXT)) as events:
        seen = [e async for e in events]
    assert isinstance(seen[-1], AnswerDone) and len(engine.calls) == 1 + 3 + 2  # skeleton, points, frame
    for call in engine.calls:
        assert SYSTEM in call.full_prompt and HISTORY[0].content in call.full_prompt, call.full_prompt[-300:]


async def test_trimmed_turns_are_reported_in_the_plans_reason() -> None:
    turns = tuple(Message("user", f"{i} " + "x" * 100) for i in range(5))
    settings = PlannerSettings(history_max_chars=250)
    engine = engine_with_skeletons()
    plan = await pipeline.make_plan(engine, QUESTION, Mode.SOT, settings, context=Conversation(history=turns))
    assert "3 earlier turn(s) left out" in plan.reason
    assert turns[0].content not in engine.calls[0].full_prompt and turns[-1].content in engine.calls[0].full_prompt
    async with aclosing(pipeline.expand(engine, QUESTION, PLAN, settings, context=Conversation(history=turns))) as ev:
        ready = [e async for e in ev if isinstance(e, PlanReady)]
    assert "3 earlier turn(s) left out" in ready[0].plan.reason


async def test_a_streamed_prompt_prefills_and_notes_with_the_system_text() -> None:
    engine = FakeEngine(roles=(Role.SMALL,))
    settings = PlannerSettings(direct_role=Role.SMALL, live_answer_role=Role.SMALL)
    async with asyncio.timeout(5), StreamedPrompt(engine, Mode.LIVE, settings, context=CONTEXT) as live:
        live.update("Venus is the second planet. What")
        await asyncio.wait_for(live.progress.get(), 2)  # its first sentence prefilled and noted
        live.update("Venus is the second planet. What is its surface like?")
        await live.end()
        async with aclosing(live.answer("Venus is the second planet. What is its surface like?")) as events:
            [e async for e in events]
    assert engine.prefix_opens and all(SYSTEM in p.text for p in engine.prefix_opens)
    assert engine.calls and all(SYSTEM in c.full_prompt for c in engine.calls)  # the note and the answer

