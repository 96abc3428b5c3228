"""The container health probe against a real grpc.aio server with the standard health servicer (no
model): exit 0 only for SERVING, 1 for everything else, including as `python -m` the way Docker runs it."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from espalier.clients.python import healthcheck
from espalier.clients.python.client import SERVICE_NAME

ROOT = Path(__file__).resolve().parents[3]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@asynccontextmanager
async def health_server(status: int) -> AsyncIterator[tuple[HealthServicer, str]]:
    """A real server on a free port whose health reports `status` for "" and the Espalier service."""
    server = grpc.aio.server()
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    for name in ("", SERVICE_NAME):
        await health.set(name, status)
    await server.start()
    try:
        yield health, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def run_main(*argv: str, environ: dict[str, str] | None = None) -> int:
    # main() runs its own event loop, so it runs in a thread while this loop serves the server.
    return await asyncio.to_thread(healthcheck.main, list(argv), environ or {})


async def test_exit_0_only_while_serving() -> None:
    async with health_server(SERVING) as (health, target):
        assert await run_main("--target", target) == 0
        assert await run_main("--target", target, "--service", "") == 0
        await health.set(SERVICE_NAME, NOT_SERVING)
        assert await run_main("--target", target) == 1
        assert await healthcheck.probe(target) == "NOT_SERVING"


async def test_not_serving_and_unknown_service_are_unhealthy() -> None:
    async with health_server(NOT_SERVING) as (_health, target):
        assert await run_main("--target", target) == 1
        assert await run_main("--target", target, "--service", "") == 1
        assert await healthcheck.probe(target, service="no.such.Service") == "NOT_FOUND"
        assert await run_main("--target", target, "--service", "no.such.Service") == 1


async def test_draining_server_is_unhealthy() -> None:
    async with health_server(SERVING) as (health, target):
        await health.enter_graceful_shutdown()  # what the server does first on SIGTERM
        assert await run_main("--target", target) == 1


async def test_nothing_listening_is_unhealthy_not_a_crash() -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no server
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert await healthcheck.probe(f"127.0.0.1:{port}", timeout_s=1.0) in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    assert await run_main("--target", f"127.0.0.1:{port}", "--timeout", "1") == 1


async def test_unreadable_tls_files_are_unhealthy(tmp_path: Path) -> None:
    assert await run_main("--target", "127.0.0.1:1", "--tls-ca", str(tmp_path / "missing.pem")) == 1


def test_default_target_follows_the_servers_port_variable() -> None:
    assert healthcheck._parser({"ESPALIER_PORT": "6000"}).parse_args([]).target == "localhost:6000"
    assert healthcheck._parser({}).parse_args([]).target == "localhost:50051"


def test_tls_flags_make_tls_options() -> None:
    parser = healthcheck._parser({})
    assert healthcheck.tls_options(parser.parse_args([])) is None
    args = parser.parse_args(["--tls-ca", "ca.pem", "--tls-cert", "c.pem", "--tls-key", "k.pem",
                              "--tls-server-name", "espalier.internal"])
    tls = healthcheck.tls_options(args)
    assert tls is not None and tls.ca == Path("ca.pem") and tls.server_name == "espalier.internal"


async def test_python_dash_m_as_the_image_runs_it() -> None:
    async with health_server(SERVING) as (health, target):
        env = dict(os.environ)  # the installed package, as in the image
        port = target.rsplit(":", 1)[1]
        for status, expected in ((SERVING, 0), (NOT_SERVING, 1)):
            await health.set(SERVICE_NAME, status)
            # No --target: the image relies on ESPALIER_PORT, which the server in it reads too.
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "espalier.clients.python.healthcheck", env={**env, "ESPALIER_PORT": port},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == expected, out.decode()
            assert health_pb2.HealthCheckResponse.ServingStatus.Name(status) in out.decode()
