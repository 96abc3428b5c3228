"""Token log-probabilities from the embedded engine on the real small model.

Greedy decoding must sample the top entry of the raw distribution at every step, so the logprobs
can be checked against the tokens themselves; a request without top_logprobs is unchanged.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from espalier.planner.engine import Chunk, GenerateRequest, InvalidRequest, Message, Role, Sampling

pytestmark = pytest.mark.model


async def chunks_of(engine, request: GenerateRequest) -> list[Chunk]:
    out: list[Chunk] = []
    async with asyncio.timeout(120):
        async for chunk in engine.generate(request):
            out.append(chunk)
    assert out and out[-1].finish is not None
    return out


async def test_greedy_tokens_are_the_top_entry(small_engine) -> None:
    prompt = small_engine.chat_prompt(Role.SMALL, [Message("user", "Name three fruits.")])
    request = GenerateRequest(prompt, Role.SMALL, Sampling(max_tokens=3), top_logprobs=5)
    chunks = await chunks_of(small_engine, request)
    generated = sum(c.tokens for c in chunks)
    entries = [e for c in chunks for e in c.logprobs]
    assert generated >= 1 and len(entries) == generated
    assert all(len(c.logprobs) == c.tokens for c in chunks)
    assert "".join(e.token for e in entries) == "".join(c.text for c in chunks)
    for e in entries:
        assert len(e.top) == 5
        assert e.top[0][0] == e.token and e.top[0][1] == pytest.approx(e.logprob, abs=1e-9)
        values = [lp for _, lp in e.top]
        assert e.logprob <= 0 and all(lp <= 0 for lp in values)
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(lp) for lp in values) <= 1.0001

    # the same request without logprobs: the same text, and no logprobs
    plain = await chunks_of(small_engine, GenerateRequest(prompt, Role.SMALL, Sampling(max_tokens=3)))
    assert "".join(c.text for c in plain) == "".join(c.text for c in chunks)
    assert all(c.logprobs == () for c in plain)


async def test_too_many_top_logprobs_are_refused(small_engine) -> None:
    request = GenerateRequest("Hello", Role.SMALL, Sampling(max_tokens=1), top_logprobs=21)
    with pytest.raises(InvalidRequest) as info:
        await chunks_of(small_engine, request)
    assert info.value.field == "top_logprobs"
