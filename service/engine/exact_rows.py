"""Measure, on this hardware, how many tokens one verify call may hold and still give every token the
logits it would get decoded alone: the speculation policy's `verify_rows` when it is set to measure.

Why measure: llama.cpp picks its kernels by the shape of a batch, and a kernel with other rounding
(a tiled attention or matmul path) can change a near-tie's argmax, so greedy output with speculation
would drift from plain decoding. Where the switch happens depends on the hardware, so it is read off
the machine at start-up, as the cost curves are.

What was measured (AMD EPYC, Zen 5 with AVX-512, 2 cores, default models, flash attention on): up to 7
rows gave bit-identical logits while the cache's used range stayed within its first 256 cells, and not
even 2 rows beyond them; with flash attention off not even 2 anywhere. Beyond 256 cells a token's
logits also move with where other sequences' cells lie, so there even plain decoding depends on what
else runs, and no limit keeps output exact. The probe therefore reads the short case, where a limit
can keep output exact (one sequence, short prompts: tests, `bench spec`), and costs little elsewhere.

Owns only the probe, in a context no sequence uses yet (start-up, before the worker thread exists).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from espalier.service.engine.native import Context

log = logging.getLogger(__name__)

MEASURE = -1  # the verify_rows setting that asks for this probe
# Where the probe looks: a short context, inside the cache's first 256 cells (see above).
PROBE_DEPTH = 32
# Past those cells, where a serving cache is once the planner's prompts are resident (for tests and notes).
LONG_DEPTH = 320


def measure_exact_rows(ctx: Context, slot: int, tokens: Sequence[int], *, most: int,
                       depth: int = PROBE_DEPTH) -> int:
    """The largest n <= `most` such that every batch of 1..n tokens after a `depth`-token context
    gives each token bit for bit the logits it gets decoded one at a time (1 when even 2 differ).

    Contiguous from 1 on purpose: a verify call holds any number of rows up to the limit, so one
    size that differs below a larger one that matches still rules the larger one out. Leaves
    `slot` empty.
    """
    if len(tokens) < depth + most:
        raise ValueError(f"the probe needs {depth + most} token ids, got {len(tokens)}")
    batch = ctx.batch
    most = min(most, batch.capacity)

    def decode(ids: Sequence[int], pos: int) -> list[np.ndarray]:
        batch.clear()
        batch.add(slot, ids, pos, True, logits_all=True)
        rc = ctx.decode()
        if rc != 0:
            raise RuntimeError(f"verify-row probe: a decode of {len(ids)} tokens failed with status {rc}")
        return [ctx.logits(i).copy() for i in range(len(ids))]

    probe = list(tokens[depth:depth + most])
    try:
        for start in range(0, depth, batch.capacity):
            batch.clear()
            batch.add(slot, tokens[start:min(depth, start + batch.capacity)], start, False)
            if ctx.decode() != 0:
                raise RuntimeError("verify-row probe: the context decode failed")
        alone = [decode([t], depth + i)[0] for i, t in enumerate(probe)]
        ctx.seq_rm(slot, depth, -1)
        for n in range(2, most + 1):
            rows = decode(probe[:n], depth)
            ctx.seq_rm(slot, depth, -1)
            if not all(np.array_equal(a, b) for a, b in zip(rows, alone, strict=False)):
                return n - 1
        return most
    finally:
        ctx.seq_rm(slot)


def verify_rows_from(exact: int) -> int:
    """The verify_rows to run with, from the probe's answer: the exact limit where a verify of at
    least one draft keeps exact output; no limit (0) where none does, as on GPUs, whose kernels are
    not batch-invariant: a limit would then cost speed and keep nothing exact."""
    return exact if exact >= 2 else 0


def log_choice(role: str, exact: int, rows: int) -> None:
    if exact < 2:  # so verify_rows_from gave no limit
        log.warning("%s: a verify batch of 2 tokens already gives other logits than decoding them one at a "
                    "time on this hardware, so greedy output with speculation may differ from plain decoding "
                    "in near-ties; verify calls are not limited (set speculation off for exact output)", role)
    else:
        log.info("%s: verify calls of up to %s tokens give the same logits as decoding one at a time; "
                 "verify_rows %s", role, exact, rows or "unlimited")
