"""The start-up probe that measures how many verify rows keep greedy output exact, on the real small model.

What it finds depends on the CPU and on how much of the cache is in use, so the tests check what the
figure means (a batch of that many rows gives each token its one-at-a-time logits, with other text
too) and that the engine uses it, not a particular value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from espalier.planner.engine import Role
from espalier.service.engine.config import ContextConfig, EngineConfig
from espalier.service.engine.exact_rows import LONG_DEPTH, PROBE_DEPTH, measure_exact_rows, verify_rows_from
from espalier.service.engine.llama_engine import LlamaEngine
from espalier.service.engine.native import Context, ContextParams, Model
from espalier.service.engine.spec_policy import DraftSource

pytestmark = pytest.mark.model

MOST = 9
SLOT = 3


@pytest.fixture(scope="module")
def context(small_model: Path) -> Iterator[Context]:
    model = Model(str(small_model))
    ctx = Context(model, ContextParams(n_ctx=1024, n_batch=512, n_seq_max=4, threads=2, threads_batch=2))
    yield ctx
    ctx.close()
    model.close()


def _text(ctx: Context, words: str) -> list[int]:
    return ctx.model.tokenize(words * 60)


def _logits(ctx: Context, ids: list[int], pos: int) -> list[np.ndarray]:
    ctx.batch.clear()
    ctx.batch.add(SLOT, ids, pos, True, logits_all=True)
    assert ctx.decode() == 0
    return [ctx.logits(i).copy() for i in range(len(ids))]


@pytest.mark.parametrize("depth", [PROBE_DEPTH, LONG_DEPTH])
def test_the_measured_rows_give_one_at_a_time_logits_on_other_text_too(context: Context, depth: int) -> None:
    exact = measure_exact_rows(context, SLOT, _text(context, "Pears ripen off the tree. "), most=MOST, depth=depth)
    assert 1 <= exact <= MOST
    assert context.seq_pos_max(SLOT) == -1  # the probe leaves its slot empty

    other = _text(context, "A kettle boils water for tea, and the steam fogs the window. ")
    _logits(context, other[:depth], 0)
    alone = [_logits(context, [t], depth + i)[0] for i, t in enumerate(other[depth:depth + exact + 1])]
    context.seq_rm(SLOT, depth, -1)
    together = _logits(context, other[depth:depth + exact], depth)
    context.seq_rm(SLOT, depth, -1)
    assert all(np.array_equal(a, b) for a, b in zip(together, alone, strict=False))
    if exact < MOST:  # and one row more is where the kernels change, whatever the text
        more = _logits(context, other[depth:depth + exact + 1], depth)
        assert not all(np.array_equal(a, b) for a, b in zip(more, alone, strict=True))
    context.seq_rm(SLOT)


def test_the_probe_needs_enough_tokens(context: Context) -> None:
    with pytest.raises(ValueError, match="needs"):
        measure_exact_rows(context, SLOT, [1, 2, 3], most=MOST, depth=32)


def test_an_engine_set_to_measure_uses_what_it_measured(small_model: Path) -> None:
    async def load_and_read() -> tuple[int, int]:
        engine = await LlamaEngine.load(EngineConfig(small=ContextConfig(
            model=str(small_model), slots=2, n_ctx=1024, n_batch=256, threads=2,
            draft_source=DraftSource.LOOKUP, draft_max=4)))  # verify_rows left at its default: measure
        try:
            stats = engine.stats().role(Role.SMALL)
            assert stats is not None
            return stats.exact_rows, stats.verify_rows
        finally:
            await engine.aclose()

    exact, rows = asyncio.run(load_and_read())
    assert 1 <= exact <= 5  # draft_max + 1 rows: one sequence's largest verify
    assert rows == verify_rows_from(exact)
