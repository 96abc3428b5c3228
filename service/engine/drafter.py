"""The draft model's context: it mirrors the target's sequences and proposes tokens for all at once.

Owns a second llama context (over the small model, which shares the target's tokenizer) whose
sequence ids are the target's slots, what each of its sequences holds (so a rejected draft is
trimmed by comparing token lists, never by bookkeeping that can drift), forks mirrored from the
target so a prefix is prefilled once for the draft too, and the drafting rounds: every drafting
sequence advances one token per round in one batch; a sequence whose draft became unsure (top
probability under p_min), reached an end-of-generation token or would write a stop string drops
out of later rounds. Runs on the target worker's thread: drafting and verifying alternate, so a
second thread would only contend for the same cores.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from espalier.service.engine.native import Context, Model
from espalier.service.engine.scheduler import common_prefix_len


@dataclass(slots=True)
class DraftJob:
    """One sequence to draft for: the tokens that must be in context, and how many to propose."""

    slot: int
    history: Sequence[int]  # prompt + generated tokens, the last one not yet decoded by the target
    k: int
    stops_at: Callable[[list[int]], bool] | None = None  # True when these drafts would write a stop string


class Drafter:
    """Greedy drafting in rounds over a draft context. Call only from the owning worker thread."""

    def __init__(self, model: Model, ctx: Context, *, p_min: float = 0.3,
                 observe: Callable[[int, float], None] | None = None) -> None:
        self.model = model
        self.ctx = ctx
        self.p_min = p_min
        self._observe = observe  # (tokens, seconds) of each drafting decode, for the cost model
        self._kv: dict[int, list[int]] = {}  # slot -> tokens in the draft KV, positions 0..n-1
        self.drafted = 0  # tokens proposed, for stats
        self.rounds = 0

    # --- mirroring the target's KV operations -------------------------------------------------

    def on_free(self, slot: int) -> None:
        if self._kv.pop(slot, None) is not None:
            self.ctx.seq_rm(slot)

    def on_fork(self, src: int, dst: int, tokens: Sequence[int]) -> None:
        """The target copied `tokens` (a prefix of src's) into dst: bring src's draft up to date, copy."""
        self._prefill(src, tokens)
        self.on_free(dst)
        self.ctx.seq_cp(src, dst, len(tokens))
        self._kv[dst] = list(tokens)

    def clear(self) -> None:
        """The target's cache was reset with nothing in it: reset the draft's too."""
        self.ctx.clear()
        self._kv.clear()

    def held(self, slot: int) -> int:
        return len(self._kv.get(slot, ()))

    # --- drafting ---------------------------------------------------------------------------------

    def draft(self, jobs: Sequence[DraftJob], budget: int) -> dict[int, list[int]]:
        """Propose up to job.k tokens per job; returns slot -> drafts (possibly empty).

        budget: most tokens a catch-up batch may hold. A job whose backlog does not fit takes a
        chunk of its prompt this step and drafts from a later one.
        """
        out: dict[int, list[int]] = {j.slot: [] for j in jobs}
        batch = self.ctx.batch
        batch.clear()
        live: dict[int, tuple[DraftJob, int]] = {}  # slot -> (job, batch index of its logits)
        for job in jobs:
            if job.k <= 0:
                continue
            common = self._trim(job.slot, job.history)
            todo = list(job.history[common:])
            room = min(budget - batch.n, batch.capacity - batch.n)
            if room <= 0:
                break
            fits = len(todo) <= room
            piece = todo if fits else todo[:room]
            idx = batch.add(job.slot, piece, common, fits)
            self._kv[job.slot].extend(piece)
            if fits:
                live[job.slot] = (job, idx)
        if batch.n == 0:
            return out
        if self._decode() != 0:
            self._forget([j.slot for j in jobs])
            return out
        self.rounds += 1
        while live:
            proposals: dict[int, int] = {}
            for slot, (job, idx) in live.items():
                token = self._confident(idx)
                drafts = out[slot]
                if token is None or self.model.is_eog(token) or (
                        job.stops_at is not None and job.stops_at([*drafts, token])):
                    continue
                drafts.append(token)
                self.drafted += 1
                if len(drafts) < job.k:
                    proposals[slot] = token
            if not proposals:
                break
            batch.clear()
            live = {}
            for slot, token in proposals.items():
                job = next(j for j in jobs if j.slot == slot)
                live[slot] = (job, batch.add(slot, (token,), len(self._kv[slot]), True))
                self._kv[slot].append(token)
            if self._decode() != 0:
                self._forget(list(proposals))
                break
            self.rounds += 1
        return out

    # --- internals -------------------------------------------------------------------------------

    def _decode(self) -> int:
        n = self.ctx.batch.n
        t0 = time.perf_counter()
        rc = self.ctx.decode()
        if rc == 0 and self._observe is not None:
            self._observe(n, time.perf_counter() - t0)
        return rc

    def _confident(self, index: int) -> int | None:
        """The draft's greedy token at a batch index, or None when it is not sure enough."""
        logits = self.ctx.logits(index)
        token = int(np.argmax(logits))
        if self.p_min > 0.0:
            top = float(logits[token])
            p = 1.0 / float(np.exp(logits - top).sum())
            if p < self.p_min:
                return None
        return token

    def _common(self, slot: int, history: Sequence[int]) -> int:
        """Length of the shared start of the draft KV and history, leaving one token to decode."""
        return min(common_prefix_len(self._kv.get(slot, []), history), len(history) - 1)

    def _trim(self, slot: int, history: Sequence[int]) -> int:
        common = self._common(slot, history)
        held = self._kv.setdefault(slot, [])
        if len(held) > common:
            self.ctx.seq_rm(slot, common, -1)
            del held[common:]
        return common

    def _prefill(self, slot: int, tokens: Sequence[int]) -> None:
        """Make the draft KV of slot hold exactly `tokens` (used for prefix holders before a fork)."""
        held = self._kv.setdefault(slot, [])
        if held == list(tokens[:len(held)]) and len(held) <= len(tokens):
            start = len(held)
        else:
            self.ctx.seq_rm(slot)
            held.clear()
            start = 0
        batch = self.ctx.batch
        while start < len(tokens):
            piece = tokens[start:start + batch.capacity]
            batch.clear()
            batch.add(slot, piece, start, False)
            if self.ctx.decode() != 0:
                self._forget([slot])
                return
            held.extend(piece)
            start += len(piece)

    def _forget(self, slots: Sequence[int]) -> None:
        """A draft decode failed (no KV room): drop those sequences' draft KV; they re-prefill later."""
        for slot in slots:
            self.ctx.seq_rm(slot)
            self._kv[slot] = []

    def close(self) -> None:
        self.ctx.close()
