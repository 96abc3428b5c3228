"""espalier.service.server and serve_cli over the fake engine: lifecycle (health while loading, SERVING, drain
and the fixed shutdown order), the shared-token check, TLS and mutual TLS, reflection, /metrics,
and the `espalier serve` command line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from metric_samples import at, samples
from service_fakes import QUESTION, FakeEngine, engine_with_skeletons, running, settings

from espalier.service import serve_cli
from espalier.service.server import SERVICE_NAME, serve
from espalier.service.servicer import REQUEST_ID
from espalier.v1 import espalier_pb2 as pb
from espalier.v1 import espalier_pb2_grpc

C = grpc.StatusCode
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ClosableFake(FakeEngine):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.closed_with: list[float] = []

    async def aclose(self, grace_s: float = 5.0) -> None:  # type: ignore[override]
        self.closed_with.append(grace_s)


async def _http_get(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data.decode()


def _body(response: str) -> str:
    return response.split("\r\n\r\n", 1)[1]


async def _status(stub: health_pb2_grpc.HealthStub, service: str = "") -> int:
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status


async def _status_or_gone(stub: health_pb2_grpc.HealthStub) -> int | None:
    try:
        return await _status(stub)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() in (C.UNAVAILABLE, C.CANCELLED)  # the port closing under the call
        return None


async def test_serve_reports_not_serving_while_loading_then_serving_then_drains_in_order() -> None:
    engine = ClosableFake()
    engine.script("You are an organizer", " A\n2. B\n")
    hold = asyncio.Event()
    engine.script("HOLD", "held words", hold=hold)
    loaded, stop = asyncio.Event(), asyncio.Event()
    ports: dict[str, Any] = {}

    async def load(_settings: object) -> FakeEngine:
        await loaded.wait()
        return engine

    config = settings(metrics_port=0, grace_s=5)
    task = asyncio.create_task(serve(config, load_engine=load, stop=stop, install_signals=False,
                                     on_listening=lambda port, metrics: ports.update(port=port, metrics=metrics)))
    async with asyncio.timeout(20):
        while not ports:
            await asyncio.sleep(0.01)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['port']}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = espalier_pb2_grpc.EspalierServiceStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            assert (await watch.read()).status == NOT_SERVING
            assert await _status(health) == NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Plan(pb.PlanRequest(question=QUESTION))
            assert info.value.code() is C.UNAVAILABLE
            assert samples(_body(await _http_get(ports["metrics"], "/metrics")))[at("espalier_serving")] == 0

            loaded.set()
            assert (await watch.read()).status == SERVING
            watch.cancel()
            assert await _status(health) == SERVING
            plan = await stub.Plan(pb.PlanRequest(question=QUESTION, mode=pb.MODE_SOT))
            assert [n.part for n in plan.graph.nodes].count(pb.NODE_PART_POINT) == 2
            got = samples(_body(await _http_get(ports["metrics"], "/metrics")))
            assert got[at("espalier_serving")] == 1 and got[at("espalier_requests_total", method="Plan", code="OK")] == 1

            graph = pb.Graph(nodes=[pb.Node(id=1, title="HOLD")])
            in_flight = stub.Expand(pb.ExpandRequest(question=QUESTION, graph=graph))
            assert (await in_flight.read()).event.WhichOneof("event") == "plan_ready"
            stop.set()
            while await _status_or_gone(health) == SERVING:  # draining: NOT_SERVING first (then the port
                await asyncio.sleep(0.01)  # closes: grpc sends GOAWAY and new calls fail) ...
            with pytest.raises(grpc.aio.AioRpcError) as info:  # ... new work refused ...
                await stub.Plan(pb.PlanRequest(question=QUESTION))
            assert info.value.code() is C.UNAVAILABLE
            assert not engine.closed_with  # ... the engine still runs the admitted call ...
            hold.set()
            rest = []
            while (r := await in_flight.read()) is not grpc.aio.EOF:
                rest.append(r.event.WhichOneof("event"))
            assert rest[-1] == "answer_done"  # ... which finishes within the grace period
        assert await task == 0
    assert len(engine.closed_with) == 1 and 0 <= engine.closed_with[0] <= 5  # the engine drained last


async def test_calls_past_the_grace_period_are_cancelled_and_their_sequences_freed() -> None:
    engine = ClosableFake(delay=0.05, default_reply=" ".join(["w"] * 1000))
    stop = asyncio.Event()
    ports: dict[str, int] = {}

    async def load(_settings: object) -> FakeEngine:
        return engine

    config = settings(grace_s=0.3, planner=settings().planner.replace(point_max_tokens=1000))
    task = asyncio.create_task(serve(config, load_engine=load, stop=stop, install_signals=False,
                                     on_listening=lambda port, _m: ports.update(port=port)))
    async with asyncio.timeout(20):
        while not ports:
            await asyncio.sleep(0.01)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['port']}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while await _status(health) != SERVING:
                await asyncio.sleep(0.01)
            call = espalier_pb2_grpc.EspalierServiceStub(channel).Expand(pb.ExpandRequest(
                question=QUESTION, graph=pb.Graph(nodes=[pb.Node(id=1, title="long")])))
            while engine.open_sequences == 0:
                await asyncio.sleep(0.01)
            stop.set()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in call:
                    pass
            assert info.value.code() in (C.CANCELLED, C.UNAVAILABLE)
        assert await task == 0
    assert engine.open_sequences == 0 and engine.closed_with


async def test_stop_while_loading_and_a_failed_load() -> None:
    stop = asyncio.Event()
    never = asyncio.Event()

    async def slow(_settings: object) -> FakeEngine:
        await never.wait()
        raise AssertionError("unreachable")

    async def broken(_settings: object) -> FakeEngine:
        raise FileNotFoundError("no such model: /models/x.gguf")

    async with asyncio.timeout(10):
        task = asyncio.create_task(serve(settings(), load_engine=slow, stop=stop, install_signals=False))
        await asyncio.sleep(0.05)
        stop.set()
        assert await task == 0
        assert await serve(settings(), load_engine=broken, install_signals=False) == 1


async def test_the_shared_token_is_required_except_for_health() -> None:
    engine = engine_with_skeletons()
    async with running(settings(auth_token="s3cret-token"), engine) as srv, asyncio.timeout(10):
        graph = pb.Graph(nodes=[pb.Node(id=1, title="A")])
        calls = {
            "Plan": lambda md: srv.stub.Plan(pb.PlanRequest(question=QUESTION, mode=pb.MODE_DIRECT), metadata=md),
            "Expand": lambda md: _drain(srv.stub.Expand(pb.ExpandRequest(question=QUESTION, graph=graph),
                                                        metadata=md)),
            "Stream": lambda md: _stream(srv.stub.Stream(metadata=md)),
        }
        for name, make in calls.items():
            for md in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret-token"),)):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    # a refused Stream is read before it is written to: when the server ends a call
                    # before reading it, grpc's aio client may report its own failed write (INTERNAL)
                    # instead of the server's status
                    await (srv.stub.Stream(metadata=md).read() if name == "Stream" else make(md))
                assert info.value.code() is C.UNAUTHENTICATED, (name, md)
            await make((("authorization", "Bearer s3cret-token"),))
        assert await _status(srv.health) == SERVING  # probes carry no token


async def _drain(call: Any) -> list[Any]:
    return [r async for r in call]


async def _stream(call: Any) -> list[Any]:
    for m in (pb.StreamRequest(open=pb.StreamOpen(mode=pb.MODE_DIRECT)),
              pb.StreamRequest(piece=pb.PromptPiece(text="Why?")), pb.StreamRequest(end=pb.StreamEnd())):
        await call.write(m)
    await call.done_writing()
    out = []
    while (r := await call.read()) is not grpc.aio.EOF:
        out.append(r)
    return out


async def test_reflection_lists_the_services() -> None:
    async with running(settings(), engine_with_skeletons()) as srv, asyncio.timeout(10):
        stub = reflection_pb2_grpc.ServerReflectionStub(srv.channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = set()
        async for r in responses:
            names |= {s.name for s in r.list_services_response.service}
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


# --- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    d = tmp_path_factory.mktemp("certs")

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ossl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=espalier-test-ca")
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        ossl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {p.stem if p.suffix == ".pem" else p.name: p for p in d.iterdir()}


async def test_tls_and_mutual_tls(certs: dict[str, Path]) -> None:
    ca = certs["ca"].read_bytes()
    tls = {"tls_cert": str(certs["server"]), "tls_key": str(certs["server.key"])}

    def connect(port: int, client: bool = False) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(
            ca, certs["client.key"].read_bytes() if client else None, certs["client"].read_bytes() if client else None)
        return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)

    async with asyncio.timeout(20):
        async with running(settings(**tls), engine_with_skeletons(), connect=connect) as srv:
            assert await _status(srv.health) == SERVING
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.parts.port}") as plain:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=2)
                assert info.value.code() in (C.UNAVAILABLE, C.DEADLINE_EXCEEDED)
        mtls = {**tls, "tls_client_ca": str(certs["ca"])}
        async with running(settings(**mtls), engine_with_skeletons(),
                           connect=lambda port: connect(port, client=True)) as srv:
            plan = await srv.stub.Plan(pb.PlanRequest(question=QUESTION, mode=pb.MODE_DIRECT))
            assert plan.graph.route == pb.ROUTE_DIRECT
            async with connect(srv.parts.port, client=False) as anonymous:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await health_pb2_grpc.HealthStub(anonymous).Check(health_pb2.HealthCheckRequest(), timeout=2)
                assert info.value.code() in (C.UNAVAILABLE, C.DEADLINE_EXCEEDED)


# --- the command line ------------------------------------------------------------------------------


def test_serve_cli_reports_bad_settings_and_prints_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_cli.run(["--max-waiting", "-1"]) == 2
    assert "max_waiting must be an integer from 0 to 100000 (got -1, from flag --max-waiting)" in capsys.readouterr().err
    assert serve_cli.run(["--print-settings", "--small-only", "--port", "0"]) == 0
    out = capsys.readouterr().out
    assert "port = 0" in out and "small_only = true" in out and 'skeleton_role = "small"' in out


def test_espalier_serve_is_registered(capsys: pytest.CaptureFixture[str]) -> None:
    from espalier.service.cli import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    assert "--planner-point-max-tokens" in capsys.readouterr().out


def test_log_records_carry_the_request_id_as_text_or_json() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(serve_cli.RequestIdFilter())
    handler.setFormatter(serve_cli.JsonFormatter())
    logger = logging.getLogger("espalier.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        token = REQUEST_ID.set("abc123")
        logger.warning("hello %s", "world")
        REQUEST_ID.reset(token)
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["request_id"] == "abc123" and first["message"] == "hello world" and first["level"] == "warning"
    assert second["request_id"] == "-"
