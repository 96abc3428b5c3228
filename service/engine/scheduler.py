"""The batch/slot state machine of one llama context, with no model in sight.

Owns: which sequences hold a KV slot, which wait, what goes into the next batch (decode tokens of
every running sequence first, then prompt prefill in chunks), forks from prefix holders, and the
KV-cell budget. The worker thread drives it (`add`, `schedule`, `after_decode`, `accept`, `finish`,
`abort`) and applies the native operations it returns; unit tests drive it with plain integers.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field


class SeqState(enum.Enum):
    WAITING = "waiting"  # queued for a slot (or for its parent prefix to be ready)
    PREFILL = "prefill"  # holds a slot, prompt partly in KV
    SAMPLE = "sample"  # its logits are out: the worker must sample, then accept() or finish()
    DECODE = "decode"  # has a pending token to feed in the next step
    READY = "ready"  # a prefix holder whose prompt is fully in KV; never decodes
    DONE = "done"


class QueueFull(Exception):
    """The waiting queue is at its bound."""


class TooLong(Exception):
    """The sequence can never fit the context."""


@dataclass(eq=False)
class Seq:
    """One sequence as the scheduler sees it. `key` is the caller's handle."""

    key: int
    tokens: Sequence[int]  # the whole prompt, including any forked prefix
    max_new: int = 0  # 0 for a prefix holder
    is_prefix: bool = False
    parent: Seq | None = None
    shared: int = -1  # leading tokens equal to the parent's (-1: all of the parent's tokens)
    state: SeqState = SeqState.WAITING
    slot: int = -1
    n_past: int = 0  # tokens in this sequence's KV: positions 0..n_past-1
    reused: int = 0  # prompt tokens copied from the parent instead of prefilled
    pending: int = -1  # the sampled token to feed next
    generated: int = 0
    reserved: int = 0  # KV cells this sequence may occupy at most: unshared prompt + max_new
    children: int = 0  # waiting sequences that will fork from this one (prefix holders only)
    released: bool = False  # a prefix holder whose owner is done with it
    priority: int = 1  # lower is admitted first (espalier.planner.engine.Priority); equal ones in arrival order

    @property
    def active(self) -> bool:
        return self.state not in (SeqState.WAITING, SeqState.DONE)


@dataclass(frozen=True, slots=True)
class Fork:
    src: int  # slot
    dst: int  # slot
    n_tokens: int  # positions [0, n_tokens) are copied
    tokens: Sequence[int] = ()  # the copied tokens (a draft context mirrors the fork with them)


@dataclass(frozen=True, slots=True)
class Entry:
    """A run of consecutive tokens of one sequence in the batch."""

    seq: Seq
    tokens: Sequence[int]
    pos: int  # position of tokens[0]
    wants_logits: bool  # logits of the last token are needed (sampling follows)


