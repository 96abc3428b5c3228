"""`espalier bench load`: many concurrent clients for a set time, every stream checked, faults mixed in.

Owns the scenarios a busy server meets (whole answers in each mode, Plan then Expand, calls cancelled
after a few events, short deadlines, streamed prompts with revisions or abandoned while typing, slow
consumers, bad input), the integrity check of every event stream (`StreamCheck`), honouring
`retry-after-ms` when the server is full, health polling while it runs, the check that the server is
idle at the end and still answers, and the summary: answers per minute per mode and the latency
percentiles of the first event, the first token and the whole answer. Exit status 1 on any failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import re
import statistics
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from espalier.service.bench.stats import PERCENTILE_METHOD, percentile
from espalier.service.bench.target import MODES
from espalier.service.errors import FIELD_KEY, REQUEST_ID_KEY, RETRY_AFTER_KEY
from espalier.v1 import espalier_pb2 as pb
from espalier.v1 import espalier_pb2_grpc as pb_grpc

# Scenario weights of the default mix: mostly whole answers, with every kind of fault a busy server
# meets from real clients.
DEFAULT_MIX = {"answer:direct": 3, "answer:sot": 2, "answer:sgd": 2, "answer:auto": 2, "plan+expand": 1,
               "cancel": 1, "deadline": 1, "stream": 2, "stream-abandoned": 1, "slow-reader": 1, "bad-input": 2}
QUESTIONS = (
    "What are the main benefits of regular exercise?",
    "How can I improve my time management at work?",
    "What are some tips for learning a new language?",
    "Why is the sky blue?",
    "What is 17 times 23?",
    "Compare cats and dogs as pets.",
    "How do I make a good cup of coffee?",
    "What should I pack for a week of hiking?",
)
EXPECTED = {"cancel": grpc.StatusCode.CANCELLED, "deadline": grpc.StatusCode.DEADLINE_EXCEEDED,
            "stream-abandoned": grpc.StatusCode.CANCELLED}


@dataclass(frozen=True)
class LoadOptions:
    target: str
    clients: int = 16
    duration_s: float = 60.0
    token: str | None = None
    seed: int = 1
    mix: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MIX))
    point_tokens: int = 48
    answer_tokens: int = 96
    call_timeout_s: float = 300.0  # a whole answer that takes longer than this is a failure
    metrics_url: str = ""  # http://host:port/metrics: the idle check reads the gauges there


@dataclass
class CallRecord:
    scenario: str
    outcome: str  # answered | expected_status | refused_ok | gave_up_busy | failure | lost_or_mixed
    detail: str = ""
    first_event_s: float | None = None
    first_token_s: float | None = None
    total_s: float | None = None
    busy_retries: int = 0
    retry_after_ms: list[int] = field(default_factory=list)


class Abandoned(Exception):
    """Raised by a streamed prompt's piece generator: the typist went away."""


class Problem(Exception):
    """A stream broke the protocol: an event out of order, from another call, or text that does not add up."""


