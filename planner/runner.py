"""The DAG runner: the only place that schedules the points of a plan.

Owns expansion of a validated plan into events. Every node is a task in one asyncio.TaskGroup; a
node starts as soon as every node it depends on has finished (or failed), and at most N nodes per
model role decode at once, N = min(settings.max_concurrency, the engine's free slots at start),
at least 1. For each role that runs two or more points, the question + outline prefix is opened
once as an engine Prefix and every point forks it (`prefix=` in its request), so the shared part is
prefilled once. A dependent point gets its finished parents' text after that prefix (information
forwarding). Difficulty picks the role (easy -> settings.easy_role, hard -> settings.hard_role;
direct plans use settings.direct_role), falling back to whichever role is loaded.

Failure and cancellation: a node whose engine call raises, or ends with finish=error/cancelled,
yields NodeFailed with the reason and keeps its partial text; the other nodes go on and the answer
notes the gap. Closing or cancelling the event iterator cancels every node task, which closes every
engine iterator and prefix (freeing their sequences) before the cancellation propagates.

The nodes run in a driver task that owns the TaskGroup and feeds a queue; the iterator only reads
the queue. So a failure inside the group can never cancel the consumer's task at some unrelated
await (which is what happens when a generator yields from inside a TaskGroup).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import Counter
from collections.abc import AsyncGenerator, Callable

from espalier.planner import prompts
from espalier.planner.answer import assemble
from espalier.planner.conversation import NO_CONTEXT, Conversation
from espalier.planner.decode import cancel_and_wait, metered, resolve_role
from espalier.planner.engine import (
    Chunk,
    Engine,
    EngineError,
    FinishReason,
    GenerateRequest,
    InvalidRequest,
    Prefix,
    Priority,
    Role,
)
from espalier.planner.events import (
    AnswerDone,
    Event,
    Meter,
    NodeDelta,
    NodeFailed,
    NodeFinished,
    NodeStarted,
    PlanReady,
)
from espalier.planner.plan import Difficulty, Node, Part, Plan, Route
from espalier.planner.repetition import ends_in_loop
from espalier.planner.sentences import first_sentence_end
from espalier.planner.settings import DEFAULT_SETTINGS, PlannerSettings
from espalier.planner.slot_share import SlotShare

log = logging.getLogger(__name__)

_DONE = object()


async def run(
    engine: Engine,
    question: str,
    plan: Plan,
    settings: PlannerSettings = DEFAULT_SETTINGS,
    *,
    meter: Meter | None = None,
    request_id: str = "",
    direct_prompt: str | None = None,
    early: EarlyStarts | None = None,
    context: Conversation = NO_CONTEXT,
) -> AsyncGenerator[Event, None]:
    """Expand a validated plan: PlanReady, then node events as they happen, then AnswerDone.

    Use with `contextlib.aclosing` (or exhaust it): closing the iterator early cancels all nodes.
    An error that is not a node's own (e.g. no model role loaded) is raised from the iterator.
    direct_prompt: the whole prompt of a direct plan's answer, when the caller built its own (live
    mode adds the notes it wrote while the question arrived); by default the plain direct prompt.
    early: points started while the skeleton was written (EarlyStarts): their events so far were
    sent already; this run sends the rest of them and runs every other node. context: the caller's
    system text and earlier turns (already fitted), in every node's prompt and in the shared prefix.
    """
    queue: asyncio.Queue[object] = asyncio.Queue()
    if early is not None:
        early.redirect(queue.put_nowait)  # before any await: no early event can fall between two sinks
    expansion = _Expansion(engine, question, plan, settings, meter or Meter(), request_id, queue.put_nowait,
                           direct_prompt, early, context)
    driver = asyncio.create_task(expansion.drive(), name=f"espalier-expand-{request_id or id(expansion)}")
    driver.add_done_callback(lambda _: queue.put_nowait(_DONE))
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            yield item  # type: ignore[misc]
        driver.result()  # re-raise the driver's own error, if any
    finally:
        await cancel_and_wait(driver)  # every node unwound, its sequences freed


RETRY_MIN_TOKENS = 8  # a retried point's first line holds at least this many tokens


def _has_words(text: str) -> bool:
    """Whether a point said anything: a letter or digit (a bare ":" or line break is empty)."""
    return any(c.isalnum() for c in text)


def role_for(node: Node, route: Route, settings: PlannerSettings, loaded: frozenset[Role]) -> Role:
    if node.role is not None:
        wanted = node.role  # the caller's choice (an edited graph) wins over difficulty
    elif route is Route.DIRECT:
        wanted = settings.direct_role
    else:
        wanted = settings.easy_role if node.difficulty is Difficulty.EASY else settings.hard_role
    return resolve_role(wanted, loaded)


class _Expansion:
    def __init__(
        self,
        engine: Engine,
        question: str,
        plan: Plan,
        settings: PlannerSettings,
        meter: Meter,
        request_id: str,
        emit: Callable[[Event], None],
        direct_prompt: str | None = None,
        early: EarlyStarts | None = None,
        context: Conversation = NO_CONTEXT,
    ) -> None:
        self.engine = engine
        self.question = question
        self.context = context
        self.plan = plan
        self.settings = settings
        self.meter = meter
        self.request_id = request_id
        self.emit = emit
        self.texts: dict[int, str] = {}
        self.failures: dict[int, tuple[str, str]] = {}
        self.done = {n.id: asyncio.Event() for n in plan.nodes}
        self.roles: dict[int, Role] = {}
        self.prefixes: dict[Role, Prefix] = {}
        self.limits: dict[Role, SlotShare | asyncio.Semaphore] = {}
        self.direct_prompt = direct_prompt
        self.early = early

    async def drive(self) -> None:
        plan = self.plan
        self.emit(PlanReady(plan, self.meter.mark_planned()))
        adopted = self.early.adopt(plan) if self.early is not None else {}
        loaded = self.engine.roles()
        self.roles = {n.id: role_for(n, plan.route, self.settings, loaded) for n in plan.nodes}
        per_role = Counter(self.roles.values())
        async with contextlib.AsyncExitStack() as stack:
            for role in sorted(per_role):
                self.limits[role] = SlotShare(self.engine, role, self.settings.max_concurrency)
                if plan.route is not Route.DIRECT and per_role[role] >= 2:
                    await self._open_prefix(stack, role)
            async with asyncio.TaskGroup() as group:
                for node in plan.nodes:
                    run = self._take_over(adopted[node.id]) if node.id in adopted else self._run_node(node)
                    group.create_task(run, name=f"espalier-node-{node.id}")
        self.emit(
            AnswerDone(
                text=assemble(plan, self.texts, self.failures),
                route=plan.route,
                usage=self.meter.usage(),
                timings=self.meter.timings(),
                failed=tuple(n.id for n in plan.nodes if n.id in self.failures),
            )
        )

    async def _open_prefix(self, stack: contextlib.AsyncExitStack, role: Role) -> None:
        text = prompts.point_shared_prefix(self.engine, role, self.question, self.plan, self.settings.point_length,
                                           self.context)
        if not text:
            return
        try:
            self.prefixes[role] = await stack.enter_async_context(self.engine.prefix(role, text))
        except EngineError:
            pass  # no sharing for this role: each point sends its whole prompt (slower, same text)

    async def _take_over(self, started: _Started) -> None:
        """A node started while the skeleton was written: wait for it and take its result as this
        plan's (its events went out already, or go out now through the redirected sink)."""
        node_id = started.node.id
        try:
            await asyncio.shield(started.task)
        finally:
            if node_id in started.expansion.texts:
                self.texts[node_id] = started.expansion.texts[node_id]
            elif node_id in started.expansion.failures:
                self.failures[node_id] = started.expansion.failures[node_id]
            else:  # cancelled before it ended: the whole answer is being cancelled
                self.failures[node_id] = ("", "cancelled")
            self.done[node_id].set()

    def _request(self, node: Node, role: Role, parents: list[tuple[int, Node, str]], written: str = "",
                 *, retry: bool = False) -> GenerateRequest:
        """The node's request; `written`: text an earlier attempt wrote, which this one continues."""
        s = self.settings
        rid = f"{self.request_id}/{node.id}" if self.request_id else ""
        if retry:
            rid += "/retry" if rid else ""
        if self.plan.route is Route.DIRECT:
            prompt = self.direct_prompt or prompts.direct_prompt(self.engine, role, self.question, self.context).full
            sampling = dataclasses.replace(s.sampling, max_tokens=s.direct_max_tokens, stop=())
            return GenerateRequest(prompt + written, role, sampling, None, rid, s.speculation,
                                   priority=Priority.FIRST)
        forward = prompts.CLOSING_FORWARD_CHARS if node.part is Part.CLOSING else s.forward_max_chars
        rendered = prompts.point_prompt(
            self.engine, role, self.question, self.plan, node.id, parents, forward, s.point_length, self.context
        )
        if node.part is Part.POINT:
            budget = node.max_tokens or s.point_max_tokens
        else:
            budget = min(node.max_tokens or prompts.FRAME_MAX_TOKENS, s.point_max_tokens)
        # a retry insists harder on text: an empty first attempt ended before its first words
        least = max(s.point_min_tokens, RETRY_MIN_TOKENS) if retry else s.point_min_tokens
        sampling = dataclasses.replace(
            s.sampling, max_tokens=budget, min_tokens=min(least, budget),
            stop=prompts.point_stop(self.plan, node.id, s.point_length),
        )
        # the opening is the first text a reader sees of a skeleton answer
        priority = Priority.FIRST if node.part is Part.OPENING else Priority.NORMAL
        prefix = self.prefixes.get(role)
        if prefix is not None and rendered.prefix and rendered.prefix == prefix.text:
            return GenerateRequest(rendered.tail + written, role, sampling, prefix, rid, s.speculation,
                                   priority=priority)
        return GenerateRequest(rendered.full + written, role, sampling, None, rid, s.speculation, priority=priority)

    def _waits_for(self, node: Node) -> tuple[int, ...]:
        """The nodes this one starts after and is shown: its parents; for a closing, every point."""
        if node.part is Part.CLOSING:
            return tuple(n.id for n in self.plan.points)
        return node.depends_on

    async def _run_node(self, node: Node) -> None:
        parts: list[str] = []
        try:
            waits_for = self._waits_for(node)
            for dep in waits_for:
                await self.done[dep].wait()
            role = self.roles[node.id]
            async with self.limits[role]:
                parents = [(self.plan.position(d), self.plan.node(d), self.texts[d])
                           for d in waits_for if d in self.texts]
                self.emit(NodeStarted(node.id, role, tuple(p.id for _, p, _ in parents)))
                started = self.meter.elapsed()
                tokens, finish, error = await self._attempts(node, role, parents, parts)
            text = "".join(parts)
            if error is not None:
                self._fail(node, error[0], error[1], text)
                return
            if not _has_words(text) and finish is not FinishReason.LENGTH:
                self._fail(node, "the point came back empty twice", "empty", text)
                return
            self.texts[node.id] = text
            self.emit(NodeFinished(node.id, text, tokens, finish, self.meter.elapsed() - started))
        except Exception as exc:  # noqa: BLE001 - a node's failure is reported, never lost; CancelledError passes
            self._fail(node, str(exc) or type(exc).__name__, type(exc).__name__, "".join(parts))
        finally:
            self.done[node.id].set()

    async def _attempts(self, node: Node, role: Role, parents: list[tuple[int, Node, str]],
                        parts: list[str]) -> tuple[int, FinishReason, tuple[str, str] | None]:
        """Decode the node; once more when the first attempt failed or wrote no words.

        The second attempt continues the text the first one streamed (its prompt ends with it), so a
        client that already shows that text sees it go on rather than start over. A request the engine
        refuses as invalid, or a sequence it cancelled (draining), is not tried again.
        Returns (tokens, finish, error): error is (reason, what failed), or None.
        """
        tokens = 0
        finish = FinishReason.STOP
        error: tuple[str, str] | None = None
        for attempt in range(2):
            request = self._request(node, role, parents, "".join(parts), retry=attempt > 0)
            try:
                last, n = await self._decode(node, request, parts)
            except InvalidRequest:
                raise
            except Exception as exc:  # noqa: BLE001 - retried once, then reported by the caller
                error = (str(exc) or type(exc).__name__, type(exc).__name__)
                continue
            tokens += n
            finish = last.finish if last is not None and last.finish is not None else FinishReason.STOP
            if finish is FinishReason.CANCELLED:
                return tokens, finish, (f"the engine ended the point with finish={finish.value}", finish.value)
            if finish is FinishReason.ERROR:
                error = (f"the engine ended the point with finish={finish.value}", finish.value)
                continue
            error = None
            if _has_words("".join(parts)) or finish is FinishReason.LENGTH:
                break
        return tokens, finish, error

    async def _decode(
        self, node: Node, request: GenerateRequest, parts: list[str]
    ) -> tuple[Chunk | None, int]:
        """Stream one node into `parts` (kept by the caller even if this raises).

        The opening and closing are one sentence: a model asked for one sometimes writes a paragraph,
        so they end at their first proven sentence end (the rest is never streamed). Any part ends as
        a stop where its text falls into a loop (espalier.planner.repetition), instead of repeating itself to
        the end of its budget.
        """
        tokens = 0
        last: Chunk | None = None
        one_sentence = node.part is not Part.POINT
        async with contextlib.aclosing(metered(self.engine, request, self.meter)) as stream:
            async for chunk in stream:
                tokens += chunk.tokens
                last = chunk
                text = chunk.text
                if one_sentence and text:
                    so_far = "".join(parts)
                    end = first_sentence_end(so_far + text)
                    if end:
                        text = text[:max(0, end - len(so_far))]
                        last = dataclasses.replace(chunk, text=text, finish=FinishReason.STOP)
                if text:
                    parts.append(text)
                    self.meter.mark_first_token()
                    self.emit(NodeDelta(node.id, text, chunk.tokens))
                if last.finish is None and text.strip() and ends_in_loop("".join(parts)):
                    log.info("%s node %d ended in a loop after %d tokens", self.request_id or "request",
                             node.id, tokens)
                    last = dataclasses.replace(chunk, text=text, finish=FinishReason.STOP)
                if last.finish is not None:
                    break
        return last, tokens

    def _fail(self, node: Node, reason: str, error: str, partial: str) -> None:
        self.failures[node.id] = (partial, reason)
        self.emit(NodeFailed(node.id, reason, error, partial))


