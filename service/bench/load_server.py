"""A server started in the load bench's own process (`espalier bench load` without --target): the real
`serve()` with the operator's flags on free ports, waited for until SERVING, stopped and drained at the
end. The clients share its event loop, so figures from a separate server (--target) are cleaner."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from espalier.service.server import serve
from espalier.service.settings import load_settings


@asynccontextmanager
async def embedded_server(server_args: str) -> AsyncIterator[tuple[int, int]]:
    """(port, metrics port) of a server started with `espalier serve` flags, once it is SERVING."""
    settings = load_settings([*shlex.split(server_args), "--port", "0", "--metrics-port", "0"])
    stop = asyncio.Event()
    listening: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, stop=stop, install_signals=False,
                                     on_listening=lambda p, m: listening.set_result((p, m or 0))))
    try:
        done, _ = await asyncio.wait({task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            raise RuntimeError(f"the server stopped before it listened (exit code {task.result()})")
        port, metrics_port = listening.result()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:  # loading the models takes a while
                if task.done():
                    raise RuntimeError(f"the server stopped while loading (exit code {task.result()})")
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
                await asyncio.sleep(0.5)
        yield port, metrics_port
    finally:
        stop.set()
        await asyncio.wait({task})
