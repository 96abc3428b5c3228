"""`bench answers --target`: the bench's own stubs against a real grpc.aio server (scripted fake engine)."""

from __future__ import annotations

import asyncio

from service_fakes import engine_with_skeletons, running, settings

from espalier.service.bench.answers import TargetRunner
from espalier.service.bench.target import ServerCalls
from espalier.v1 import espalier_pb2 as pb

Q = "What are the pros and cons of remote work?"


async def test_the_target_runner_answers_and_routes_through_the_server_with_its_token() -> None:
    async with running(settings(auth_token="s3cret"), engine_with_skeletons()) as srv, asyncio.timeout(30):
        target = f"127.0.0.1:{srv.parts.port}"
        generation = pb.GenerationSettings(temperature=0.0, point_max_tokens=8)
        async with ServerCalls(target, token="s3cret") as calls:
            await calls.wait_serving(timeout_s=10)
            runner = TargetRunner(calls, generation)
            direct = await runner.answer(Q, "direct")
            sot = await runner.answer(Q, "sot")
            route, source = await runner.route(Q)
        async with ServerCalls(target) as without_token:
            refused = await TargetRunner(without_token, generation).answer(Q, "direct")
    assert direct.error is None and direct.answer and direct.route == "direct" and direct.points == []
    assert sot.error is None and sot.route == "parallel" and len(sot.points) >= 2 and all(sot.points)
    assert sot.ttft_s is not None and sot.seconds >= sot.ttft_s
    assert source == "server (Plan)" and route in ("direct", "parallel", "graph")
    assert refused.error is not None and refused.error.startswith("UNAUTHENTICATED")
