"""espalier.service.metrics: Prometheus text format and the /metrics HTTP endpoint."""

from __future__ import annotations

import asyncio

import pytest
from metric_samples import at, samples

from espalier.service.metrics import CONTENT_TYPE, Registry, ServiceMetrics, start_metrics_server


def test_counters_gauges_and_labels_render_in_text_format() -> None:
    r = Registry()
    c = r.counter("espalier_things_total", "Things.\nSecond line \\ slash", ("method", "code"))
    c.inc(1, "Plan", "OK")
    c.inc(2, "Plan", "OK")
    c.inc(1, 'we"ird\\', "a\nb")
    g = r.gauge("espalier_level", "A level.")
    g.set(2.5)
    r.gauge("espalier_live", "Read at scrape time.", ("role",), lambda: [(("small",), 3), (("large",), 1)])
    text = r.render()
    assert samples(text) == {
        at("espalier_things_total", method="Plan", code="OK"): 3,
        at("espalier_things_total", method='we"ird\\', code="a\nb"): 1,  # escaped and read back whole
        at("espalier_level"): 2.5,
        at("espalier_live", role="large"): 1, at("espalier_live", role="small"): 3,
    }
    assert "# TYPE espalier_things_total counter" in text and "# TYPE espalier_live gauge" in text
    assert "_created" not in text  # the library's timestamps are off: the catalogue never had them
    assert c.value("Plan", "OK") == 3 and g.value() == 2.5


def test_histograms_are_cumulative_with_sum_and_count() -> None:
    r = Registry()
    h = r.histogram("espalier_seconds", "Latency.", ("method",), buckets=(0.1, 1))
    for v in (0.05, 0.5, 0.5, 3):
        h.observe(v, "Expand")
    got = samples(r.render())
    assert [got[at("espalier_seconds_bucket", method="Expand", le=le)] for le in ("0.1", "1.0", "+Inf")] == [1, 3, 4]
    assert got[at("espalier_seconds_sum", method="Expand")] == pytest.approx(4.05)
    assert got[at("espalier_seconds_count", method="Expand")] == 4 and h.count("Expand") == 4


def test_misuse_is_refused() -> None:
    r = Registry()
    c = r.counter("a_total", "A.", ("x",))
    with pytest.raises(ValueError):
        c.inc(1)  # label missing
    with pytest.raises(ValueError):
        c.inc(-1, "x")
    with pytest.raises(ValueError):
        r.counter("a_total", "again")
    for bad in ("1abc", "has-dash"):
        with pytest.raises(ValueError):
            r.gauge(bad, "bad name")
    with pytest.raises(ValueError):
        r.gauge("ok", "bad label", ("le",))


def test_a_broken_callback_does_not_blank_the_page(caplog: pytest.LogCaptureFixture) -> None:
    r = Registry()
    r.gauge("espalier_ok", "Fine.").set(1)
    r.gauge("espalier_broken", "Raises.", (), lambda: 1 / 0)  # type: ignore[arg-type, return-value]
    with caplog.at_level("CRITICAL"):
        assert samples(r.render())[at("espalier_ok")] == 1


def test_the_service_catalogue_has_what_the_issue_asks_for() -> None:
    m = ServiceMetrics()
    m.track_engine(lambda: [("small", {"slots_busy": 1, "slots_total": 4, "queue_depth": 0, "tokens_per_s": 41.5,
                                       "reused_tokens": 120, "generated_tokens": 300, "spec_k": -1}),
                             ("large", {"slots_busy": 0, "slots_total": 4, "queue_depth": 0, "tokens_per_s": 9.0,
                                        "reused_tokens": 0, "generated_tokens": 50, "spec_k": 3, "spec_drafted": 40,
                                        "spec_accepted": 30, "verify_cost": {1: 1.0, 4: 1.2}})])
    m.track_admission("requests", lambda: (2, 1, 5))
    m.record_request("Expand", "OK", 0.3)
    m.record_first_token("Expand", 0.1)
    m.record_usage("small", prompt=50, reused=20, completion=8)
    got = samples(m.registry.render())
    for key, value in ((at("espalier_requests_total", method="Expand", code="OK"), 1),
                       (at("espalier_time_to_first_token_seconds_count", method="Expand"), 1),
                       (at("espalier_engine_tokens_per_second", role="small"), 41.5),
                       (at("espalier_engine_slots_busy", role="small"), 1),
                       (at("espalier_requests_waiting"), 1), (at("espalier_requests_in_flight"), 2),
                       (at("espalier_prefix_tokens_reused_total", role="small"), 20),
                       (at("espalier_engine_reused_tokens_total", role="small"), 120),
                       (at("espalier_spec_k", role="large"), 3),
                       (at("espalier_spec_accepted_tokens_total", role="large"), 30),
                       (at("espalier_spec_verify_cost", role="large", k="4"), 1.2)):
        assert got.get(key) == value, key
    assert at("espalier_spec_k", role="small") not in got  # no speculator there


async def _get(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


async def test_the_endpoint_serves_metrics_and_nothing_else() -> None:
    r = Registry()
    r.counter("espalier_hits_total", "Hits.").inc()
    server, port = await start_metrics_server(r, "127.0.0.1", 0)
    try:
        async with asyncio.timeout(5):
            ok = await _get(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = ok.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert f"Content-Type: {CONTENT_TYPE}".encode() in head
            assert body == r.render().encode() and samples(body.decode())[at("espalier_hits_total")] == 1
            assert (await _get(port, b"GET / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
            assert (await _get(port, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
            assert (await _get(port, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400")
            head_only = await _get(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
            assert head_only.endswith(b"\r\n\r\n")
    finally:
        server.close()
        await server.wait_closed()
