"""The embedded engine on the real small model: batching, forks, cancellation, bad input."""

from __future__ import annotations

import asyncio

import pytest

from espalier.planner.engine import (
    Chunk,
    FinishReason,
    GenerateRequest,
    InvalidRequest,
    Message,
    Role,
    RoleNotLoaded,
    Sampling,
)

pytestmark = pytest.mark.model

QUESTIONS = ("Name three fruits.", "What is a river?", "Give two tips for sleeping well.",
             "Describe a cat in one sentence.")


def chat(engine, text: str) -> str:
    return engine.chat_prompt(Role.SMALL, [Message("user", text)])


async def collect(engine, request: GenerateRequest) -> tuple[str, int, Chunk]:
    parts: list[str] = []
    tokens = 0
    last = None
    async with asyncio.timeout(120):
        async for chunk in engine.generate(request):
            parts.append(chunk.text)
            tokens += chunk.tokens
            last = chunk
    assert last is not None and last.finish is not None
    return "".join(parts), tokens, last


async def wait_idle(engine) -> None:
    async with asyncio.timeout(10):
        while engine.stats().slots_busy or engine.stats().queue_depth:
            await asyncio.sleep(0.02)


async def test_four_sequences_together_match_each_alone(small_engine):
    sampling = Sampling(max_tokens=24)
    requests = [GenerateRequest(chat(small_engine, q), Role.SMALL, sampling) for q in QUESTIONS]
    alone = [await collect(small_engine, r) for r in requests]
    together = await asyncio.gather(*(collect(small_engine, r) for r in requests))
    for (text_a, n_a, _), (text_t, n_t, _) in zip(alone, together):
        assert n_a > 0 and text_a.strip()
        assert (text_t, n_t) == (text_a, n_a)


async def test_forked_child_matches_the_full_prompt(small_engine):
    shared = chat(small_engine, "Here are notes about rivers: they flow to the sea.")[:-len("<|im_start|>assistant\n")]
    assert shared.endswith("\n")
    tails = ["<|im_start|>user\nSay what rivers flow to.<|im_end|>\n<|im_start|>assistant\n",
             "<|im_start|>user\nSay it in French.<|im_end|>\n<|im_start|>assistant\n"]
    sampling = Sampling(max_tokens=16)
    plain = [await collect(small_engine, GenerateRequest(shared + t, Role.SMALL, sampling)) for t in tails]
    before = small_engine.stats().role(Role.SMALL)
    async with small_engine.prefix(Role.SMALL, shared) as prefix:
        n_prefix = await prefix.ready()
        forked = await asyncio.gather(*(collect(small_engine, GenerateRequest(t, Role.SMALL, sampling, prefix=prefix))
                                        for t in tails))
    after = small_engine.stats().role(Role.SMALL)
    for (text_p, n_p, _), (text_f, n_f, last) in zip(plain, forked):
        assert (text_f, n_f) == (text_p, n_p)
        assert last.reused_tokens == n_prefix
    # the prefix was prefilled once, each child only its own tail
    assert after.prefilled_tokens - before.prefilled_tokens < n_prefix + sum(p[2].prompt_tokens - n_prefix
                                                                               for p in plain) + 2
    await wait_idle(small_engine)


async def test_cancel_mid_generation_frees_the_slot_and_spares_the_others(small_engine):
    sampling = Sampling(max_tokens=24)
    keep = GenerateRequest(chat(small_engine, QUESTIONS[0]), Role.SMALL, sampling)
    expected = await collect(small_engine, keep)
    long_req = GenerateRequest(chat(small_engine, "Write a very long essay about the history of bread."),
                               Role.SMALL, Sampling(max_tokens=2000))

    async def cancel_after_some_tokens() -> int:
        got = 0
        gen = small_engine.generate(long_req)
        async for chunk in gen:
            got += chunk.tokens
            if got >= 5:
                break
        await gen.aclose()
        return got

    other, got = await asyncio.gather(collect(small_engine, keep), cancel_after_some_tokens())
    assert got >= 5
    assert other[:2] == expected[:2]
    await wait_idle(small_engine)
    assert small_engine.stats().slots_busy == 0

    task = asyncio.create_task(collect(small_engine, long_req))
    await asyncio.sleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_idle(small_engine)