class StreamCheck:
    """Checks one call's events as they arrive (the order AnswerEvent's comment promises)."""

    def __init__(self) -> None:
        self.planned: set[int] = set()
        self.graph: dict[int, pb.Node] | None = None
        self.started: set[int] = set()
        self.ended: set[int] = set()
        self.deltas: dict[int, list[str]] = {}
        self.done = False

    def feed(self, event: pb.AnswerEvent) -> None:
        kind = event.WhichOneof("event")
        if self.done:
            raise Problem(f"{kind} after answer_done")
        if kind == "prompt_progress":
            if self.graph is not None or self.planned:
                raise Problem("prompt_progress after the plan began")
        elif kind == "node_planned":
            if self.graph is not None:
                raise Problem("node_planned after plan_ready")
            self.planned.add(event.node_planned.node.id)
        elif kind == "plan_ready":
            if self.graph is not None:
                raise Problem("a second plan_ready")
            self.graph = {n.id: n for n in event.plan_ready.graph.nodes}
            if not self.graph:
                raise Problem("plan_ready with no nodes")
            for node_id in self.started - set(self.graph):
                if node_id not in self.ended:
                    raise Problem(f"node {node_id} started early but is not in the plan and was not ended")
        elif kind in ("node_started", "node_delta", "node_finished", "node_failed"):
            self._node_event(kind, getattr(event, kind))
        elif kind == "answer_done":
            if self.graph is None:
                raise Problem("answer_done before plan_ready")
            if set(self.graph) - self.ended:
                raise Problem(f"answer_done while nodes {sorted(set(self.graph) - self.ended)} never ended")
            if not event.answer_done.text.strip():
                raise Problem("an empty answer")
            self.done = True
        else:
            raise Problem(f"an unknown event {kind!r}")

    def _node_event(self, kind: str, e: Any) -> None:
        node_id = e.node_id
        known = self.graph is not None and node_id in self.graph
        if not known and node_id not in self.planned:
            raise Problem(f"{kind} for node {node_id}, which this call never planned")
        if kind == "node_started":
            if node_id in self.started:
                raise Problem(f"node {node_id} started twice")
            self.started.add(node_id)
            self.deltas[node_id] = []
            return
        if node_id not in self.started:
            raise Problem(f"{kind} for node {node_id} before it started")
        if node_id in self.ended:
            raise Problem(f"{kind} for node {node_id} after it ended")
        if kind == "node_delta":
            self.deltas[node_id].append(e.text)
            return
        self.ended.add(node_id)
        joined = "".join(self.deltas[node_id])
        text = e.text if kind == "node_finished" else e.partial_text
        if kind == "node_finished" and joined.strip() != text.strip():
            raise Problem(f"node {node_id}'s deltas ({len(joined)} chars) do not join to its text ({len(text)})")

    def complete(self) -> None:
        if not self.done:
            raise Problem("the stream ended without answer_done")


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p90 and p99 (espalier.service.bench.stats: the same method as every bench) and the count."""
    out: dict[str, float | None] = {f"p{q}": _round3(percentile(values, q)) for q in (50, 90, 99)}
    return {**out, "n": len(values)}


def _round3(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class LoadRun:
    def __init__(self, options: LoadOptions, channel: grpc.aio.Channel,
                 progress: Callable[[str], None] | None = None) -> None:
        self.o = options
        self.channel = channel
        self.stub = pb_grpc.EspalierServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
        self.records: list[CallRecord] = []
        self.health_problems: list[str] = []
        self.progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
        self.generation = pb.GenerationSettings(point_max_tokens=options.point_tokens,
                                                answer_max_tokens=options.answer_tokens)
        self.t0 = 0.0

    def metadata(self, request_id: str) -> tuple[tuple[str, str], ...]:
        md = ((REQUEST_ID_KEY, request_id),)
        return md + ((("authorization", f"Bearer {self.o.token}"),) if self.o.token else ())

    # --- the run ------------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        self.t0 = time.monotonic()
        deadline = self.t0 + self.o.duration_s
        names = list(self.o.mix)
        weights = [self.o.mix[n] for n in names]
        poller = asyncio.create_task(self._poll_health(deadline))
        reporter = asyncio.create_task(self._report(deadline))
        clients = [asyncio.create_task(self._client(i, deadline, names, weights)) for i in range(self.o.clients)]
        await asyncio.gather(*clients)
        for task in (poller, reporter):
            task.cancel()
        await asyncio.gather(poller, reporter, return_exceptions=True)
        elapsed = time.monotonic() - self.t0
        idle = await self._idle_at_end()
        still = await self._still_answers()
        return self._summary(elapsed, idle, still)

    async def _client(self, index: int, deadline: float, names: list[str], weights: list[int]) -> None:
        rng = random.Random(self.o.seed * 1000 + index)
        while time.monotonic() < deadline:
            scenario = rng.choices(names, weights)[0]
            record = await self._with_busy_retries(scenario, rng, deadline)
            self.records.append(record)
            if record.outcome == "gave_up_busy":
                return  # told to come back after the run ends: this client is done

    async def _with_busy_retries(self, scenario: str, rng: random.Random, deadline: float) -> CallRecord:
        retries, waits = 0, []
        while True:
            record = await self._one(scenario, rng)
            if record.outcome != "busy":
                record.busy_retries, record.retry_after_ms = retries, waits
                return record
            wait_ms = int(record.detail or "1000")
            waits.append(wait_ms)
            retries += 1
            if time.monotonic() + wait_ms / 1000 >= deadline:
                return CallRecord(scenario, "gave_up_busy", f"still busy after {retries} tries",
                                  busy_retries=retries, retry_after_ms=waits)
            await asyncio.sleep(wait_ms / 1000 * (0.8 + 0.4 * rng.random()))  # jitter: no thundering herd

    async def _one(self, scenario: str, rng: random.Random) -> CallRecord:
        question = rng.choice(QUESTIONS)
        request_id = f"load-{uuid.uuid4().hex[:12]}"
        t0 = time.monotonic()
        record = CallRecord(scenario, "answered")
        try:
            async with asyncio.timeout(self.o.call_timeout_s):
                if scenario == "bad-input":
                    return await self._bad_input(rng, request_id)
                call = self._start(scenario, question, rng, request_id)
                await self._consume(call, scenario, rng, request_id, t0, record)
        except grpc.aio.AioRpcError as err:
            return self._status(scenario, err, record)
        except Problem as problem:
            return dataclasses.replace(record, outcome="lost_or_mixed", detail=str(problem))
        except TimeoutError:
            return dataclasses.replace(record, outcome="failure", detail=f"no end within {self.o.call_timeout_s} s")
        record.total_s = time.monotonic() - t0
        return record

    def _start(self, scenario: str, question: str, rng: random.Random, request_id: str) -> Any:
        md = self.metadata(request_id)
        mode = scenario.split(":", 1)[1] if scenario.startswith("answer:") else rng.choice(["direct", "sot", "sgd"])
        timeout = rng.uniform(0.3, 2.0) if scenario == "deadline" else self.o.call_timeout_s
        if scenario.startswith("stream"):
            return self.stub.Stream(self._pieces(question, rng, scenario == "stream-abandoned", mode),
                                    metadata=md, timeout=timeout)
        if scenario == "plan+expand":
            return self._plan_then_expand(question, mode, md)
        request = pb.AnswerRequest(question=question, mode=MODES[mode], settings=self.generation)
        return self.stub.Answer(request, metadata=md, timeout=timeout)

    async def _plan_then_expand(self, question: str, mode: str, md: Any) -> Any:
        plan = await self.stub.Plan(pb.PlanRequest(question=question, mode=MODES[mode], settings=self.generation),
                                    metadata=md, timeout=self.o.call_timeout_s)
        return self.stub.Expand(pb.ExpandRequest(question=question, graph=plan.graph, settings=self.generation),
                                metadata=md, timeout=self.o.call_timeout_s), plan

    async def _pieces(self, question: str, rng: random.Random, abandon: bool, mode: str):
        yield pb.StreamRequest(open=pb.StreamOpen(mode=MODES[mode], settings=self.generation))
        words = question.split(" ")
        text = ""
        for i, word in enumerate(words):
            text += ("" if i == 0 else " ") + word
            yield pb.StreamRequest(piece=pb.PromptPiece(text=("" if i == 0 else " ") + word))
            await asyncio.sleep(rng.uniform(0.0, 0.05))  # typing
            if abandon and i == len(words) // 2:
                raise Abandoned  # the user closed the page while typing: grpc cancels the call
            if i == 1 and rng.random() < 0.3:  # a correction: the prompt so far, retyped
                yield pb.StreamRequest(piece=pb.PromptPiece(text=text, revise=True, revise_from=0))
        yield pb.StreamRequest(end=pb.StreamEnd())

    async def _consume(self, call: Any, scenario: str, rng: random.Random, request_id: str, t0: float,
                       record: CallRecord) -> None:
        plan = None
        if asyncio.iscoroutine(call):
            call, plan = await call
        check = StreamCheck()
        if plan is not None:  # Expand: the plan came from Plan; the stream starts at plan_ready
            check.planned = {n.id for n in plan.graph.nodes}
        stop_after = rng.randint(1, 5) if scenario == "cancel" else None
        # A call refused before its first message may carry its metadata in the trailers only (grpc's
        # trailers-only response): no id here then, and reading on raises the status.
        echoed = dict(await call.initial_metadata()).get(REQUEST_ID_KEY)
        if echoed is not None and echoed != request_id:
            raise Problem(f"the call answered as request {echoed!r}, not {request_id!r}")
        try:
            await self._read(call, check, scenario, stop_after, t0, record)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if scenario != "stream-abandoned" or (task is not None and task.cancelling()):
                raise  # the bench itself is being cancelled
            record.outcome, record.detail = "expected_status", "abandoned while typing"  # grpc cancelled it
            return
        if record.outcome == "expected_status":
            return
        if echoed is None:
            raise Problem(f"an answer came without the request id {request_id!r} in its metadata")
        if scenario == "stream-abandoned":
            raise Problem("a stream abandoned while typing was answered")
        check.complete()

    async def _read(self, call: Any, check: StreamCheck, scenario: str, stop_after: int | None, t0: float,
                    record: CallRecord) -> None:
        seen = 0
        async for reply in call:
            now = time.monotonic() - t0
            record.first_event_s = record.first_event_s if record.first_event_s is not None else now
            if reply.event.WhichOneof("event") == "node_delta" and record.first_token_s is None:
                record.first_token_s = now
            check.feed(reply.event)
            seen += 1
            if scenario == "slow-reader":
                await asyncio.sleep(0.05)
            if stop_after is not None and seen >= stop_after:
                call.cancel()
                record.outcome, record.detail = "expected_status", "cancelled by the client"
                return

    def _status(self, scenario: str, err: grpc.aio.AioRpcError, record: CallRecord) -> CallRecord:
        code = err.code()
        trailers = dict(err.trailing_metadata() or ())
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return dataclasses.replace(record, outcome="busy", detail=str(trailers.get(RETRY_AFTER_KEY, "1000")))
        if EXPECTED.get(scenario) is code or (scenario == "deadline" and code is grpc.StatusCode.CANCELLED):
            return dataclasses.replace(record, outcome="expected_status", detail=code.name)
        return dataclasses.replace(record, outcome="failure", detail=f"{code.name}: {err.details()}")

    # --- bad input: every kind must be INVALID_ARGUMENT naming a field -----------------------------

    async def _bad_input(self, rng: random.Random, request_id: str) -> CallRecord:
        name, make = rng.choice(BAD_INPUTS)
        return await self._refused(name, make, request_id)

    async def _bad_input_named(self, name: str) -> CallRecord:
        """One bad input by name (tests send each kind once)."""
        return await self._refused(name, dict(BAD_INPUTS)[name], f"load-{uuid.uuid4().hex[:12]}")

    async def _refused(self, name: str, make: Maker, request_id: str) -> CallRecord:
        try:
            await make(self, self.metadata(request_id))
        except grpc.aio.AioRpcError as err:
            named = dict(err.trailing_metadata() or ()).get(FIELD_KEY, "")
            if err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                return CallRecord("bad-input", "busy", dict(err.trailing_metadata() or ()).get(RETRY_AFTER_KEY, "1000"))
            if err.code() is grpc.StatusCode.INVALID_ARGUMENT and named:
                return CallRecord("bad-input", "refused_ok", f"{name}: {named}")
            return CallRecord("bad-input", "failure", f"{name}: {err.code().name} (field {named!r}): {err.details()}")
        return CallRecord("bad-input", "failure", f"{name}: accepted")

    # --- around the run -----------------------------------------------------------------------------

    async def _poll_health(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                reply = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    self.health_problems.append(f"{time.monotonic() - self.t0:.0f}s: status {reply.status}")
            except grpc.aio.AioRpcError as err:
                self.health_problems.append(f"{time.monotonic() - self.t0:.0f}s: {err.code().name}")
            await asyncio.sleep(2.0)

    async def _report(self, deadline: float) -> None:
        while True:
            await asyncio.sleep(5.0)
            outcomes = Counter(r.outcome for r in self.records)
            elapsed = time.monotonic() - self.t0
            self.progress(f"[load] {elapsed:5.0f}/{self.o.duration_s:.0f}s  calls {len(self.records)}  "
                          f"answered {outcomes['answered']}  failures {outcomes['failure']}  "
                          f"lost/mixed {outcomes['lost_or_mixed']}  busy give-ups {outcomes['gave_up_busy']}")

    async def _idle_at_end(self) -> bool | None:
        """True once the server's gauges show nothing running or waiting (within 30 s); None without
        a metrics URL to read them from."""
        if not self.o.metrics_url:
            return None
        busy = re.compile(r"^espalier_(?:engine_slots_busy|\w+_in_flight|\w+_waiting|engine_queue_depth)\b.*\s(\S+)$")
        end = time.monotonic() + 30
        while time.monotonic() < end:
            text = await asyncio.to_thread(_fetch, self.o.metrics_url)
            values = [float(m.group(1)) for line in text.splitlines() if (m := busy.match(line))]
            if values and not any(values):
                return True
            await asyncio.sleep(0.5)
        return False

    async def _still_answers(self) -> bool:
        request = pb.AnswerRequest(question="Say hello.", mode=pb.MODE_DIRECT,
                                   settings=pb.GenerationSettings(answer_max_tokens=8))
        check = StreamCheck()
        try:
            async for reply in self.stub.Answer(request, metadata=self.metadata("load-final"), timeout=120):
                check.feed(reply.event)
            check.complete()
            return True
        except (grpc.aio.AioRpcError, Problem):
            return False

    def _summary(self, elapsed: float, idle: bool | None, still: bool) -> dict[str, Any]:
        outcomes = Counter(r.outcome for r in self.records)
        minutes = elapsed / 60
        answered = [r for r in self.records if r.outcome == "answered"]
        # answers per minute per way of asking: each answer mode, Plan then Expand, streamed prompts
        per_mode = Counter(r.scenario.removeprefix("answer:") for r in answered
                           if r.scenario.startswith("answer:") or r.scenario in ("plan+expand", "stream"))
        waits = [w for r in self.records for w in r.retry_after_ms]
        problems = [f"{r.scenario}: {r.outcome}: {r.detail}" for r in self.records
                    if r.outcome in ("failure", "lost_or_mixed")]
        return {
            "clients": self.o.clients, "duration_s": round(elapsed, 1), "calls": len(self.records),
            "outcomes": dict(sorted(outcomes.items())),
            "failures": outcomes["failure"], "lost_or_mixed": outcomes["lost_or_mixed"],
            "idle_at_end": idle, "still_answers": still, "health_problems": self.health_problems,
            "answers_per_minute": {mode: round(n / minutes, 2) for mode, n in sorted(per_mode.items())},
            "answers_per_minute_total": round(len(answered) / minutes, 2),
            "busy_retries": sum(r.busy_retries for r in self.records),
            "retry_after_ms_mean": round(statistics.mean(waits)) if waits else None,
            "percentile_method": PERCENTILE_METHOD,
            "latency_s": {
                "first_event": percentiles([r.first_event_s for r in answered if r.first_event_s is not None]),
                "first_token": percentiles([r.first_token_s for r in answered if r.first_token_s is not None]),
                "total": percentiles([r.total_s for r in answered if r.total_s is not None]),
            },
            "by_scenario": {s: dict(Counter(r.outcome for r in self.records if r.scenario == s))
                            for s in sorted({r.scenario for r in self.records})},
            "problems": problems[:50],
            "mix": self.o.mix,
        }


def ok(summary: dict[str, Any]) -> bool:
    return (summary["failures"] == 0 and summary["lost_or_mixed"] == 0 and summary["still_answers"]
            and summary["idle_at_end"] is not False and not summary["health_problems"])


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


# --- the bad inputs --------------------------------------------------------------------------------

Maker = Callable[["LoadRun", Any], Awaitable[Any]]


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


def _raw(method: str, data: bytes) -> Maker:
    """Bytes sent as they are (what no generated stub would send): for requests that do not decode."""
    async def send(run: LoadRun, md: Any) -> None:
        call = run.channel.unary_stream(f"/espalier.v1.EspalierService/{method}", request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        await _drain(call(data, metadata=md, timeout=30))
    return send


def _plan(**kw: Any) -> Maker:
    return lambda run, md: run.stub.Plan(pb.PlanRequest(**kw), metadata=md, timeout=30)


def _answer(**kw: Any) -> Maker:
    return lambda run, md: _drain(run.stub.Answer(pb.AnswerRequest(**kw), metadata=md, timeout=30))


def _expand(nodes: list[pb.Node], route: int = pb.ROUTE_PARALLEL) -> Maker:
    graph = pb.Graph(nodes=nodes, route=route)
    return lambda run, md: _drain(run.stub.Expand(pb.ExpandRequest(question="Why?", graph=graph), metadata=md,
                                                  timeout=30))


def _stream(*messages: pb.StreamRequest) -> Maker:
    return lambda run, md: _drain(run.stub.Stream(iter(messages), metadata=md, timeout=30))


_OPEN = pb.StreamRequest(open=pb.StreamOpen(mode=pb.MODE_DIRECT))
BAD_INPUTS: tuple[tuple[str, Maker], ...] = (
    ("empty question", _plan(question="")),
    ("blank question", _answer(question="   \n ")),
    ("question too long", _plan(question="why " * 100_000)),
    ("invalid UTF-8 question", _raw("Answer", b"\x0a\x03\xff\xfe\xfd")),
    ("invalid UTF-8 in a chat message", _raw("Answer", b"\x12\x05\x12\x03\xc3\x28\x41")),
    ("top_p above 1", _answer(question="Why?", settings=pb.GenerationSettings(top_p=2.0))),
    ("negative temperature", _plan(question="Why?", settings=pb.GenerationSettings(temperature=-1.0))),
    ("token budget too large", _answer(question="Why?", settings=pb.GenerationSettings(point_max_tokens=10**9))),
    ("unknown mode", _plan(question="Why?", mode=99)),
    ("graph with a cycle", _expand([pb.Node(id=1, title="a", depends_on=[2]), pb.Node(id=2, title="b", depends_on=[1])])),
    ("graph with a repeated id", _expand([pb.Node(id=1, title="a"), pb.Node(id=1, title="b")])),
    ("graph with no nodes", _expand([])),
    ("node with an empty title", _expand([pb.Node(id=1, title="")])),
    ("dependency on a missing node", _expand([pb.Node(id=1, title="a", depends_on=[7])])),
    ("conversation ending with the assistant", _answer(messages=[pb.ChatMessage(role="user", content="Why?"),
                                                                 pb.ChatMessage(role="assistant", content="So.")])),
    ("chat message with an unknown role", _plan(messages=[pb.ChatMessage(role="robot", content="hi"),
                                                          pb.ChatMessage(role="user", content="Why?")])),
    ("system text too long", _answer(messages=[pb.ChatMessage(role="system", content="be kind " * 2000),
                                               pb.ChatMessage(role="user", content="Why?")])),
    ("stream history with a system turn", _stream(pb.StreamRequest(open=pb.StreamOpen(
        history=[pb.ChatMessage(role="system", content="x")])))),
    ("stream without open", _stream(pb.StreamRequest(piece=pb.PromptPiece(text="Why?")))),
    ("stream opened twice", _stream(_OPEN, _OPEN)),
    ("stream with an empty prompt", _stream(_OPEN, pb.StreamRequest(end=pb.StreamEnd()))),
    ("stream revising past its end", _stream(_OPEN, pb.StreamRequest(piece=pb.PromptPiece(text="Why", revise=True,
                                                                                           revise_from=99)))),
)


async def run_load(options: LoadOptions, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    channel = grpc.aio.insecure_channel(options.target)
    try:
        return await LoadRun(options, channel, progress).run()
    finally:
        await channel.close()


def write_json(summary: dict[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(summary, out, indent=1)
