"""Metrics: Prometheus metrics through prometheus-client, and the HTTP endpoint that serves them.

Owns `Registry` (counters, gauges and histograms with labels given in order, plus callback metrics read
at scrape time, for numbers that live elsewhere such as engine slots or the admission queue: a thin
layer over prometheus-client's registry, so the catalogue below reads as before and the exposition is
the library's), `ServiceMetrics` (the catalogue of what the server measures; the metric names are the
dashboards' contract and stay as they are) and `start_metrics_server`, a minimal asyncio HTTP/1.x
server for GET /metrics on the server's own event loop (the library's own server runs a thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# Series named `*_created` (a timestamp per counter and histogram) are the library's addition; the
# catalogue never had them, and a dashboard or alert has no use for them.
prometheus_client.disable_created_metrics()

# The exposition is the 0.0.4 text format (the names are plain ASCII), so it is served as that.
CONTENT_TYPE = getattr(prometheus_client, "CONTENT_TYPE_PLAIN_0_0_4", "text/plain; version=0.0.4; charset=utf-8")
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[str, ...]
Samples = Iterable[tuple[Labels, float]]


def _checked(name: str, labels: Sequence[str]) -> tuple[str, ...]:
    """The same name rules for every kind (the library reserves `le` for histograms only)."""
    if not _NAME.match(name):
        raise ValueError(f"bad metric name {name!r}")
    for label in labels:
        if not _LABEL.match(label) or label.startswith("__") or label == "le":
            raise ValueError(f"bad label name {label!r}")
    return tuple(labels)


class _Labelled:
    """A library metric with labels given in order: `inc(1, "Plan", "OK")`, `value("Plan", "OK")`."""

    def __init__(self, metric: Any, registry: prometheus_client.CollectorRegistry, name: str,
                 labels: Sequence[str]) -> None:
        self._metric = metric
        self._registry = registry
        self.name = name
        self.labels = tuple(labels)

    def _child(self, values: Sequence[object]) -> Any:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {tuple(values)}")
        return self._metric.labels(*(str(v) for v in values)) if self.labels else self._metric

    def _sample(self, suffix: str, values: Sequence[object]) -> float:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {tuple(values)}")
        found = self._registry.get_sample_value(self.name + suffix,
                                                dict(zip(self.labels, (str(v) for v in values), strict=True)))
        return found or 0.0


class Counter(_Labelled):
    def inc(self, amount: float = 1.0, *labels: object) -> None:
        self._child(labels).inc(amount)  # the library refuses a negative amount (ValueError)

    def value(self, *labels: object) -> float:
        return self._sample("", labels)


class Gauge(_Labelled):
    def set(self, value: float, *labels: object) -> None:
        self._child(labels).set(value)

    def inc(self, amount: float = 1.0, *labels: object) -> None:
        self._child(labels).inc(amount)

    def value(self, *labels: object) -> float:
        return self._sample("", labels)


class Histogram(_Labelled):
    def observe(self, value: float, *labels: object) -> None:
        self._child(labels).observe(value)

    def count(self, *labels: object) -> int:
        return int(self._sample("_count", labels))


class _Callback(Collector):
    """A metric whose samples are read from fn() at scrape time. A callback that fails leaves its
    metric without samples for that scrape (logged), never the page blank."""

    def __init__(self, kind: str, name: str, help: str, labels: Sequence[str], fn: Callable[[], Samples]) -> None:
        self.kind, self.name, self.help, self.labels, self.fn = kind, name, help, tuple(labels), fn

    def _family(self) -> Metric:
        if self.kind == "counter":  # the library adds `_total` back to the family's samples
            return CounterMetricFamily(self.name.removesuffix("_total"), self.help, labels=self.labels)
        return GaugeMetricFamily(self.name, self.help, labels=self.labels)

    def describe(self) -> Iterator[Metric]:
        """The family without samples: registration checks names without reading fn()."""
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        try:
            samples = list(self.fn())
        except Exception:
            log.exception("metric %s failed to read its samples", self.name)
            samples = []
        for key, value in sorted((tuple(str(k) for k in key), float(v)) for key, v in samples):
            family.add_metric(list(key), value)
        yield family


class Registry:
    """The server's metrics; `render()` is the text exposition (format 0.0.4) of all of them."""

    def __init__(self) -> None:
        self.collectors = prometheus_client.CollectorRegistry(auto_describe=True)

    def counter(self, name: str, help: str, labels: Sequence[str] = (),
                fn: Callable[[], Samples] | None = None) -> Counter:
        """A counter; with fn, its samples are read from fn() at scrape time (a total kept elsewhere)."""
        labels = _checked(name, labels)
        if fn is not None:
            self.collectors.register(_Callback("counter", name, help, labels, fn))
            return Counter(None, self.collectors, name, labels)
        return Counter(prometheus_client.Counter(name, help, labels, registry=self.collectors),
                       self.collectors, name, labels)

    def gauge(self, name: str, help: str, labels: Sequence[str] = (),
              fn: Callable[[], Samples] | None = None) -> Gauge:
        labels = _checked(name, labels)
        if fn is not None:
            self.collectors.register(_Callback("gauge", name, help, labels, fn))
            return Gauge(None, self.collectors, name, labels)
        return Gauge(prometheus_client.Gauge(name, help, labels, registry=self.collectors), self.collectors, name, labels)

    def histogram(self, name: str, help: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
        labels = _checked(name, labels)
        metric = prometheus_client.Histogram(name, help, labels, buckets=tuple(buckets), registry=self.collectors)
        return Histogram(metric, self.collectors, name, labels)

    def render(self) -> str:
        return prometheus_client.generate_latest(self.collectors).decode("utf-8")


class ServiceMetrics:
    """What the server measures. Engine and admission numbers are read at scrape time via track_*."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or Registry()
        r = self.registry
        self.requests = r.counter("espalier_requests_total", "Finished RPCs by method and status code.",
                                  ("method", "code"))
        self.duration = r.histogram("espalier_request_duration_seconds", "RPC duration.", ("method",),
                                    (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.first_token = r.histogram("espalier_time_to_first_token_seconds",
                                       "Time from the start of an RPC to its first generated token.", ("method",))
        self.tokens = r.counter("espalier_completion_tokens_total", "Tokens generated, per model role.", ("role",))
        self.prompt_tokens = r.counter("espalier_prompt_tokens_total",
                                       "Prompt tokens of requests (reused ones included), per model role.",
                                       ("role",))
        self.reused_tokens = r.counter("espalier_prefix_tokens_reused_total",
                                       "Prompt tokens copied from a shared prefix instead of prefilled, per role.",
                                       ("role",))
        self.serving = r.gauge("espalier_serving", "1 when the health status is SERVING, else 0.")
        self.early_points = r.counter("espalier_points_started_early_total",
                                      "Points started while their skeleton was still being written (pipelined), "
                                      "per RPC method.", ("method",))

    def record_request(self, method: str, code: str, duration_s: float) -> None:
        self.requests.inc(1, method, code)
        self.duration.observe(duration_s, method)

    def record_early_points(self, method: str, count: int) -> None:
        self.early_points.inc(count, method)

    def record_first_token(self, method: str, seconds: float) -> None:
        self.first_token.observe(seconds, method)

    def record_usage(self, role: str, *, prompt: int, reused: int, completion: int) -> None:
        self.tokens.inc(completion, role)
        self.prompt_tokens.inc(prompt, role)
        self.reused_tokens.inc(reused, role)

    def track_engine(self, fn: Callable[[], Iterable[tuple[str, dict[str, Any]]]]) -> None:
        """fn() yields (role, {slots_busy, slots_total, queue_depth, tokens_per_s, reused_tokens,
        generated_tokens, and with speculation spec_k, spec_drafted, spec_accepted, verify_cost: {k: cost}})
        per loaded role; an empty iterable while no engine is loaded."""
        def pick(name: str) -> Callable[[], Samples]:
            return lambda: [((role, ), values[name]) for role, values in fn()]

        r = self.registry
        r.gauge("espalier_engine_slots_busy", "Engine slots decoding a sequence, per role.", ("role",),
                pick("slots_busy"))
        r.gauge("espalier_engine_slots_total", "Engine slots, per role.", ("role",), pick("slots_total"))
        r.gauge("espalier_engine_queue_depth", "Sequences waiting for an engine slot, per role.", ("role",),
                pick("queue_depth"))
        r.gauge("espalier_engine_tokens_per_second", "Recent decode throughput of all sequences, per role.",
                ("role",), pick("tokens_per_s"))
        r.counter("espalier_engine_reused_tokens_total",
                  "Prompt tokens the engine copied from resident or shared prefixes, per role.", ("role",),
                  pick("reused_tokens"))
        r.counter("espalier_engine_generated_tokens_total", "Tokens the engine generated, per role.", ("role",),
                  pick("generated_tokens"))

        # Speculative decoding: only roles with a speculator report these (spec_k >= 0).
        def spec(name: str) -> Callable[[], Samples]:
            return lambda: [((role,), v[name]) for role, v in fn() if v.get("spec_k", -1) >= 0]

        r.gauge("espalier_spec_k", "Drafts per sequence the cost model chose last (0 = plain decoding pays best).",
                ("role",), spec("spec_k"))
        r.counter("espalier_spec_drafted_tokens_total", "Drafted tokens the target verified, per role.", ("role",),
                  spec("spec_drafted"))
        r.counter("espalier_spec_accepted_tokens_total", "Drafted tokens the target kept, per role.", ("role",),
                  spec("spec_accepted"))
        r.gauge("espalier_spec_verify_cost", "Measured cost of a k-token target batch relative to one token.",
                ("role", "k"), lambda: [((role, str(k)), c) for role, v in fn()
                                         for k, c in dict(v.get("verify_cost", {})).items()])

    def track_admission(self, name: str, fn: Callable[[], tuple[int, int, int]]) -> None:
        """fn() gives (in_flight, waiting, rejected) of an Admission named `name` (requests, streams)."""
        r = self.registry
        r.gauge(f"espalier_{name}_in_flight", f"Admitted {name} running now.", (),
                lambda: [((), fn()[0])])
        r.gauge(f"espalier_{name}_waiting", f"{name.capitalize()} queued for admission (queue depth).", (),
                lambda: [((), fn()[1])])
        r.counter(f"espalier_{name}_rejected_total", f"{name.capitalize()} refused with RESOURCE_EXHAUSTED.", (),
                  lambda: [((), fn()[2])])


# --- the HTTP endpoint ----------------------------------------------------------------------------

_MAX_HEAD = 8192


async def start_metrics_server(registry: Registry, host: str, port: int) -> tuple[asyncio.Server, int]:
    """Serve GET /metrics on host:port (0 = any free port); returns the server and the bound port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):  # a slow or idle client must not hold a socket forever
                head = await reader.readuntil(b"\r\n\r\n")
            status, body, ctype = _respond(head, registry)
            method = head.split(b" ", 1)[0]
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode("ascii"))
            if method != b"HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a broken or slow client; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port, limit=_MAX_HEAD)
    bound = server.sockets[0].getsockname()[1] if server.sockets else port
    return server, bound


def _respond(head: bytes, registry: Registry) -> tuple[str, bytes, str]:
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return "400 Bad Request", b"bad request\n", "text/plain; charset=utf-8"
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return "405 Method Not Allowed", b"only GET\n", "text/plain; charset=utf-8"
    if target != b"/metrics":
        return "404 Not Found", b"see /metrics\n", "text/plain; charset=utf-8"
    return "200 OK", registry.render().encode("utf-8"), CONTENT_TYPE
