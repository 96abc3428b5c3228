"""Measure, on this hardware, what a llama_decode of n tokens costs: the speculation cost model's input.

Owns the timing of scratch batches in a context that no sequence uses yet (start-up, before the
worker thread exists). Verifying k drafts is one batch of k+1 tokens with logits at each, and a draft
round is one batch of one token per drafting sequence, so one curve per context covers both.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from espalier.service.engine.native import Context
from espalier.service.engine.spec_policy import CostCurve

# Small batches are what speculation uses most: measure them densely, three times each (the median
# resists a noisy neighbour both ways); larger ones once, for the many-sequence steps. The policy
# corrects all of them with the costs it sees in service.
_DENSE = (1, 2, 3, 4, 5, 6, 8, 9)
_SPARSE = (12, 16, 24, 32, 48, 64)


def measure_curve(ctx: Context, slot: int, tokens: Sequence[int], *, max_tokens: int = 64,
                  depth: int = 32) -> CostCurve:
    """Time batches of n tokens at positions after a `depth`-token context in `slot`; leaves it empty.

    tokens: real token ids to feed (any text of the model's vocabulary).
    """
    if not tokens:
        raise ValueError("calibration needs some token ids")
    batch = ctx.batch
    cap = min(max_tokens, batch.capacity)
    depth = min(depth, cap)

    def ids(n: int, start: int) -> list[int]:
        return [tokens[(start + i) % len(tokens)] for i in range(n)]

    def run(n: int, pos: int, logits_all: bool) -> float:
        batch.clear()
        batch.add(slot, ids(n, pos), pos, True, logits_all=logits_all)
        t0 = time.perf_counter()
        rc = ctx.decode()
        dt = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"calibration decode of {n} tokens failed with status {rc}")
        return dt

    try:
        run(depth, 0, False)  # the context the timed batches attend to (and a warm-up)
        ctx.seq_rm(slot, depth, -1)
        run(1, depth, True)  # warm the one-token path too
        ctx.seq_rm(slot, depth, -1)
        points: list[tuple[int, float]] = []
        for n in (*_DENSE, *_SPARSE):
            if n > cap:
                break
            times = []
            for _ in range(3 if n in _DENSE else 1):
                times.append(run(n, depth, True))
                ctx.seq_rm(slot, depth, -1)
            points.append((n, statistics.median(times)))
    finally:
        ctx.seq_rm(slot)
    return CostCurve(tuple(points))
