"""How many tokens to speculate per step: a cost model measured on this hardware, and acceptance.

Owns the decision only (no model, no native calls), so unit tests drive it with injected costs.
Speculation pays when the target verifies k+1 tokens for little more than one: on a GPU (memory
bound) that holds and drafting wins; on a small CPU verifying k tokens costs nearly k single decodes
and drafting loses. So nothing is assumed: the engine measures what a target batch of n tokens costs
and what a draft round costs, tracks per sequence how many drafted tokens the target accepted, and
each step picks the k that maximises expected tokens per second, where k = 0 is plain decoding.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from espalier.planner.engine import Speculation


class DraftSource(enum.StrEnum):
    MODEL = "model"  # a small model with the target's vocabulary drafts greedily
    LOOKUP = "lookup"  # n-gram matches against the sequence's own prompt and text: free to draft
    BOTH = "both"  # lookup where it finds a match, the draft model elsewhere


@dataclass(frozen=True, slots=True)
class CostCurve:
    """Seconds one llama_decode takes for a batch of n tokens, measured at a few n, interpolated.

    Beyond the last measured point the cost grows linearly with the last segment's slope.
    """

    points: tuple[tuple[int, float], ...]  # (n_tokens, seconds), n ascending, n >= 1

    def __post_init__(self) -> None:
        if not self.points or any(n < 1 or s <= 0 for n, s in self.points):
            raise ValueError("a cost curve needs positive token counts and times")
        if any(a[0] >= b[0] for a, b in zip(self.points, self.points[1:], strict=False)):
            raise ValueError("cost curve points must be in ascending token order")

    def __call__(self, n: int) -> float:
        pts = self.points
        if n <= pts[0][0]:
            return pts[0][1]
        if len(pts) == 1:  # one measurement: cost proportional to tokens
            return pts[0][1] * n / pts[0][0]
        i = min(bisect.bisect_left([p[0] for p in pts], n), len(pts) - 1)
        (n0, s0), (n1, s1) = pts[i - 1], pts[i]
        return max(s0 + (s1 - s0) / (n1 - n0) * (n - n0), 1e-9)

    def relative(self, ks: Sequence[int]) -> dict[int, float]:
        """Cost of a batch of k tokens relative to one token (the 'verify cost' figure)."""
        one = self(1)
        return {k: round(self(k) / one, 3) for k in ks}

    def observed(self, n: int, seconds: float, weight: float = 0.1) -> CostCurve:
        """This curve with a live measurement of an n-token batch folded into the point at n.

        Start-up measurements on a noisy machine can be off by tens of percent; the costs seen in
        service correct them. Only measured sizes move (others interpolate between them), and an
        optimistic error corrects itself: the policy tries that size, and its real cost comes in.
        """
        if seconds <= 0 or not any(p == n for p, _ in self.points):
            return self
        return CostCurve(tuple((p, s + weight * (seconds - s) if p == n else s) for p, s in self.points))


@dataclass(slots=True)
class Acceptance:
    """Per-token acceptance estimate: decayed counts of accepted and rejected drafted tokens.

    A verify that accepted a of k drafts counts a accepts and, when a < k, one rejection: the
    maximum-likelihood estimate of a geometric acceptance process. Decay keeps it current as a
    sequence moves between easy (copied) and hard (novel) text.
    """

    accepted: float = 1.2  # prior: 0.6 with the weight of two tokens
    rejected: float = 0.8
    decay: float = 0.9

    @property
    def rate(self) -> float:
        return self.accepted / (self.accepted + self.rejected)

    def record(self, drafted: int, accepted: int) -> None:
        if drafted <= 0:
            return
        self.accepted = self.accepted * self.decay + accepted
        self.rejected = self.rejected * self.decay + (1 if accepted < drafted else 0)


_DRAFT_MARGIN = 1.10  # expected speed over plain decoding that drafting must promise


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens one verify yields with k drafts: the accepted run plus the target's own token."""
    if k <= 0:
        return 1.0
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One speculating sequence in this step: its acceptance and how many drafts it may take."""

    alpha: float
    cap: int  # most drafts this sequence can take (max_tokens left, source limits)
    uses_model: bool  # drafted by the model (costs draft rounds) rather than by lookup (free)


def pack_verifies(sizes: Sequence[int], rows: int) -> list[list[int]]:
    """Group verify runs (k+1 tokens each, by index) into decode calls of at most `rows` tokens.

    rows 0 means one call for all. Why a limit at all: llama.cpp's CPU attention takes a tiled
    kernel with other rounding once a micro-batch reaches 8 rows, so a token verified in a large
    batch can get different logits than the same token decoded alone, and greedy output would
    then drift from plain decoding in near-ties. First fit, in order, keeps it simple and stable.
    """
    if rows <= 0:
        return [list(range(len(sizes)))] if sizes else []
    calls: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(sizes):
        for c, left in enumerate(room):
            if n <= left:
                calls[c].append(i)
                room[c] -= n
                break
        else:
            calls.append([i])
            room.append(rows - n)
    return calls


@dataclass(slots=True)
class SpecPolicy:
    """Chooses k per step. target/draft: measured cost curves (draft None without a draft model).

    verify_rows: most tokens per verify decode call (see pack_verifies); 0 = no limit.
    """

    target: CostCurve
    draft: CostCurve | None
    max_k: int = 8
    verify_rows: int = 0
    last_k: int = 0  # the latest choice, for stats
    choices: dict[int, int] = field(default_factory=dict)  # k -> how often chosen, for stats

    def observe(self, target_tokens: int = 0, target_s: float = 0.0, draft_tokens: int = 0,
                draft_s: float = 0.0) -> None:
        """Fold the cost of a decode call seen in service into the curves."""
        if target_tokens:
            self.target = self.target.observed(target_tokens, target_s)
        if draft_tokens and self.draft is not None:
            self.draft = self.draft.observed(draft_tokens, draft_s)

    def choose(self, mode: Speculation, candidates: Sequence[Candidate], *, other_tokens: int = 0) -> int:
        """The number of drafts per sequence for this step (0 = plain decoding).

        other_tokens: tokens of this batch that are not speculated (prefill chunks, plain decoders).
        A new sequence's one-off draft prefill is not charged here: it pays over the whole sequence.
        """
        k = self._choose(mode, candidates, other_tokens)
        self.last_k = k
        self.choices[k] = self.choices.get(k, 0) + 1
        return k

    def _choose(self, mode: Speculation, candidates: Sequence[Candidate], other: int) -> int:
        if mode is Speculation.OFF or not candidates or self.k_limit <= 0:
            return 0
        lowest = 1 if mode is Speculation.ON else 0
        best_k, best_rate = lowest, self.rate(lowest, candidates, other)
        for k in range(lowest + 1, self.k_limit + 1):
            rate = self.rate(k, candidates, other)
            # Drafting must promise a clear gain over plain decoding: the costs and acceptance are
            # noisy estimates, and a marginal "win" is a loss as often as not. Among drafting
            # choices a small margin is enough.
            margin = _DRAFT_MARGIN if best_k == 0 else 1.02
            if rate > best_rate * margin:
                best_k, best_rate = k, rate
        return best_k

    @property
    def k_limit(self) -> int:
        """Most drafts one sequence can take: a verify run must fit one decode call."""
        return min(self.max_k, self.verify_rows - 1) if self.verify_rows > 0 else self.max_k

    def rate(self, k: int, candidates: Sequence[Candidate], other: int = 0) -> float:
        """Expected tokens per second of one step that drafts k per sequence."""
        tokens = float(other)
        plain = other
        runs: list[int] = []
        model_seqs = 0
        for c in candidates:
            kc = min(k, c.cap, self.k_limit)
            tokens += expected_tokens(c.alpha, kc)
            if kc > 0:
                runs.append(1 + kc)
            else:
                plain += 1
            if kc > 0 and c.uses_model:
                model_seqs += 1
        calls = pack_verifies(runs, self.verify_rows)
        if self.verify_rows <= 0 and calls:  # one call holds everything
            seconds = self.target(plain + sum(runs))
        else:
            seconds = (self.target(plain) if plain else 0.0) + sum(self.target(sum(runs[i] for i in c)) for c in calls)
        if model_seqs and k > 0:
            if self.draft is None:
                return 0.0  # model drafts without a draft model: never chosen
            # k rounds: the first takes each sequence's latest token, each later one its latest draft.
            seconds += k * self.draft(model_seqs)
        return tokens / seconds


def prompt_lookup(history: Sequence[int], k: int, *, ngram_max: int = 4, ngram_min: int = 2,
                  window: int = 4096) -> list[int]:
    """Draft by matching the last n tokens earlier in the sequence and proposing what followed.

    Point expansion repeats the skeleton's and the question's words, so this often finds runs to
    copy, and it costs no model time. Longest n first; the most recent earlier match wins.
    """
    if k <= 0:
        return []
    n_hist = len(history)
    start = max(0, n_hist - window)
    for n in range(min(ngram_max, n_hist - 1), ngram_min - 1, -1):
        tail = list(history[n_hist - n:])
        first = tail[0]
        # Scan right to left over positions where an earlier copy of the tail could begin.
        i = n_hist - n - 1
        while i >= start:
            if history[i] == first and list(history[i:i + n]) == tail:
                follow = list(history[i + n:i + n + k])
                if follow:
                    return follow
            i -= 1
    return []
