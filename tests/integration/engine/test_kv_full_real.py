"""The KV cache filling up, on the real small model: requests that together need more cells than the
context holds wait for room and finish (none hangs), each with exactly the text it gets alone (none
corrupts another's); a prompt that can never fit is refused at once."""

from __future__ import annotations

import asyncio

import pytest

from espalier.planner.decode import collect
from espalier.planner.engine import EngineError, GenerateRequest, Role, Sampling
from espalier.service.engine.config import ContextConfig, EngineConfig
from espalier.service.engine.llama_engine import LlamaEngine

pytestmark = pytest.mark.model


async def test_requests_that_overfill_the_cache_wait_their_turn_and_keep_their_own_text(small_model) -> None:
    # 4 slots share 256 cells; each request needs about 15 + 150: at most one fits at a time
    config = EngineConfig(small=ContextConfig(model=str(small_model), slots=4, n_ctx=256, n_batch=64, threads=2))
    engine = await LlamaEngine.load(config)
    try:
        def request(i: int) -> GenerateRequest:
            return GenerateRequest(f"Write a long story number {i} about a dragon.", Role.SMALL,
                                   Sampling(max_tokens=150, temperature=0.0))
        async with asyncio.timeout(240):
            together = await asyncio.gather(*(collect(engine, request(i)) for i in range(4)))
            alone = [await collect(engine, request(i)) for i in range(4)]
        for i, (t, a) in enumerate(zip(together, alone, strict=True)):
            assert t.text == a.text and t.text.strip(), i  # every request finished, with its own text
        with pytest.raises(EngineError):
            await collect(engine, GenerateRequest("word " * 400, Role.SMALL, Sampling(max_tokens=8)))
        assert engine.stats().slots_busy == 0
    finally:
        await engine.aclose()
