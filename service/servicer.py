"""EspalierServicer: the gRPC face of the planner (Plan, Expand, Answer, Stream).

Owns the per-call flow, kept thin: request id (from `x-request-id` metadata or generated; sent back in
initial metadata and set in the logging context), validation and translation (espalier.service.convert),
admission (espalier.service.admission), the planner call, per-call metrics, and errors turned into statuses
by espalier.service.errors only. Handlers use the reader/writer API (`context.write`) rather than async
generators, so that a client cancel or deadline always lands as CancelledError inside our own
frames, whose `aclosing`/`finally` blocks close the planner's iterators and free engine slots before
the cancellation propagates (habit 6).

Lifecycle: the servicer exists before the models are loaded (calls get UNAVAILABLE until
`attach(engine)`) and is drained before shutdown (`drain()`: new calls get UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

import grpc

from espalier.planner import events as ev
from espalier.planner import pipeline
from espalier.planner.decode import cancel_and_wait
from espalier.planner.engine import Engine, InvalidRequest, Role
from espalier.planner.events import Meter
from espalier.planner.live import StreamedPrompt
from espalier.planner.settings import PlannerSettings
from espalier.service import convert, errors
from espalier.service.admission import Admission
from espalier.service.metrics import ServiceMetrics
from espalier.service.settings import ServerSettings
from espalier.service.wire_decoding import checked, checked_stream
from espalier.v1 import espalier_pb2 as pb
from espalier.v1 import espalier_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# The request id of the call being served, for log records (see serve_cli's log filter). Tasks the
# call creates copy the context, so the planner's node tasks log with the same id.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("espalier_request_id", default="-")
_MAX_REQUEST_ID = 128
_DEADLINE_SLACK_S = 0.1


def request_id_from(metadata: object) -> str:
    """The caller's x-request-id if it is a sane token, else a fresh one."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == errors.REQUEST_ID_KEY and isinstance(value, str) and _sane_id(value):
            return value
    return uuid.uuid4().hex[:16]


def _sane_id(value: str) -> bool:
    # it goes into logs and headers: printable ASCII without spaces, bounded
    return 0 < len(value) <= _MAX_REQUEST_ID and value.isascii() and value.isprintable() and " " not in value


@dataclass
class _Call:
    """Bookkeeping of one RPC, for its log line and metrics."""

    method: str
    request_id: str
    started: float = field(default_factory=time.monotonic)
    code: grpc.StatusCode = grpc.StatusCode.OK
    first_token: float | None = None
    usage: ev.Usage | None = None
    planned: bool = False  # PlanReady went out
    early_points: int = 0  # points started before it (while the skeleton was written)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def saw(self, event: ev.Event) -> None:
        if isinstance(event, ev.NodeDelta) and self.first_token is None:
            self.first_token = self.elapsed()
        elif isinstance(event, ev.NodeStarted) and not self.planned:
            self.early_points += 1
        elif isinstance(event, ev.PlanReady):
            self.planned = True
        elif isinstance(event, ev.AnswerDone):
            self.usage = event.usage


