"""A prompt streamed sentence by sentence on the real small model: same answer, forks, revisions, cleanup."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest
from kv_checks import kv_now, wait_back_to

from espalier.planner import pipeline
from espalier.planner.engine import Role
from espalier.planner.events import AnswerDone
from espalier.planner.live import StreamedPrompt, TypingProgress
from espalier.planner.plan import Mode
from espalier.planner.settings import PlannerSettings

pytestmark = pytest.mark.model

SETTINGS = PlannerSettings().replace(direct_role=Role.SMALL, live_answer_role=Role.SMALL, direct_max_tokens=24,
                                     live_note_tokens=12)
SENTENCES = ("A ferry leaves the north pier at 9:10 every morning. ", "It takes forty minutes to cross the bay. ",
             "On Sundays it leaves half an hour later. ", "Tickets cost four euros for adults. ",
             "When does the Sunday ferry arrive on the other side?")


async def final(events) -> AnswerDone:
    async with aclosing(events) as stream:
        out = [e async for e in stream]
    assert isinstance(out[-1], AnswerDone)
    return out[-1]


async def stream(sp: StreamedPrompt, pieces: list[str]) -> list[TypingProgress]:
    """Send pieces one by one, each once the previous sentences were processed (a slow typist).

    A sentence counts as complete once the next one starts (its full stop could still become
    "9.10" or "example.com"), so each piece after the first completes the one before it.
    """
    seen: list[TypingProgress] = []
    text = ""
    for i, piece in enumerate(pieces):
        text += piece
        sp.update(text)
        if i > 0:
            async with asyncio.timeout(120):
                seen.append(await sp.progress.get())
    return seen


async def test_sentence_by_sentence_prefill_gives_the_whole_prompt_answer(small_engine) -> None:
    before = await kv_now(small_engine)
    question = "".join(SENTENCES)
    whole = await final(pipeline.answer(small_engine, question, Mode.DIRECT, SETTINGS))
    async with StreamedPrompt(small_engine, Mode.DIRECT, SETTINGS) as sp:
        progress = await stream(sp, list(SENTENCES))
        await sp.end()
        streamed = await final(pipeline.answer(small_engine, question, Mode.DIRECT, SETTINGS))
    assert [p.sentences for p in progress] == [1, 2, 3, 4]
    assert progress[-1].tokens_prefilled > progress[0].tokens_prefilled > 0
    assert streamed.text == whole.text
    usage = streamed.usage.role(Role.SMALL)
    assert usage.reused_tokens >= progress[-1].tokens_prefilled - 2  # only the tail was prefilled
    assert whole.usage.role(Role.SMALL).reused_tokens < usage.reused_tokens
    await wait_back_to(small_engine, before)


async def test_a_revision_rolls_the_prefix_back_to_the_first_changed_token(small_engine) -> None:
    before = await kv_now(small_engine)
    revised = SENTENCES[:2] + ("On Sundays it leaves an hour later. ",) + SENTENCES[3:]
    question = "".join(revised)
    whole = await final(pipeline.answer(small_engine, question, Mode.DIRECT, SETTINGS))
    async with StreamedPrompt(small_engine, Mode.DIRECT, SETTINGS) as sp:
        await stream(sp, list(SENTENCES[:4]))  # sentences 1-3 in the cache
        cut = len("".join(SENTENCES[:2]))
        text = "".join(SENTENCES[:4])[:cut] + "".join(revised[2:4])  # the client revises from `cut` on
        sp.update(text + revised[4])  # the revised third sentence completes: rolled back and redone
        async with asyncio.timeout(120):
            after = await sp.progress.get()
        await sp.end()
        streamed = await final(pipeline.answer(small_engine, question, Mode.DIRECT, SETTINGS))
    assert after.sentences == 4 and after.tokens_prefilled > 0
    assert streamed.text == whole.text
    assert streamed.usage.role(Role.SMALL).reused_tokens > whole.usage.role(Role.SMALL).reused_tokens
    await wait_back_to(small_engine, before)


async def test_live_mode_writes_notes_and_answers(small_engine) -> None:
    before = await kv_now(small_engine)
    question = "".join(SENTENCES)
    async with StreamedPrompt(small_engine, Mode.LIVE, SETTINGS) as sp:
        progress = await stream(sp, list(SENTENCES))
        await sp.end()
        done = await final(sp.answer(question))
    assert [p.sentences for p in progress] == [1, 2, 3, 4]
    assert done.text.strip()
    assert done.usage.role(Role.SMALL).reused_tokens > 0  # the answer forked from the noted conversation
    await wait_back_to(small_engine, before)


async def test_an_abandoned_stream_frees_everything(small_engine) -> None:
    before = await kv_now(small_engine)
    sp = StreamedPrompt(small_engine, Mode.LIVE, SETTINGS)
    await sp.__aenter__()
    await stream(sp, list(SENTENCES[:2]))
    sp.update("".join(SENTENCES[:4]))  # work in flight when the client goes away
    await asyncio.sleep(0.05)
    await sp.aclose()
    await wait_back_to(small_engine, before)