async def test_bad_input_gets_clear_errors_and_the_engine_keeps_serving(small_engine):
    ok = GenerateRequest(chat(small_engine, QUESTIONS[1]), Role.SMALL, Sampling(max_tokens=8))
    with pytest.raises(InvalidRequest, match="empty"):
        await collect(small_engine, GenerateRequest("", Role.SMALL))
    with pytest.raises(InvalidRequest, match="does not fit"):
        await collect(small_engine, GenerateRequest("word " * 6000, Role.SMALL))
    with pytest.raises(RoleNotLoaded, match="large"):
        await collect(small_engine, GenerateRequest("hi", Role.LARGE))
    with pytest.raises(InvalidRequest, match="temperature"):
        await collect(small_engine, GenerateRequest("hi", Role.SMALL, Sampling(temperature=-1)))
    with pytest.raises(InvalidRequest, match="top_p"):
        await collect(small_engine, GenerateRequest("hi", Role.SMALL, Sampling(top_p=0)))
    with pytest.raises(InvalidRequest, match="vocabulary"):
        await collect(small_engine, GenerateRequest([1, 2, 10**9], Role.SMALL))
    text, n, _ = await collect(small_engine, ok)
    assert n > 0 and text


async def test_stop_strings_length_and_token_prompts(small_engine):
    prompt = chat(small_engine, "Count from 1 to 20, separated by commas.")
    text, n, last = await collect(small_engine, GenerateRequest(prompt, Role.SMALL, Sampling(max_tokens=6)))
    assert n == 6 and last.finish is FinishReason.LENGTH
    text, _, last = await collect(small_engine, GenerateRequest(prompt, Role.SMALL,
                                                                Sampling(max_tokens=60, stop=("5",))))
    assert last.finish is FinishReason.STOP and "5" not in text and "4" in text
    tokens = small_engine.model(Role.SMALL).tokenize(prompt)
    by_tokens = await collect(small_engine, GenerateRequest(tokens, Role.SMALL, Sampling(max_tokens=6)))
    assert by_tokens[0] == (await collect(small_engine, GenerateRequest(prompt, Role.SMALL,
                                                                        Sampling(max_tokens=6))))[0]


async def test_seeded_sampling_is_reproducible(small_engine):
    prompt = chat(small_engine, "Invent a name for a boat.")
    s = Sampling(temperature=0.9, top_p=0.95, top_k=40, seed=7, max_tokens=12)
    a = await collect(small_engine, GenerateRequest(prompt, Role.SMALL, s))
    b = await collect(small_engine, GenerateRequest(prompt, Role.SMALL, s))
    assert a[:2] == b[:2]
    penalised = Sampling(temperature=0.7, min_p=0.05, repeat_penalty=1.3, seed=3, max_tokens=12)
    text, n, _ = await collect(small_engine, GenerateRequest(prompt, Role.SMALL, penalised))
    assert n > 0 and text


async def test_resident_prefix_is_reused_and_exact(small_engine):
    system = "<|im_start|>system\nYou answer briefly and plainly.<|im_end|>\n"
    prompt = system + "<|im_start|>user\nWhat is rain?<|im_end|>\n<|im_start|>assistant\n"
    sampling = Sampling(max_tokens=12)
    before = await collect(small_engine, GenerateRequest(prompt, Role.SMALL, sampling))
    n = await small_engine.add_resident_prefix(Role.SMALL, system)
    after = await collect(small_engine, GenerateRequest(prompt, Role.SMALL, sampling))
    assert after[2].reused_tokens == n > 0
    assert after[:2] == before[:2]


def test_token_tables_sort_line_breaks_and_words(small_model):
    # The per-token tables that sampling reads (built in one pass over the vocabulary at start-up):
    # line breaks, which a point may not open with, and words, the only tokens word_repeat_penalty touches.
    from espalier.service.engine.native import Model

    model = Model(str(small_model))
    try:
        model.warm_token_tables()
        breaks = set(model.line_break_tokens.tolist())
        newline, word, digits = (model.tokenize(t, add_bos=False) for t in ("\n", " apple", "42"))
        assert set(newline) <= breaks and not set(word) & breaks
        assert all(model.has_letter(t) for t in word)
        assert not any(model.has_letter(t) for t in newline + digits)
    finally:
        model.close()


async def test_word_repeat_penalty_spares_numbers_and_line_breaks(small_engine):
    # Greedy, the small model writes "Apple" on all ten lines; a penalty on the words it wrote makes it
    # write other words, while the list's numbers and line breaks (exempt) stay as they were.
    prompt = chat(small_engine, "Write the word apple on ten lines, one per line, numbered 1 to 10.")
    plain, _, _ = await collect(small_engine, GenerateRequest(prompt, Role.SMALL, Sampling(max_tokens=60)))
    varied, _, _ = await collect(small_engine, GenerateRequest(
        prompt, Role.SMALL, Sampling(max_tokens=60, word_repeat_penalty=1.5)))
    plain_lines, varied_lines = plain.strip().splitlines(), varied.strip().splitlines()
    assert plain.lower().count("apple") >= 5  # the case the penalty is for
    assert varied.lower().count("apple") <= 2
    numbers = [line.split(".")[0] for line in varied_lines]
    assert numbers[:5] == ["1", "2", "3", "4", "5"] and len(varied_lines) >= 5
    assert len(plain_lines) >= 5
