"""SIGTERM while answers are being written, on the real small model: every answer in flight finishes
within the grace period, a call made after the signal is refused with UNAVAILABLE, and the process
exits 0. Through `espalier serve` as a subprocess and the Python client."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import grpc
import pytest

from espalier.clients.python.client import EspalierClient, RetryPolicy, settings
from espalier.v1 import espalier_pb2 as pb

pytestmark = pytest.mark.model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def answer(client: EspalierClient, writing: asyncio.Event | None = None) -> pb.AnswerEvent:
    """The last event of a direct answer; `writing` is set at its first text."""
    last = None
    async for event in client.ask("Describe the seasons of the year.", mode="direct",
                                  generation=settings(answer_max_tokens=160)):
        if writing is not None and event.WhichOneof("event") == "node_delta":
            writing.set()
        last = event
    assert last is not None
    return last


async def test_sigterm_lets_answers_in_flight_finish_and_refuses_new_ones() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "espalier.service.cli", "serve", "--port", str(port), "--metrics-port", "-1", "--small-only",
        "--grace-s", "60", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        async with EspalierClient(f"127.0.0.1:{port}", timeout_s=120,
                                  retry=RetryPolicy(attempts=1)) as client, asyncio.timeout(240):
            await client.wait_serving(120)
            writing = [asyncio.Event() for _ in range(3)]
            in_flight = [asyncio.create_task(answer(client, w)) for w in writing]
            await asyncio.gather(*(w.wait() for w in writing))  # every answer is being written
            assert not any(t.done() for t in in_flight)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await answer(client)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE, refused.value
            done = await asyncio.gather(*in_flight)
            assert all(e.WhichOneof("event") == "answer_done" and e.answer_done.text.strip() for e in done)
            assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