class EspalierServicer(pb_grpc.EspalierServiceServicer):
    def __init__(self, settings: ServerSettings, metrics: ServiceMetrics | None = None,
                 engine: Engine | None = None) -> None:
        self._settings = settings
        self._planner: PlannerSettings = settings.planner
        self._limits = convert.Limits(max_question_chars=settings.max_question_chars, max_tokens=settings.max_tokens,
                                      max_system_chars=settings.max_system_chars,
                                      max_history_chars=settings.max_history_chars)
        self.metrics = metrics or ServiceMetrics()
        self.admission = Admission(settings.max_in_flight, settings.max_waiting, name="requests")
        # Streams whose prompt is still arriving hold no engine work yet, so they are bounded apart
        # from the work queue (and take a work slot only once their prompt is complete).
        self.streams = Admission(settings.max_streams, 0, name="streams")
        self._engine = engine
        self._draining = False
        # Handler tasks of the calls being served: grpc's server.stop() cancels them when the grace
        # period ends but does not wait for them to unwind, and the engine must outlive that.
        self._tasks: set[asyncio.Task[object]] = set()

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine | None:
        return self._engine

    def attach(self, engine: Engine) -> None:
        """The models are loaded: start taking calls."""
        self._engine = engine

    def drain(self) -> None:
        """Shutting down: refuse new calls; admitted ones carry on until the server's grace ends."""
        self._draining = True
        self.admission.close()
        self.streams.close()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait (up to timeout) until every call's handler has returned; True if they all have."""
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        return all(t.done() for t in pending)

    def _ready_engine(self) -> Engine:
        if self._draining:
            raise errors.NotServing("the server is shutting down")
        if self._engine is None:
            raise errors.NotServing("the server is still loading its models; retry shortly")
        return self._engine

    # --- per-call plumbing ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _call(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[_Call]:
        call = _Call(method, request_id_from(context.invocation_metadata()))
        token = REQUEST_ID.set(call.request_id)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await context.send_initial_metadata(((errors.REQUEST_ID_KEY, call.request_id),))
            yield call
        except asyncio.CancelledError:
            # A client cancels at its deadline and the cancel reaches us a moment before our own
            # copy of the deadline expires: count a cancel that close to it as the deadline.
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= _DEADLINE_SLACK_S
            call.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            raise  # someone already set the status (not us: we abort only below)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, via errors only
            status = errors.status_for(exc, call.request_id)
            call.code = status.code
            await context.abort(status.code, status.details, trailing_metadata=status.trailers)
        finally:
            self._finish(call)
            REQUEST_ID.reset(token)
            self._tasks.discard(task)  # type: ignore[arg-type]

    def _finish(self, call: _Call) -> None:
        elapsed = call.elapsed()
        self.metrics.record_request(call.method, call.code.name, elapsed)
        if call.first_token is not None:
            self.metrics.record_first_token(call.method, call.first_token)
        if call.early_points:
            self.metrics.record_early_points(call.method, call.early_points)
        tokens = 0
        if call.usage is not None:
            for u in call.usage.roles:
                self.metrics.record_usage(u.role.value, prompt=u.prompt_tokens, reused=u.reused_tokens,
                                          completion=u.completion_tokens)
            tokens = call.usage.completion_tokens
        # a caller's mistake or impatience is routine; only our own failures deserve a warning
        level = logging.WARNING if call.code is grpc.StatusCode.INTERNAL else logging.INFO
        log.log(level, "%s %s in %.3fs (first token %s, %d tokens)", call.method, call.code.name, elapsed,
                f"{call.first_token:.3f}s" if call.first_token is not None else "-", tokens)

    @contextlib.asynccontextmanager
    async def _work(self) -> AsyncIterator[None]:
        """An admitted slot, and the server's own time limit on the work done under it."""
        async with self.admission.slot():
            limit = self._settings.max_request_s
            async with asyncio.timeout(limit if limit > 0 else None):
                yield

    # --- RPCs ---------------------------------------------------------------------------------------

    async def Plan(self, request: pb.PlanRequest, context: grpc.aio.ServicerContext) -> pb.PlanResponse:
        async with self._call("Plan", context) as call:
            request = checked(request)
            engine = self._ready_engine()
            req = convert.plan_request(request, self._planner, self._limits)
            meter = Meter()
            async with self._work():
                plan = await pipeline.make_plan(engine, req.question, req.mode, req.settings, meter=meter,
                                                request_id=call.request_id, context=req.context)
            meter.mark_planned()  # make_plan leaves this mark to the expansion, which a Plan call never runs
            call.usage = meter.usage()
            timings = meter.timings()
            return convert.plan_response(plan, timings, req.settings, engine.roles())
        raise AssertionError("unreachable: _call returns or raises")  # pragma: no cover

    async def Expand(self, request: pb.ExpandRequest, context: grpc.aio.ServicerContext) -> None:
        async with self._call("Expand", context) as call:
            request = checked(request)
            engine = self._ready_engine()
            req = convert.expand_request(request, self._planner, self._limits, engine.roles())
            async with self._work():
                events = pipeline.expand(engine, req.question, req.plan, req.settings, request_id=call.request_id,
                                         context=req.context)
                await _relay(events, call, context, req.settings, engine.roles(), pb.ExpandResponse)

    async def Answer(self, request: pb.AnswerRequest, context: grpc.aio.ServicerContext) -> None:
        async with self._call("Answer", context) as call:
            request = checked(request)
            engine = self._ready_engine()
            req = convert.plan_request(request, self._planner, self._limits)
            async with self._work():
                events = pipeline.answer(engine, req.question, req.mode, req.settings, request_id=call.request_id,
                                         context=req.context)
                await _relay(events, call, context, req.settings, engine.roles(), pb.AnswerResponse)

    async def Stream(self, request_iterator: AsyncIterator[pb.StreamRequest],
                     context: grpc.aio.ServicerContext) -> None:
        async with self._call("Stream", context) as call:
            messages = aiter(checked_stream(request_iterator))
            live: StreamedPrompt | None = None
            try:
                engine = self._ready_engine()
                async with self.streams.slot():
                    opened = await self._read_open(messages)
                    # Prefill (and in live mode, note on) each sentence while the rest is typed.
                    live = StreamedPrompt(engine, opened.mode, opened.settings, request_id=call.request_id,
                                          context=opened.context)
                    await live.__aenter__()
                    question = await self._read_pieces(messages, live, context)
            except BaseException:
                if live is not None:
                    await live.aclose()  # an abandoned or failed stream frees its prefix at once
                await errors.drain_requests(messages)
                raise
            try:
                async with self._work():
                    await self._answer_stream(engine, call, context, messages, opened, question, live)
            finally:
                await live.aclose()

    async def _read_open(self, messages: AsyncIterator[pb.StreamRequest]) -> convert.StreamCall:
        first = await anext(messages, None)
        if first is None:
            raise InvalidRequest("the stream ended before its open message", field="open")
        kind = first.WhichOneof("message")
        if kind is None:
            raise InvalidRequest("open: the first message must be open (got an empty StreamRequest)", field="open")
        if kind != "open":
            raise InvalidRequest(f"{kind}: the first message must be open (got {kind})", field=kind)
        return convert.stream_open(first.open, self._planner, self._limits)

    async def _read_pieces(self, messages: AsyncIterator[pb.StreamRequest], live: StreamedPrompt,
                           context: grpc.aio.ServicerContext) -> str:
        """Pieces until the end marker, handing each version of the prompt to `live` and writing its
        progress (sentences prefilled, notes) while the client is still typing."""
        prompt = convert.PromptBuffer(self._limits)
        writer = asyncio.create_task(_forward_progress(live, context), name="espalier-progress")
        try:
            async for msg in messages:
                kind = msg.WhichOneof("message")
                if kind == "piece":
                    prompt.apply(msg.piece)
                    live.update(prompt.text)
                elif kind == "end":
                    question = prompt.question()
                    await live.end()  # the prefill in flight covers most of the prompt: let it land
                    live.progress.put_nowait(None)
                    await writer
                    await context.write(pb.StreamResponse(event=convert.progress_to_pb(live.summary())))
                    return question
                elif kind == "open":
                    raise InvalidRequest("open: the stream is already open", field="open")
                else:
                    raise InvalidRequest("message: a StreamRequest must set open, piece or end", field="message")
            raise InvalidRequest("end: the stream closed before its end marker", field="end")
        finally:
            if not writer.done():
                await cancel_and_wait(writer)

    async def _answer_stream(self, engine: Engine, call: _Call, context: grpc.aio.ServicerContext,
                             messages: AsyncIterator[pb.StreamRequest], opened: convert.StreamCall,
                             question: str, live: StreamedPrompt) -> None:
        """Plan and expand while watching the request side: anything after the end is an error.

        The answer runs in a producer task and the watcher in another; both feed one queue that this
        frame drains and writes. So a violation stops the answer between two writes, never in one.
        """
        out: asyncio.Queue[object] = asyncio.Queue(maxsize=256)
        done = object()

        async def produce() -> None:
            try:
                answer = (live.answer(question) if live.live else
                          pipeline.answer(engine, question, opened.mode, opened.settings, request_id=call.request_id,
                                          context=opened.context))
                async with aclosing(answer) as events:
                    async for event in events:
                        await out.put(event)
            except Exception as exc:  # noqa: BLE001 - handed to the writer, which maps it
                await out.put(exc)
            else:
                await out.put(done)

        async def watch() -> None:
            try:
                async for msg in messages:
                    kind = msg.WhichOneof("message") or "message"
                    await errors.drain_requests(messages)
                    await out.put(InvalidRequest(f"{kind}: nothing may follow the end marker", field=kind))
                    return
            except Exception:
                log.debug("reading after the end marker failed", exc_info=True)

        tasks = [asyncio.create_task(produce(), name=f"espalier-stream-{call.request_id}"),
                 asyncio.create_task(watch(), name=f"espalier-watch-{call.request_id}")]
        try:
            while True:
                item = await out.get()
                if item is done:
                    return
                if isinstance(item, Exception):
                    raise item
                call.saw(item)  # type: ignore[arg-type]
                await context.write(pb.StreamResponse(
                    event=convert.event_to_pb(item, opened.settings, engine.roles())))  # type: ignore[arg-type]
        finally:
            await cancel_and_wait(*tasks)


async def _relay(events: AsyncGenerator[ev.Event, None], call: _Call, context: grpc.aio.ServicerContext,
                 settings: PlannerSettings, loaded: frozenset[Role],
                 response: Callable[..., pb.ExpandResponse | pb.AnswerResponse]) -> None:
    """Write a planner event stream to the caller, one response a event; closing the stream on the way
    out (the caller left, or a write failed) cancels the answer and frees its slots."""
    async with aclosing(events):
        async for event in events:
            call.saw(event)
            await context.write(response(event=convert.event_to_pb(event, settings, loaded)))


async def _forward_progress(live: StreamedPrompt, context: grpc.aio.ServicerContext) -> None:
    """Write what the streamed prompt reports until it says it is done (None)."""
    while (item := await live.progress.get()) is not None:
        await context.write(pb.StreamResponse(event=convert.progress_to_pb(item)))
