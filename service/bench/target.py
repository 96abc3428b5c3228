"""The benches' own connection to a running server: plain generated stubs, no client library.

Owns `ServerCalls` (Answer as a stream of events, Plan, waiting until health says SERVING, the
shared token as call metadata) and `MODES`. The benches measure the server as any gRPC caller sees
it, so they speak the API directly rather than through clients/python, which is a product of its own
(service/ reaches clients/ only through the CLI's `ask` entry).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from espalier.v1 import espalier_pb2 as pb
from espalier.v1 import espalier_pb2_grpc as pb_grpc

MODES = {"direct": pb.MODE_DIRECT, "sot": pb.MODE_SOT, "sgd": pb.MODE_SGD, "auto": pb.MODE_AUTO}


class ServerCalls:
    def __init__(self, target: str, token: str | None = None) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = pb_grpc.EspalierServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._channel.close()

    async def answer(self, question: str, mode: str,
                     generation: pb.GenerationSettings) -> AsyncIterator[pb.AnswerEvent]:
        request = pb.AnswerRequest(question=question, mode=MODES[mode], settings=generation)
        async for response in self._stub.Answer(request, metadata=self._metadata):
            yield response.event

    async def plan(self, question: str, mode: str, generation: pb.GenerationSettings) -> pb.PlanResponse:
        request = pb.PlanRequest(question=question, mode=MODES[mode], settings=generation)
        return await self._stub.Plan(request, metadata=self._metadata)

    async def wait_serving(self, timeout_s: float) -> None:
        """Poll health until SERVING (models load for a while after the port opens)."""
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    reply = await self._health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.5)
