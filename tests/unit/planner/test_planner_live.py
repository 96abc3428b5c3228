"""StreamedPrompt's scheduling logic on the scripted engine: what gets prefilled, noted, released."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

from engine_fakes import FakeEngine

from espalier.planner.engine import Role
from espalier.planner.events import AnswerDone, NodeDelta, PlanReady
from espalier.planner.live import StreamedPrompt
from espalier.planner.plan import Mode, Route
from espalier.planner.settings import PlannerSettings

S1, S2, S3 = "The shop opens at nine. ", "It closes at five. ", "How long is it open?"


async def next_progress(sp: StreamedPrompt):
    async with asyncio.timeout(2):
        return await sp.progress.get()


async def test_each_complete_sentence_is_prefilled_as_the_answer_prompt_head() -> None:
    engine = FakeEngine()
    async with StreamedPrompt(engine, Mode.DIRECT, PlannerSettings()) as sp:
        sp.update(S1)  # not complete yet: "nine." could still become "nine.30"
        sp.update(S1 + "It")
        first = await next_progress(sp)
        sp.update(S1 + S2 + "How")
        second = await next_progress(sp)
        await sp.end()
        opened = [p.text for p in engine.prefix_opens]
    assert (first.sentences, second.sentences) == (1, 2)
    assert len(opened) == 2 and opened[0].endswith("The shop opens at nine.")
    assert opened[1].endswith("It closes at five.") and opened[1].startswith(opened[0])
    assert all(p.closed for p in engine.prefix_opens)  # the old one at once, the last on close
    assert not engine.calls  # plain mode writes nothing while the prompt arrives


async def test_a_fast_typist_gets_one_prefill_for_several_sentences() -> None:
    engine = FakeEngine()
    async with StreamedPrompt(engine, Mode.DIRECT, PlannerSettings()) as sp:
        sp.update(S1 + "It")
        sp.update(S1 + S2 + "H")  # arrives before the worker ran: only the latest text counts
        progress = await next_progress(sp)
        await sp.end()
    assert progress.sentences == 2 and len(engine.prefix_opens) == 1


async def test_live_mode_notes_each_part_and_answers_with_the_notes() -> None:
    engine = FakeEngine()
    engine.script("Notes you wrote", "It is open eight hours.")
    engine.script("five.\n\n(I am still typing", "WAIT")
    engine.script("nine.\n\n(I am still typing", "Opening time is nine.")
    settings = PlannerSettings().replace(direct_role=Role.LARGE, live_answer_role=Role.SMALL)
    async with StreamedPrompt(engine, Mode.LIVE, settings) as sp:
        sp.update(S1 + "It")
        one = await next_progress(sp)
        sp.update(S1 + S2 + "How")
        two = await next_progress(sp)
        sp.update(S1 + S2 + S3)
        await sp.end()
        async with aclosing(sp.answer(S1 + S2 + S3)) as events:
            out = [e async for e in events]
    assert one.note == "Opening time is nine." and two.note == ""  # WAIT is kept in context, not shown
    notes = [c for c in engine.calls if "I am still typing" in c.full_prompt]
    assert [c.request.role for c in notes] == [Role.LARGE, Role.LARGE]
    assert (S1 + S2).strip() + "\n\n(I am still typing" in notes[1].full_prompt  # the question so far, whole
    (final,) = [c for c in engine.calls if "I am still typing" not in c.full_prompt]
    assert final.request.role is Role.SMALL and "WAIT" not in final.full_prompt  # WAIT replies are dropped
    assert (S1 + S2 + S3) + "\n\n(Notes you wrote while I was typing:\n- Opening time is nine.)" in final.full_prompt
    assert isinstance(out[0], PlanReady) and isinstance(out[-1], AnswerDone)
    assert out[-1].route is Route.DIRECT and out[-1].text == "It is open eight hours."
    assert "".join(e.text for e in out if isinstance(e, NodeDelta)) == out[-1].text


async def test_a_revision_of_noted_text_starts_the_notes_over() -> None:
    engine = FakeEngine(default_reply="noted")
    async with StreamedPrompt(engine, Mode.LIVE, PlannerSettings()) as sp:
        sp.update(S1 + "It")
        await next_progress(sp)
        sp.update("The shop opens at ten. " + S2 + "H")
        again = await next_progress(sp)
        await sp.end()
    assert again.sentences == 2
    last = engine.calls[-1].full_prompt
    assert "nine" not in last and "The shop opens at ten. It closes at five." in last
    assert [t for t, _ in sp._turns] == ["The shop opens at ten. It closes at five."]  # the stale note is gone


async def test_closing_without_an_end_cancels_the_work_and_releases_the_prefix() -> None:
    engine = FakeEngine(delay=0.05, default_reply="a long note " * 20)
    sp = StreamedPrompt(engine, Mode.LIVE, PlannerSettings())
    async with sp:
        sp.update(S1 + "It")
        await asyncio.sleep(0.1)  # a note is being written
    assert all(c.closed for c in engine.calls)
    assert all(p.closed for p in engine.prefix_opens)


async def test_a_forced_skeleton_mode_prefills_the_skeleton_prompt_instead() -> None:
    from espalier.planner import prompts

    engine = FakeEngine()
    settings = PlannerSettings().replace(skeleton_role=Role.SMALL)
    async with StreamedPrompt(engine, Mode.SGD, settings) as sp:
        sp.update(S1 + S2 + "How")
        await next_progress(sp)
        await sp.end()
    (opened,) = engine.prefix_opens
    assert opened.role is Role.SMALL
    # the skeleton prompt the plan will use: one model for every point, so no difficulty ratings
    skeleton = prompts.skeleton_prompt(engine, Role.SMALL, Route.GRAPH, S1 + S2 + S3,
                                       difficulty=settings.rates_difficulty)
    assert skeleton.startswith(opened.text) and opened.text.endswith("It closes at five.")


async def test_idle_says_when_the_work_has_caught_up_with_the_text() -> None:
    engine = FakeEngine(delay=0.02, default_reply="a note of a few words")
    sp = StreamedPrompt(engine, Mode.LIVE, PlannerSettings())
    assert sp.idle  # nothing started, nothing to wait for
    async with sp:
        sp.update(S1 + "It")
        assert not sp.idle  # a sentence is in: prefill and a note to come
        async with asyncio.timeout(2):
            await sp.wait_idle()
        assert sp.idle and len(engine.calls) == 1  # the note is written
        sp.update(S1 + "It cl")
        assert not sp.idle  # until the task has looked at the new text
        async with asyncio.timeout(2):
            await sp.wait_idle()
        assert len(engine.calls) == 1  # no new sentence, nothing new to do
        await sp.end()
        assert sp.idle  # the task has stopped
