"""The thread that owns one llama context and runs its decode loop.

Owns: the step loop (apply frees and forks, build one batch of every active sequence's next tokens,
llama_decode once, sample per sequence, route text back), per-sequence jobs (sampler chain, text
stream, delivery queue, token log-probabilities when asked), prefix holders, and the counters
behind stats(). Requests arrive as typed commands (below) on a thread-safe queue, and results go back to asyncio
with one call_soon_threadsafe per step, so the event loop never calls llama.cpp and wakes at most
once per step.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from espalier.planner.engine import (
    Chunk,
    EngineClosed,
    EngineError,
    EngineFault,
    Exhausted,
    FinishReason,
    InvalidRequest,
    Priority,
    Role,
    RoleStats,
    Sampling,
    Speculation,
    TokenLogprobs,
)
from espalier.service.engine.native import Context, Model, SamplerChain
from espalier.service.engine.scheduler import (
    Entry,
    QueueFull,
    Scheduler,
    Seq,
    SeqState,
    StepPlan,
    TooLong,
    common_prefix_len,
)
from espalier.service.engine.spec_policy import CostCurve, pack_verifies
from espalier.service.engine.speculator import Offer, Proposal, SpecStats, Speculator
from espalier.service.engine.textstream import TextStream

log = logging.getLogger(__name__)

_keys = itertools.count(1)
_MIN_SHARE = 8  # fewest shared leading tokens worth a fork from an open prefix
_BATCH_COST_NS = (1, 2, 3, 4, 6, 8, 12, 16)  # batch sizes whose relative cost stats() reports


@dataclass(eq=False)
class Delivery:
    """The asyncio side of one sequence: a queue on the caller's loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Chunk | BaseException] = field(default_factory=asyncio.Queue)
    finished: bool = False  # set on the loop when the last item was consumed


@dataclass(eq=False)
class Job:
    """A generating sequence on the worker side."""

    seq: Seq
    sampling: Sampling
    delivery: Delivery
    text: TextStream
    sampler: SamplerChain | None = None
    spec_mode: Speculation = Speculation.OFF
    history: list[int] = field(default_factory=list)  # prompt + generated; last = the pending token
    top_logprobs: int = 0  # > 0: each emitted token carries its TokenLogprobs
    said_word: bool = False  # a token with a letter or digit has been emitted (Sampling.min_tokens)
    words_written: set[int] = field(default_factory=set)  # tokens with a letter it emitted (word_repeat_penalty)


@dataclass(eq=False)
class PrefixHolder:
    """A prefix sequence on the worker side; `ready` resolves with its token count."""

    seq: Seq
    ready: asyncio.Future[int] | None
    text: str = ""


# --- commands: everything the event loop asks of the worker thread, carried out in order between steps


@dataclass(frozen=True, slots=True)
class Submit:
    job: Job
    prompt: str | Sequence[int]
    parent: PrefixHolder | None


@dataclass(frozen=True, slots=True)
class Cancel:
    job: Job


@dataclass(frozen=True, slots=True)
class OpenPrefix:
    holder: PrefixHolder
    text: str
    loop: asyncio.AbstractEventLoop | None


@dataclass(frozen=True, slots=True)
class ClosePrefix:
    holder: PrefixHolder


@dataclass(frozen=True, slots=True)
class ProbeKv:
    done: asyncio.Future[dict[str, list[int]]]


@dataclass(frozen=True, slots=True)
class Stop:
    grace_s: float


Command = Submit | Cancel | OpenPrefix | ClosePrefix | ProbeKv | Stop


class _Published(NamedTuple):
    slots_busy: int
    waiting: int
    spec: SpecStats | None