@dataclass(slots=True)
class StepPlan:
    frees: list[int] = field(default_factory=list)  # slots whose KV must be removed first
    forks: list[Fork] = field(default_factory=list)
    orphans: list[Seq] = field(default_factory=list)  # dropped: their parent prefix is gone
    entries: list[Entry] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(len(e.tokens) for e in self.entries)


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two sequences share (slices compare in C; binary search the end)."""
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):
        return n
    lo, hi = 0, n - 1  # a[:lo] == b[:lo] holds; a[:hi + 1] != b[:hi + 1]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if list(a[:mid]) == list(b[:mid]):
            lo = mid
        else:
            hi = mid - 1
    return lo


class Scheduler:
    """Continuous batching over a fixed set of slots.

    slots: sequences that may generate at once; prefix_slots: seq ids reserved for prefix holders
    (resident template prefixes and per-request shared prefixes). n_ctx: KV cells in the context
    (shared by all sequences: the context is unified). max_waiting: bound of the waiting queue.
    """

    def __init__(self, *, slots: int, prefix_slots: int, n_ctx: int, n_batch: int,
                 prefill_chunk: int, max_waiting: int) -> None:
        if min(slots, n_ctx, n_batch, prefill_chunk) < 1 or prefix_slots < 0 or max_waiting < 0:
            raise ValueError("scheduler sizes must be positive")
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.prefill_chunk = min(prefill_chunk, n_batch)
        self.max_waiting = max_waiting
        # Slots whose KV is empty, per kind (True = prefix holders).
        self._clean: dict[bool, deque[int]] = {False: deque(range(slots)),
                                                True: deque(range(slots, slots + prefix_slots))}
        self.n_seq_max = slots + prefix_slots
        self.slots_total = slots
        self._waiting: deque[Seq] = deque()
        self._active: list[Seq] = []  # in admission order: prefill is first come, first served
        # Retired sequences whose KV cells are still in the cache. Removal waits until the space or
        # the slot is needed, or until nothing runs: freeing cells mid-run opens holes that llama.cpp
        # fills with the running sequences' next tokens, which reorders their cells and with it the
        # summation order inside attention, so their output would stop matching solo decoding.
        self._dirty: deque[Seq] = deque()
        self._reserved = 0

    # --- observation -------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def slots_busy(self) -> int:
        return sum(1 for s in self._active if not s.is_prefix)

    @property
    def kv_reserved(self) -> int:
        return self._reserved

    def empty(self) -> bool:
        """No sequence holds, wants or still occupies KV cells: the cache can be reset."""
        return not self._active and not self._waiting and not self._dirty

    def has_work(self) -> bool:
        """Whether schedule() can produce a batch or has native operations to apply."""
        return (bool(self._dirty) and self._idle()) or any(
            s.state in (SeqState.PREFILL, SeqState.DECODE) for s in self._active
        ) or self._admissible()

    # --- transitions ----------------------------------------------------------------------

    def add(self, seq: Seq) -> None:
        """Queue a sequence. Raises TooLong or QueueFull; the sequence is then not kept."""
        if not seq.tokens:
            raise TooLong("empty prompt")
        shared = self._shared_with_parent(seq)
        need = len(seq.tokens) - shared + seq.max_new
        if len(seq.tokens) + (0 if seq.is_prefix else 1) > self.n_ctx or need > self.n_ctx:
            raise TooLong(f"prompt of {len(seq.tokens)} tokens does not fit a context of {self.n_ctx}")
        if not seq.is_prefix and len(self._waiting) >= self.max_waiting + self._free_gen_slots():
            raise QueueFull(f"{len(self._waiting)} requests already waiting")
        seq.reserved = need
        seq.state = SeqState.WAITING
        if seq.parent is not None:
            seq.parent.children += 1
        # behind every waiting sequence of the same or a lower number, ahead of the rest
        at = len(self._waiting)
        while at > 0 and self._waiting[at - 1].priority > seq.priority:
            at -= 1
        self._waiting.insert(at, seq)

    def abort(self, seq: Seq) -> None:
        """Drop a sequence wherever it is; its slot is free at once, its KV removed when needed or idle."""
        if seq.state is SeqState.DONE:
            return
        if seq.state is SeqState.WAITING:
            self._waiting.remove(seq)
            self._release_parent(seq)
            seq.state = SeqState.DONE
            return
        self._retire(seq)

    def finish(self, seq: Seq) -> None:
        """The worker decided the sequence is complete (stop, length, error)."""
        self.abort(seq)

    def accept(self, seq: Seq, token: int) -> None:
        """The worker sampled `token` for a sequence in SAMPLE state; feed it next step."""
        assert seq.state is SeqState.SAMPLE, seq.state
        seq.pending = token
        seq.generated += 1
        seq.state = SeqState.DECODE

    def accept_draft(self, seq: Seq) -> None:
        """A drafted token the target verified: it is already in KV; the sequence stays in SAMPLE."""
        assert seq.state is SeqState.SAMPLE, seq.state
        seq.generated += 1

    def rewind(self, seq: Seq, n_past: int) -> None:
        """Forget KV positions from n_past on (rejected drafts); the worker removes their cells."""
        assert seq.active and n_past <= seq.n_past, (seq.state, n_past, seq.n_past)
        seq.n_past = n_past

    def schedule(self) -> StepPlan:
        """Admit what fits, then lay out the next batch: decode tokens first, prefill after."""
        plan = StepPlan()
        self._admit(plan)
        if self._idle():
            while self._dirty:
                self._clean_one(plan, self._dirty[0])
        budget = self.n_batch
        for seq in self._active:
            if seq.state is SeqState.DECODE and budget > 0:
                plan.entries.append(Entry(seq, (seq.pending,), seq.n_past, True))
                budget -= 1
        # While others decode, prefill only a chunk per step so a long prompt never stalls them.
        if plan.entries:
            budget = min(budget, self.prefill_chunk)
        for seq in self._active:
            if budget <= 0:
                break
            if seq.state is not SeqState.PREFILL:
                continue
            take = min(budget, len(seq.tokens) - seq.n_past)
            end = seq.n_past + take
            last = end == len(seq.tokens)
            plan.entries.append(Entry(seq, seq.tokens[seq.n_past:end], seq.n_past, last and not seq.is_prefix))
            budget -= take
        return plan

    def after_decode(self, plan: StepPlan) -> list[Seq]:
        """Record a successful decode; returns the sequences that now need sampling."""
        to_sample: list[Seq] = []
        for entry in plan.entries:
            seq = entry.seq
            if seq.state is SeqState.DONE:  # aborted while the batch was running
                continue
            seq.n_past = entry.pos + len(entry.tokens)
            if seq.state is SeqState.PREFILL and seq.n_past == len(seq.tokens):
                seq.state = SeqState.READY if seq.is_prefix else SeqState.SAMPLE
            elif seq.state is SeqState.DECODE:
                seq.state = SeqState.SAMPLE
            if seq.state is SeqState.SAMPLE:
                to_sample.append(seq)
        return to_sample

    def decode_failed(self, plan: StepPlan) -> list[Seq]:
        """The native decode rejected the batch: retire its sequences; returns them for reporting."""
        failed = list(dict.fromkeys(e.seq for e in plan.entries if e.seq.state is not SeqState.DONE))
        for seq in failed:
            self._retire(seq)
        return failed

    def release_prefix(self, seq: Seq) -> None:
        """The prefix's owner is done with it; its KV goes once no child still needs to fork."""
        seq.released = True
        if seq.children == 0:
            self.abort(seq)

    # --- internals -----------------------------------------------------------------------------

    def _free_gen_slots(self) -> int:
        return len(self._clean[False]) + sum(1 for d in self._dirty if not d.is_prefix)

    def _idle(self) -> bool:
        return not any(s.state in (SeqState.PREFILL, SeqState.SAMPLE, SeqState.DECODE) for s in self._active)

    def _clean_one(self, plan: StepPlan, seq: Seq) -> None:
        """Remove a retired sequence's KV (frees run first in a step) and return its slot to the pool."""
        self._dirty.remove(seq)
        self._reserved -= seq.reserved
        seq.reserved = 0
        plan.frees.append(seq.slot)
        self._clean[seq.is_prefix].append(seq.slot)

    def _dirty_cells(self) -> int:
        return sum(d.reserved for d in self._dirty)

    @staticmethod
    def _shared_with_parent(seq: Seq) -> int:
        if seq.parent is None:
            return 0
        # Keep at least one prompt token to prefill: sampling needs the logits it produces, and a
        # prefix equal to an open one (the same resident text added twice) needs a non-empty batch
        # to become ready: llama_decode refuses a batch of no tokens.
        limit = len(seq.tokens) - 1
        same = len(seq.parent.tokens) if seq.shared < 0 else seq.shared
        return min(same, len(seq.parent.tokens), limit)

    def _admissible(self) -> bool:
        return any(self._can_admit(s) for s in self._waiting)

    def _can_admit(self, seq: Seq) -> bool:
        has_slot = bool(self._clean[seq.is_prefix]) or any(d.is_prefix == seq.is_prefix for d in self._dirty)
        if not has_slot or self._reserved - self._dirty_cells() + seq.reserved > self.n_ctx:
            return False
        return seq.parent is None or seq.parent.state is SeqState.READY

    def _admit(self, plan: StepPlan) -> None:
        # In priority order, first come first served within one (add keeps the queue so), but a
        # sequence whose parent is still prefilling does not block
        # the ones behind it. Parents are released only after the loop: a parent retired here must
        # not be cleaned in this same plan, whose frees run before the forks that copy from it.
        forked: list[Seq] = []
        for seq in list(self._waiting):
            if seq.parent is not None and seq.parent.state is SeqState.DONE:
                self._waiting.remove(seq)
                seq.parent = None
                seq.state = SeqState.DONE
                plan.orphans.append(seq)
                continue
            if not self._can_admit(seq):
                if seq.parent is None and not seq.is_prefix:
                    break  # keep FIFO among independent requests: no overtaking on KV budget
                continue
            self._waiting.remove(seq)
            if not self._clean[seq.is_prefix]:
                self._clean_one(plan, next(d for d in self._dirty if d.is_prefix == seq.is_prefix))
            while self._reserved + seq.reserved > self.n_ctx:
                self._clean_one(plan, self._dirty[0])  # _can_admit checked that this suffices
            seq.slot = self._clean[seq.is_prefix].popleft()
            shared = self._shared_with_parent(seq)
            if shared:
                assert seq.parent is not None
                plan.forks.append(Fork(seq.parent.slot, seq.slot, shared, seq.parent.tokens[:shared]))
                seq.n_past = seq.reused = shared
            seq.state = SeqState.PREFILL
            self._reserved += seq.reserved
            self._active.append(seq)
            forked.append(seq)
        for seq in forked:
            self._release_parent(seq)

    def _release_parent(self, seq: Seq) -> None:
        parent = seq.parent
        if parent is None:
            return
        seq.parent = None
        parent.children -= 1
        if parent.children == 0 and parent.released:
            self.abort(parent)

    def _retire(self, seq: Seq) -> None:
        self._active.remove(seq)
        self._dirty.append(seq)  # cells stay reserved until cleaned
        seq.state = SeqState.DONE
