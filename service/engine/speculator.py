"""Speculation for one target context: which sequences draft this step, from which source, how far.

Owns per-sequence acceptance, the choice between prompt lookup and the draft model, the policy call
that sets k, and the counters behind stats. The worker asks `propose` after scheduling a step and
reports each verify through `record`; the verify itself stays in the worker, which owns sampling.
At temperature 0 the worker's verify reproduces plain decoding token for token; above 0 it samples
the target at each drafted position and keeps a draft while the sample equals it, which for a
greedy (deterministic) draft is exactly the standard accept/reject rule, so the output distribution
is the target's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from espalier.planner.engine import Speculation
from espalier.service.engine.drafter import Drafter, DraftJob
from espalier.service.engine.spec_policy import Acceptance, Candidate, DraftSource, SpecPolicy, prompt_lookup


@dataclass(frozen=True, slots=True)
class Offer:
    """A sequence that will decode this step and may speculate."""

    key: int
    slot: int
    history: Sequence[int]  # prompt + generated; the last token is the one the target decodes next
    mode: Speculation
    room: int  # most drafts it may take (tokens left before max_tokens)
    stops_at: Callable[[list[int]], bool] | None = None


@dataclass(frozen=True, slots=True)
class Proposal:
    drafts: list[int]
    source: DraftSource  # MODEL or LOOKUP


@dataclass(frozen=True, slots=True)
class SpecStats:
    k: int  # the latest k chosen by the policy for `auto` sequences
    drafted: int
    accepted: int
    verify_cost: tuple[tuple[int, float], ...]  # (k, cost of a k-token target batch / 1 token)
    draft_round_s: float  # measured cost of one draft round of one token (0 without a draft model)
    target_token_s: float  # measured cost of a one-token target batch
    choices: tuple[tuple[int, int], ...] = ()  # (k, how often the cost model chose it)
    verify_rows: int = 0  # the policy's limit (0 = none)
    exact_rows: int = -1  # what the start-up probe measured (-1: not measured)


class Speculator:
    def __init__(self, policy: SpecPolicy, source: DraftSource, drafter: Drafter | None,
                 default_mode: Speculation = Speculation.AUTO, *, exact_rows: int = -1) -> None:
        if source is not DraftSource.LOOKUP and drafter is None:
            raise ValueError(f"draft source {source.value} needs a draft model")
        self.policy = policy
        self.source = source
        self.drafter = drafter
        self.default_mode = default_mode
        self.exact_rows = exact_rows  # what the start-up probe measured, for stats (-1: not measured)
        self._acc: dict[tuple[int, DraftSource], Acceptance] = {}
        # Role-wide acceptance per source: the starting estimate of a new sequence.
        self._prior = {s: Acceptance(decay=0.98) for s in (DraftSource.MODEL, DraftSource.LOOKUP)}
        self.drafted = 0
        self.accepted = 0

    # --- KV mirroring (the worker forwards the scheduler's frees and forks) ---------------------

    def on_free(self, slot: int) -> None:
        if self.drafter is not None:
            self.drafter.on_free(slot)

    def on_fork(self, src: int, dst: int, tokens: Sequence[int]) -> None:
        if self.drafter is not None:
            self.drafter.on_fork(src, dst, tokens)

    # --- per step -----------------------------------------------------------------------------------

    def propose(self, offers: Sequence[Offer], *, other_tokens: int, budget: int) -> dict[int, Proposal]:
        """Drafts per sequence key for this step; sequences left out decode plainly.

        other_tokens: tokens in the target batch that do not speculate; budget: most drafted tokens
        the target batch can still take.
        """
        looked: dict[int, list[int]] = {}
        cands: dict[int, Candidate] = {}
        use_lookup = self.source in (DraftSource.LOOKUP, DraftSource.BOTH)
        use_model = self.drafter is not None and self.source in (DraftSource.MODEL, DraftSource.BOTH)
        for o in offers:
            if o.mode is Speculation.OFF or o.room <= 0:
                continue
            found = prompt_lookup(o.history, min(self.policy.k_limit, o.room)) if use_lookup else []
            if found:
                looked[o.key] = found
                cands[o.key] = Candidate(self._alpha(o.key, DraftSource.LOOKUP), len(found), False)
            elif use_model:
                cands[o.key] = Candidate(self._alpha(o.key, DraftSource.MODEL), min(self.policy.k_limit, o.room), True)
        if not cands:
            return {}
        plain = other_tokens + sum(1 for o in offers if o.key not in cands)
        chosen: dict[Speculation, int] = {}
        for mode in (Speculation.AUTO, Speculation.ON):
            group = [cands[o.key] for o in offers if o.key in cands and o.mode is mode]
            if group:
                chosen[mode] = self.policy.choose(mode, group, other_tokens=plain)
        ks: dict[int, int] = {}
        for o in offers:
            c = cands.get(o.key)
            if c is None:
                continue
            k = min(chosen[o.mode], c.cap, budget)
            if k > 0:
                ks[o.key] = k
                budget -= k
        out: dict[int, Proposal] = {}
        jobs: list[DraftJob] = []
        for o in offers:
            k = ks.get(o.key, 0)
            if k <= 0:
                continue
            if o.key in looked:
                out[o.key] = Proposal(looked[o.key][:k], DraftSource.LOOKUP)
            else:
                jobs.append(DraftJob(o.slot, o.history, k, o.stops_at))
        if jobs:
            assert self.drafter is not None
            slots = {o.slot: o.key for o in offers}
            for slot, drafts in self.drafter.draft(jobs, self.drafter.ctx.batch.capacity).items():
                if drafts:
                    out[slots[slot]] = Proposal(drafts, DraftSource.MODEL)
        return out

    def record(self, key: int, source: DraftSource, drafted: int, accepted: int) -> None:
        """A verify of `drafted` tokens kept `accepted` of them."""
        self.drafted += drafted
        self.accepted += accepted
        self._estimate(key, source).record(drafted, accepted)
        self._prior[source].record(drafted, accepted)

    def forget(self, key: int) -> None:
        for source in (DraftSource.MODEL, DraftSource.LOOKUP):
            self._acc.pop((key, source), None)

    def stats(self) -> SpecStats:
        ks = range(1, self.policy.k_limit + 2)
        draft = self.policy.draft(1) if self.policy.draft is not None else 0.0
        return SpecStats(k=self.policy.last_k, drafted=self.drafted, accepted=self.accepted,
                         verify_cost=tuple(self.policy.target.relative(ks).items()),
                         draft_round_s=round(draft, 5), target_token_s=round(self.policy.target(1), 5),
                         choices=tuple(sorted(self.policy.choices.items())),
                         verify_rows=self.policy.verify_rows, exact_rows=self.exact_rows)

    # --- internals ---------------------------------------------------------------------------------------

    def _estimate(self, key: int, source: DraftSource) -> Acceptance:
        acc = self._acc.get((key, source))
        if acc is None:
            rate = self._prior[source].rate
            acc = self._acc[(key, source)] = Acceptance(accepted=2 * rate, rejected=2 * (1 - rate))
        return acc

    def _alpha(self, key: int, source: DraftSource) -> float:
        return self._estimate(key, source).rate