class ContextWorker:
    """One llama context, one thread. Public methods are safe to call from any thread."""

    def __init__(self, role: Role, model: Model, ctx: Context, scheduler: Scheduler,
                 speculator: Speculator | None = None, batch_cost: CostCurve | None = None) -> None:
        self.role = role
        self.spec = speculator
        # relative step cost of n sequences, as measured at start-up (a frozen copy: read from any thread)
        self._batch_cost = tuple(batch_cost.relative(_BATCH_COST_NS).items()) if batch_cost is not None else ()
        self.model = model
        self.ctx = ctx
        self.sched = scheduler
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        # what the event loop reads, published by the worker after each command drain and step (_publish)
        self._published = _Published(0, 0, speculator.stats() if speculator is not None else None)
        self._jobs: dict[int, Job] = {}
        self._prefixes: dict[int, PrefixHolder] = {}
        self._outbox: list[tuple[Delivery, Chunk | BaseException]] = []
        self._stopping = False
        self._drain_deadline = 0.0
        # counters, read without a lock by stats() (ints under the GIL are consistent enough)
        self.prefilled = 0
        self.reused = 0
        self.generated = 0
        self.steps = 0
        self._rate = 0.0
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"espalier-{role.value}", daemon=True)
        self._thread.start()

    # --- API for the event loop -------------------------------------------------------------

    def submit(self, prompt: str | Sequence[int], sampling: Sampling, parent: PrefixHolder | None,
               delivery: Delivery, speculation: Speculation = Speculation.DEFAULT, top_logprobs: int = 0,
               priority: Priority = Priority.NORMAL) -> Job:
        """speculation: auto, on, off, or default (this context's); plain without a speculator.
        priority: the slot order among waiting sequences (espalier.planner.engine.Priority).

        top_logprobs > 0 forces plain decoding: logprobs are read in _sample, from the row the token
        is sampled from; a verify step (_verify) samples several rows at once and reads none.
        """
        seq = Seq(key=next(_keys), tokens=(), max_new=sampling.max_tokens, priority=int(priority))
        mode = Speculation.OFF
        if self.spec is not None and top_logprobs <= 0:
            requested = Speculation(speculation)  # a caller may still hand the value as text
            mode = self.spec.default_mode if requested is Speculation.DEFAULT else requested
        job = Job(seq, sampling, delivery, TextStream(sampling.stop), spec_mode=mode, top_logprobs=top_logprobs)
        self._post(Submit(job, prompt, parent))
        return job

    def cancel(self, job: Job) -> None:
        self._post(Cancel(job))

    def open_prefix(self, text: str, ready: asyncio.Future[int] | None, *,
                    loop: asyncio.AbstractEventLoop | None = None) -> PrefixHolder:
        holder = PrefixHolder(Seq(key=next(_keys), tokens=(), is_prefix=True), ready, text)
        self._post(OpenPrefix(holder, text, loop))
        return holder

    def close_prefix(self, holder: PrefixHolder) -> None:
        self._post(ClosePrefix(holder))

    def kv_positions(self, done: asyncio.Future[dict[str, list[int]]]) -> None:
        """Resolve `done` with the highest KV position of every sequence id, per context (-1 = empty).

        Runs on the worker thread between steps; tests and diagnostics use it to prove that
        finished and cancelled sequences left nothing behind in either context.
        """
        self._post(ProbeKv(done))

    def stop(self, grace_s: float) -> None:
        """Take no new work; let running sequences finish for up to grace_s, then end them."""
        self._post(Stop(grace_s))

    def stats(self) -> RoleStats:
        """Called on the event loop: what the worker published last, never its live lists."""
        busy, waiting, spec = self._published
        return RoleStats(
            role=self.role, model=self.model.description, slots_total=self.sched.slots_total,
            slots_busy=busy, queue_depth=waiting,
            prefilled_tokens=self.prefilled, reused_tokens=self.reused, generated_tokens=self.generated,
            tokens_per_s=round(self._rate, 2), steps=self.steps,
            spec_k=spec.k if spec else -1, spec_drafted=spec.drafted if spec else 0,
            spec_accepted=spec.accepted if spec else 0, verify_cost=spec.verify_cost if spec else (),
            verify_rows=spec.verify_rows if spec else 0, exact_rows=spec.exact_rows if spec else -1,
            batch_cost=self._batch_cost,
        )

    def free_slots(self) -> int:
        busy, waiting, _ = self._published
        return max(0, self.sched.slots_total - busy - waiting)

    def spec_stats(self) -> SpecStats | None:
        """Called on the event loop: the speculator's counters as the worker published them last."""
        return self._published.spec

    def _publish(self, stepped: bool) -> None:
        """Worker thread: what the event loop reads (one frozen tuple, replaced whole: an atomic store).
        The speculator's counters change only in a step, so a command drain keeps the last ones."""
        spec = self.spec.stats() if stepped and self.spec is not None else self._published.spec
        self._published = _Published(self.sched.slots_busy, self.sched.queue_depth, spec)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # --- worker thread ---------------------------------------------------------------------------

    def _post(self, command: Command) -> None:
        self._commands.put(command)

    def _apply(self, command: Command) -> None:
        """Worker thread: carry out one command from the event loop."""
        match command:
            case Submit(job, prompt, parent):
                self._admit(job, prompt, parent)
            case Cancel(job):
                self._end(job, None)
            case OpenPrefix(holder, text, loop):
                self._admit_prefix(holder, text, loop)
            case ClosePrefix(holder):
                self._release_prefix(holder)
            case ProbeKv(done):
                out = {"target": [self.ctx.seq_pos_max(s) for s in range(self.sched.n_seq_max)]}
                if self.spec is not None and self.spec.drafter is not None:
                    dctx = self.spec.drafter.ctx
                    out["draft"] = [dctx.seq_pos_max(s) for s in range(self.sched.n_seq_max)]
                _call_on_loop(done.get_loop(), _set_result, done, out)
            case Stop(grace_s):
                self._stopping = True
                self._drain_deadline = time.monotonic() + grace_s

    def _run(self) -> None:
        try:
            while True:
                self._drain_commands(block=not self.sched.has_work() and not self._stopping)
                self._publish(stepped=False)
                if self._stopping and self._drain_done():
                    break
                self._step()
                self._publish(stepped=True)
                self._flush()
        except BaseException:  # pragma: no cover - a bug in the loop itself: fail everyone loudly
            log.exception("worker %s crashed", self.role.value)
            self._fail_all(EngineFault("the decoding thread crashed; see the server log"))
        finally:
            self._fail_all(EngineClosed("the engine is shutting down"))
            self._flush()
            self._close_native()
            self.closed.set()

    def _drain_commands(self, block: bool) -> None:
        """Run the commands posted so far; with block, first wait for one. Every change the loop must see
        (new work, a cancel, stop) arrives as a command, so an idle worker sleeps until one does."""
        try:
            command = self._commands.get() if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            try:
                self._apply(command)
            except Exception:  # a command must never kill the loop
                log.exception("worker command %s failed", type(command).__name__)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _drain_done(self) -> bool:
        if not self._jobs:
            return True
        if time.monotonic() >= self._drain_deadline:
            for job in list(self._jobs.values()):
                self._end(job, EngineClosed("the engine shut down before this sequence finished"))
            return True
        return False

    def _step(self) -> None:
        plan = self.sched.schedule()
        for slot in plan.frees:
            self.ctx.seq_rm(slot)
            if self.spec is not None:
                self.spec.on_free(slot)
        if plan.frees and self.sched.empty():
            # Nothing left in the cache: reset it, so the next sequence is laid out from cell 0
            # again. Attention over a sequence placed further along the cache sums in other
            # chunks, so without this a prompt could decode differently depending on history.
            self.ctx.clear()
            if self.spec is not None and self.spec.drafter is not None:
                self.spec.drafter.clear()
        for fork in plan.forks:
            self.ctx.seq_cp(fork.src, fork.dst, fork.n_tokens)
            if self.spec is not None:
                self.spec.on_fork(fork.src, fork.dst, fork.tokens)
        for seq in plan.orphans:
            self._fail_key(seq.key, InvalidRequest("the shared prefix was closed before this request started"))
        if not plan.entries:
            return
        proposals = self._propose(plan) if self.spec is not None else {}
        for entries in self._calls(plan.entries, proposals):
            self._decode(StepPlan(entries=entries), proposals)

    def _calls(self, entries: list[Entry], proposals: dict[int, Proposal]) -> list[list[Entry]]:
        """Split a step into decode calls: everything plain in one, verify runs packed by row limit."""
        if not proposals:
            return [entries]
        plain = [e for e in entries if e.seq.key not in proposals]
        runs = [Entry(e.seq, (*e.tokens, *proposals[e.seq.key].drafts), e.pos, True)
                for e in entries if e.seq.key in proposals]
        assert self.spec is not None
        rows = self.spec.policy.verify_rows
        if rows <= 0:
            return [plain + runs]
        calls = [[runs[i] for i in call] for call in pack_verifies([len(r.tokens) for r in runs], rows)]
        return ([plain] if plain else []) + calls

    def _decode(self, plan: StepPlan, proposals: dict[int, Proposal]) -> None:
        """One llama_decode of the plan's entries, then sampling (or verifying) per sequence."""
        batch = self.ctx.batch
        batch.clear()
        index: dict[int, int] = {}
        n_prompt = n_decoded = 0
        for e in plan.entries:
            verify = e.seq.key in proposals  # the pending token plus drafts: logits at each
            i = batch.add(e.seq.slot, e.tokens, e.pos, e.wants_logits, logits_all=verify)
            if e.wants_logits:
                index[e.seq.key] = i
            if e.seq.state is SeqState.PREFILL:
                n_prompt += len(e.tokens)
            else:
                n_decoded += 1
        t0 = time.perf_counter()
        rc = self.ctx.decode()
        dt = time.perf_counter() - t0
        if rc != 0:
            self._decode_failed(plan, rc)
            return
        self.steps += 1
        self.prefilled += n_prompt
        if self.spec is not None:
            self.spec.policy.observe(target_tokens=plan.n_tokens, target_s=dt)
        if n_decoded:
            self._rate = 0.8 * self._rate + 0.2 * (n_decoded / dt) if self._rate else n_decoded / dt
        for seq in self.sched.after_decode(plan):
            job = self._jobs.get(seq.key)
            if job is None:  # pragma: no cover - scheduler and jobs out of step
                self.sched.finish(seq)
                continue
            try:
                proposal = proposals.get(seq.key)
                if proposal is None:
                    self._sample(job, index[seq.key])
                else:
                    self._verify(job, index[seq.key], proposal)
            except Exception as exc:  # one sequence's fault ends that sequence only
                log.exception("sequence %s failed", seq.key)
                self._end(job, EngineFault(f"sampling failed: {exc}"))
        for e in plan.entries:
            holder = self._prefixes.get(e.seq.key)
            if holder is not None and e.seq.state is SeqState.READY:
                self.reused += e.seq.reused
                self._resolve(holder.ready, len(e.seq.tokens))

    def _sample(self, job: Job, index: int) -> None:
        assert job.sampler is not None
        row = self.ctx.log_probs(index) if job.top_logprobs > 0 else None  # read before the sampler runs
        self._shape(job, index, job.seq.generated)
        token = job.sampler.sample(self.ctx, index)
        logprobs = self._token_logprobs(row, token, job.top_logprobs) if row is not None else None
        if self._take(job, token, logprobs):
            self.sched.accept(job.seq, token)
            job.history.append(token)

    def _shape(self, job: Job, index: int, generated: int) -> None:
        """What the sampler chain cannot do, done to the logits row before it runs (plain and verify
        alike, so speculation still yields the tokens plain decoding would)."""
        self._ban_openers(job, index, generated)
        self._penalise_words(job, index)

    def _penalise_words(self, job: Job, index: int) -> None:
        """Sampling.word_repeat_penalty: each word token the reply wrote loses odds as under llama.cpp's
        repeat penalty (a positive logit divided by it, a negative one multiplied)."""
        penalty = job.sampling.word_repeat_penalty
        if penalty == 1.0 or not job.words_written:
            return
        row = self.ctx.logits(index)
        ids = np.fromiter(job.words_written, dtype=np.int64, count=len(job.words_written))
        seen = row[ids]
        row[ids] = np.where(seen > 0, seen / penalty, seen * penalty)

    def _ban_openers(self, job: Job, index: int, generated: int) -> None:
        """Under Sampling.min_tokens: no end of generation among the first min_tokens tokens, and no line
        break before the reply's first word (after it, a code block or a list may start a new line)."""
        if job.sampling.min_tokens <= 0:
            return
        if generated < job.sampling.min_tokens:
            self.ctx.ban(index, self.model.end_tokens)
        if not job.said_word:
            self.ctx.ban(index, self.model.line_break_tokens)

    def _token_logprobs(self, row: np.ndarray, token: int, n: int) -> TokenLogprobs:
        """The sampled token's log-probability and the n likeliest tokens (ties by token id), from a
        log-softmax row."""
        best = np.argpartition(row, -n)[-n:]
        best = best[np.lexsort((best, -row[best]))]
        piece = self.model.piece_text
        return TokenLogprobs(piece(token), float(row[token]), tuple((piece(int(t)), float(row[t])) for t in best))

    def _take(self, job: Job, token: int, logprobs: TokenLogprobs | None = None) -> bool:
        """Emit a sampled token; False when it ended the sequence (end of generation, stop, length)."""
        seq = job.seq
        self.generated += 1
        if self.model.is_eog(token):
            self._end(job, FinishReason.STOP)
            return False
        piece = self.model.piece(token)
        if job.sampling.word_repeat_penalty != 1.0 and self.model.has_letter(token):
            job.words_written.add(token)
        if not job.said_word and job.sampling.min_tokens > 0:
            job.said_word = any(c.isalnum() for c in piece.decode("utf-8", errors="ignore"))
        text = job.text.push(piece)
        self._emit(job, text, 1, logprobs)
        if job.text.stopped:
            self._end(job, FinishReason.STOP)
            return False
        if seq.generated + 1 >= seq.max_new:
            self._end(job, FinishReason.LENGTH)
            return False
        return True

    # --- speculation (worker thread) ------------------------------------------------------------

    def _propose(self, plan: StepPlan) -> dict[int, Proposal]:
        assert self.spec is not None
        offers: list[Offer] = []
        for e in plan.entries:
            job = self._jobs.get(e.seq.key)
            if e.seq.state is not SeqState.DECODE or job is None or job.spec_mode is Speculation.OFF:
                continue
            offers.append(Offer(e.seq.key, e.seq.slot, job.history, job.spec_mode,
                                room=e.seq.max_new - e.seq.generated - 1, stops_at=self._stop_check(job)))
        if not offers:
            return {}
        return self.spec.propose(offers, other_tokens=plan.n_tokens - len(offers),
                                 budget=self.sched.n_batch - plan.n_tokens)

    def _stop_check(self, job: Job) -> Callable[[list[int]], bool] | None:
        stops = job.sampling.stop
        if not stops:
            return None
        piece = self.model.piece
        return lambda drafts: any(s in b"".join(piece(t) for t in drafts).decode(errors="ignore") for s in stops)

    def _verify(self, job: Job, last: int, proposal: Proposal) -> None:
        """Sample the target after the pending token and after each draft; keep drafts while they agree.

        At temperature 0 this yields exactly the tokens plain decoding would; above 0 each position
        is one sample from the target, as in plain decoding, and a draft survives only when the
        sample equals it (the standard rule for a deterministic draft).
        """
        assert job.sampler is not None and self.spec is not None
        seq, drafts = job.seq, proposal.drafts
        first = last - len(drafts)  # batch index of the pending token's logits
        base = seq.n_past - len(drafts) - 1  # its position
        kept = 0
        for j in range(len(drafts) + 1):
            self._shape(job, first + j, seq.generated)
            token = job.sampler.sample(self.ctx, first + j)
            if not self._take(job, token):
                self.spec.record(seq.key, proposal.source, len(drafts), kept)
                return
            if j < len(drafts) and token == drafts[j]:
                self.sched.accept_draft(seq)
                job.history.append(token)
                kept += 1
                continue
            break
        self.spec.record(seq.key, proposal.source, len(drafts), kept)
        keep = base + 1 + kept
        if keep < seq.n_past:
            self.sched.rewind(seq, keep)
            self.ctx.seq_rm(seq.slot, keep, -1)
        self.sched.accept(seq, token)
        job.history.append(token)

    def _decode_failed(self, plan: StepPlan, rc: int) -> None:
        if rc == 1:
            # No KV cells for the whole batch despite the admission budget (fragmentation):
            # give up the most recently admitted prompt and let the others go on.
            victim = plan.entries[-1].seq
            self.sched.abort(victim)
            self._fail_key(victim.key, Exhausted("no KV cache space left for this sequence; retry later"))
            return
        log.error("llama_decode returned %d for a batch of %d tokens", rc, plan.n_tokens)
        for seq in self.sched.decode_failed(plan):
            self._fail_key(seq.key, EngineFault(f"llama_decode failed with status {rc}"))

    # --- sequence lifecycle (worker thread) -----------------------------------------------

    def _tokens(self, prompt: str | Sequence[int], parent: PrefixHolder | None) -> list[int]:
        if parent is not None:
            if parent.seq.state is SeqState.DONE or parent.seq.released:
                raise InvalidRequest("the shared prefix is already closed", field="prefix")
            if isinstance(prompt, str):
                # The whole text, tokenized as one: exactly the tokens a request without the prefix
                # would get (a tail tokenized alone can split differently at the seam).
                return self.model.tokenize(parent.text + prompt)
            return list(parent.seq.tokens) + list(prompt)
        if isinstance(prompt, str):
            return self.model.tokenize(prompt)
        tokens = list(prompt)
        bad = next((t for t in tokens if not 0 <= t < self.model.n_vocab), None)
        if bad is not None:
            raise InvalidRequest(f"token id {bad} is outside the vocabulary (0..{self.model.n_vocab - 1})",
                                 field="prompt")
        return tokens

    def _admit(self, job: Job, prompt: str | Sequence[int], parent: PrefixHolder | None) -> None:
        if self._stopping:
            self._deliver(job.delivery, EngineClosed("the engine is shutting down"))
            return
        try:
            tokens = self._tokens(prompt, parent)
            if not tokens:
                raise InvalidRequest("the prompt is empty", field="prompt")
            seq = job.seq
            seq.tokens = tokens
            if parent is not None:
                seq.parent, seq.shared = parent.seq, common_prefix_len(parent.seq.tokens, tokens)
            else:
                seq.parent, seq.shared = self._best_parent(tokens)
            self.sched.add(seq)
            job.history = list(tokens)
        except TooLong as exc:
            job.seq.parent = None
            self._deliver(job.delivery, InvalidRequest(f"{exc}: shorten the prompt", field="prompt"))
            return
        except QueueFull as exc:
            job.seq.parent = None
            self._deliver(job.delivery, Exhausted(f"all {self.sched.slots_total} slots are busy and {exc}"))
            return
        except EngineError as exc:
            self._deliver(job.delivery, exc)
            return
        job.sampler = SamplerChain(job.sampling, self.model.n_vocab)
        self._jobs[seq.key] = job

    def _admit_prefix(self, holder: PrefixHolder, text: str, loop: asyncio.AbstractEventLoop | None) -> None:
        try:
            tokens = self.model.tokenize(text)
            if not tokens:
                raise InvalidRequest("a shared prefix cannot be empty", field="prefix")
            holder.seq.tokens = tokens
            holder.seq.parent, holder.seq.shared = self._best_parent(tokens)
            self.sched.add(holder.seq)
        except (TooLong, EngineError) as exc:
            err = exc if isinstance(exc, EngineError) else InvalidRequest(str(exc), field="prefix")
            holder.seq.parent = None
            holder.seq.state = SeqState.DONE
            self._reject(holder.ready, err)
            return
        self._prefixes[holder.seq.key] = holder

    def _best_parent(self, tokens: Sequence[int]) -> tuple[Seq | None, int]:
        """The open, prefilled prefix sharing the most leading tokens with `tokens`, and how many.

        Resident template prefixes, per-request shared prefixes and a streamed prompt's growing
        prefix all qualify: equal tokens mean equal KV, so any of them saves that prefill. Below
        _MIN_SHARE tokens a fork is not worth tying the two sequences together.
        """
        best: Seq | None = None
        best_n = 0
        for holder in self._prefixes.values():
            seq = holder.seq
            if seq.state is not SeqState.READY or seq.released:
                continue
            n = common_prefix_len(seq.tokens, tokens)
            if n > best_n:
                best, best_n = seq, n
        return (best, best_n) if best_n >= _MIN_SHARE else (None, -1)

    def _release_prefix(self, holder: PrefixHolder) -> None:
        if holder.seq.key in self._prefixes:
            del self._prefixes[holder.seq.key]
            self.sched.release_prefix(holder.seq)

    def _end(self, job: Job, how: FinishReason | BaseException | None) -> None:
        """Finish a job: how = finish reason, an error, or None for a cancel by the caller."""
        if self._jobs.pop(job.seq.key, None) is None:
            return
        seq = job.seq
        self.sched.finish(seq)
        self.reused += seq.reused
        if self.spec is not None:
            self.spec.forget(seq.key)
        if job.sampler is not None:
            job.sampler.close()
            job.sampler = None
        if how is None:
            return  # nobody is listening
        if isinstance(how, BaseException):
            self._deliver(job.delivery, how)
            return
        tail = job.text.flush()
        self._deliver(job.delivery, Chunk(tail, 0, how, prompt_tokens=len(seq.tokens), reused_tokens=seq.reused))

    def _fail_key(self, key: int, err: BaseException) -> None:
        """End a generating sequence, or a prefix holder (whose waiter would otherwise hang), with err."""
        job = self._jobs.get(key)
        if job is not None:
            self._end(job, err)
        holder = self._prefixes.pop(key, None)
        if holder is not None:
            self._reject(holder.ready, err)

    def _fail_all(self, err: EngineError) -> None:
        for job in list(self._jobs.values()):
            self._end(job, err)
        for holder in list(self._prefixes.values()):
            self._reject(holder.ready, err)
        self._prefixes.clear()

    def _emit(self, job: Job, text: str, tokens: int, logprobs: TokenLogprobs | None = None) -> None:
        self._deliver(job.delivery, Chunk(text, tokens, logprobs=(logprobs,) if logprobs is not None else ()))

    # --- delivery to asyncio ----------------------------------------------------------------

    def _deliver(self, delivery: Delivery, item: Chunk | BaseException) -> None:
        self._outbox.append((delivery, item))

    def _resolve(self, fut: asyncio.Future[int] | None, value: int) -> None:
        if fut is not None:
            _call_on_loop(fut.get_loop(), _set_result, fut, value)

    def _reject(self, fut: asyncio.Future[int] | None, err: BaseException) -> None:
        if fut is not None and not fut.done():
            _call_on_loop(fut.get_loop(), _set_exception, fut, err)

    def _flush(self) -> None:
        """One wake-up per loop per step, however many sequences produced text."""
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Delivery, Chunk | BaseException]]] = {}
        for delivery, item in self._outbox:
            by_loop.setdefault(delivery.loop, []).append((delivery, item))
        self._outbox = []
        for loop, items in by_loop.items():
            _call_on_loop(loop, _put_all, items)

    def _close_native(self) -> None:
        for job in list(self._jobs.values()):
            if job.sampler is not None:
                job.sampler.close()
        self._jobs.clear()
        if self.spec is not None and self.spec.drafter is not None:
            self.spec.drafter.close()
        self.ctx.close()


def _call_on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: object) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # that loop is closed: whoever waited there is gone
        pass


def _put_all(items: list[tuple[Delivery, Chunk | BaseException]]) -> None:
    for delivery, item in items:
        delivery.queue.put_nowait(item)


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[int], err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)