# --- points started while the skeleton is written (Plato's pipelining) ----------------------------

# A point may start beside its skeleton only while a decode step with it costs at most this much more
# than the skeleton's step alone: each early point slows the skeleton, which every later point waits
# for. On 2 CPU cores a second sequence costs about 1.9x (none start); on a GPU about 1.0x (many do).
EARLY_SLOWDOWN = 1.25


def early_budget(engine: Engine, settings: PlannerSettings) -> tuple[int, str]:
    """How many points may start while the skeleton is still written, and why (for the plan's reason)."""
    if settings.early_points >= 0:
        return settings.early_points, "set"
    role = resolve_role(settings.skeleton_role, engine.roles())
    stats = engine.stats().role(role)
    costs = dict(stats.batch_cost) if stats is not None else {}
    if not costs:
        return 0, "no measured batch cost"
    fits = [n - 1 for n, cost in costs.items() if n >= 2 and cost <= EARLY_SLOWDOWN]
    budget = min(max(fits, default=0), settings.max_concurrency)
    second = costs.get(2)
    return budget, (f"a second sequence costs the skeleton's step {second:.2f}x" if second is not None
                    else "measured batch cost")


@dataclasses.dataclass
class _Started:
    node: Node
    expansion: _Expansion  # the outline as it stood when the node started (its prompt's)
    task: asyncio.Task[None]


