"""Metrics: a tiny Prometheus text-format registry and the HTTP endpoint that serves it.

Owns `Registry` (counters, gauges and histograms with labels, plus callback metrics read at scrape
time, for numbers that live elsewhere such as engine slots or the admission queue), the text
exposition format 0.0.4, `ServiceMetrics` (the catalogue of what the server measures) and
`start_metrics_server`, a minimal asyncio HTTP/1.x server for GET /metrics. Standard library only:
the format is small and stable, and a dependency would be more code to trust than this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[str, ...]
Samples = Iterable[tuple[Labels, float]]


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)) + "}"


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        if not _NAME.match(name):
            raise ValueError(f"bad metric name {name!r}")
        for label in labels:
            if not _LABEL.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"bad label name {label!r}")
        self.name = name
        self.help = help
        self.labels = tuple(labels)

    def _key(self, values: Sequence[object]) -> Labels:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {tuple(values)}")
        return tuple(str(v) for v in values)

    def lines(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}", *self.lines()]


class _Scalar(_Metric):
    def __init__(self, name: str, help: str, labels: Sequence[str] = (),
                 fn: Callable[[], Samples] | None = None) -> None:
        super().__init__(name, help, labels)
        self._values: dict[Labels, float] = {}
        self._fn = fn

    def value(self, *labels: object) -> float:
        return self._values.get(self._key(labels), 0.0)

    def lines(self) -> list[str]:
        samples = dict(self._values)
        if self._fn is not None:
            for key, value in self._fn():
                samples[self._key(key)] = float(value)
        return [f"{self.name}{_labels_text(self.labels, k)} {format_value(v)}" for k, v in sorted(samples.items())]


class Counter(_Scalar):
    kind = "counter"

    def inc(self, amount: float = 1.0, *labels: object) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Scalar):
    kind = "gauge"

    def set(self, value: float, *labels: object) -> None:
        self._values[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, *labels: object) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        super().__init__(name, help, labels)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError("buckets must be distinct finite numbers")
        self.buckets = (*bounds, math.inf)
        self._counts: dict[Labels, list[int]] = {}
        self._sums: dict[Labels, float] = {}

    def observe(self, value: float, *labels: object) -> None:
        key = self._key(labels)
        counts = self._counts.setdefault(key, [0] * len(self.buckets))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1  # stored per bucket, made cumulative when rendered
                break
        self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, *labels: object) -> int:
        return sum(self._counts.get(self._key(labels), ()))

    def lines(self) -> list[str]:
        out: list[str] = []
        names = (*self.labels, "le")
        for key in sorted(self._counts):
            running = 0
            for bound, n in zip(self.buckets, self._counts[key], strict=True):
                running += n
                out.append(f"{self.name}_bucket{_labels_text(names, (*key, format_value(bound)))} {running}")
            out.append(f"{self.name}_sum{_labels_text(self.labels, key)} {format_value(self._sums[key])}")
            out.append(f"{self.name}_count{_labels_text(self.labels, key)} {running}")
        return out


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def _add(self, metric: _Metric) -> _Metric:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is registered twice")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels: Sequence[str] = (),
                fn: Callable[[], Samples] | None = None) -> Counter:
        """A counter; with fn, its samples are also read from fn() at scrape time (a total kept elsewhere)."""
        metric = self._add(Counter(name, help, labels, fn))
        assert isinstance(metric, Counter)
        return metric

    def gauge(self, name: str, help: str, labels: Sequence[str] = (),
              fn: Callable[[], Samples] | None = None) -> Gauge:
        metric = self._add(Gauge(name, help, labels, fn))
        assert isinstance(metric, Gauge)
        return metric

    def histogram(self, name: str, help: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
        metric = self._add(Histogram(name, help, labels, buckets))
        assert isinstance(metric, Histogram)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            try:
                lines.extend(metric.render())
            except Exception:
                log.exception("metric %s failed to render", metric.name)
        return "\n".join(lines) + "\n"


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