class EarlyStarts:
    """Points started while their skeleton is still written, at most `budget` of them.

    A point starts as soon as its line is known (NodePlanned) if it needs no other point; its prompt
    holds the outline as written so far (a later point is not in it). It runs like any node of the
    runner (the same prompts, stops, retries and events), in an expansion of the partial outline; its
    events go to `emit` until the final plan's run takes them (`redirect`) and the point (`adopt`).
    `aclose` cancels every point still running (closing an answer mid-skeleton frees their slots).
    """

    def __init__(self, engine: Engine, question: str, settings: PlannerSettings, meter: Meter,
                 emit: Callable[[Event], None], budget: int, request_id: str = "",
                 context: Conversation = NO_CONTEXT) -> None:
        self.engine = engine
        self.question = question
        self.context = context
        self.settings = settings
        self.meter = meter
        self.budget = budget
        self.request_id = request_id
        self._emit = emit
        self._known: list[Node] = []
        self.started: dict[int, _Started] = {}

    def planned(self, node: Node) -> None:
        """A point of the skeleton is known; start it now if the budget allows and it needs nothing."""
        self._known.append(node)
        if len(self.started) >= self.budget or node.depends_on:
            return
        outline = Plan(tuple(self._known), Route.GRAPH)  # the skeleton as it stands: its points so far
        expansion = _Expansion(self.engine, self.question, outline, self.settings, self.meter, self.request_id,
                               lambda event: self._emit(event), context=self.context)
        role = role_for(node, Route.GRAPH, self.settings, self.engine.roles())
        expansion.roles = {node.id: role}
        expansion.limits = {role: asyncio.Semaphore(1)}
        task = asyncio.create_task(expansion._run_node(node), name=f"espalier-early-{node.id}")
        self.started[node.id] = _Started(node, expansion, task)

    def redirect(self, emit: Callable[[Event], None]) -> None:
        """From now on the started points' events go to `emit` (the final plan's run)."""
        self._emit = emit

    def adopt(self, plan: Plan) -> dict[int, _Started]:
        """Hand the started points that the final plan holds (same id, same title) to its run. A started
        point the plan dropped is cancelled and reported failed."""
        emit = self._emit
        kept: dict[int, _Started] = {}
        for node_id, started in self.started.items():
            if any(n.id == node_id and n.title == started.node.title for n in plan.points):
                kept[node_id] = started
            else:
                started.task.cancel()
                emit(NodeFailed(node_id, "the final plan dropped this point", "replanned"))
        return kept

    async def aclose(self) -> None:
        await cancel_and_wait(*(started.task for started in self.started.values()))
