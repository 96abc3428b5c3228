"""The Python client and `espalier ask` against a real server on port 0 with the small model."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest

from espalier.clients.python.client import EspalierClient, RetryPolicy, settings
from espalier.planner.settings import PlannerSettings
from espalier.service.server import Server, build
from espalier.service.settings import ServerSettings
from espalier.v1 import espalier_pb2 as pb

pytestmark = pytest.mark.model

PLANNER = PlannerSettings(point_max_tokens=12, skeleton_max_tokens=48, direct_max_tokens=16, max_nodes=4)
CONFIG = ServerSettings(port=0, metrics_port=-1, small_only=True, planner=PLANNER).validate()
QUESTION = "What are the most effective ways to deal with stress?"


@asynccontextmanager
async def serving(engine, port: int = 0, delay_s: float = 0.0) -> AsyncIterator[Server]:
    await asyncio.sleep(delay_s)
    parts = await build(dataclasses.replace(CONFIG, port=port), engine)
    await parts.set_serving(True)
    await parts.server.start()
    try:
        yield parts
    finally:
        await parts.server.stop(0)


def events_of(kind: str, events: list[pb.AnswerEvent]) -> list[pb.AnswerEvent]:
    return [e for e in events if e.WhichOneof("event") == kind]


async def test_plan_then_expand_an_edited_graph_and_ask(small_engine):
    async with asyncio.timeout(240), serving(small_engine) as parts, \
            EspalierClient(f"127.0.0.1:{parts.port}") as client:
        assert await client.health() == "SERVING"
        plan = await client.plan(QUESTION, mode="sot")
        assert plan.graph.route == pb.ROUTE_PARALLEL and len(plan.graph.nodes) >= 2
        edited = pb.Graph(route=plan.graph.route, nodes=plan.graph.nodes[:2])
        events = [e async for e in client.expand(QUESTION, edited, generation=settings(point_max_tokens=8))]
        done = events_of("answer_done", events)
        assert len(done) == 1 and {n.node_id for n in (e.node_finished for e in events_of("node_finished", events))} \
            == {n.id for n in edited.nodes}
        asked = [e async for e in client.ask(QUESTION, mode="direct")]
        assert asked[-1].answer_done.text.strip() and asked[-1].answer_done.route == pb.ROUTE_DIRECT


async def test_unavailable_is_retried_until_the_server_is_up(small_engine):
    with socket.socket() as s:  # a free port, to start the server on a moment later
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def late_server(ready: asyncio.Event, stop: asyncio.Event) -> None:
        async with serving(small_engine, port=port, delay_s=0.5):
            ready.set()
            await stop.wait()

    ready, stop = asyncio.Event(), asyncio.Event()
    async with asyncio.timeout(240):
        task = asyncio.create_task(late_server(ready, stop))
        try:
            retry = RetryPolicy(attempts=8, first_backoff_s=0.2)
            async with EspalierClient(f"127.0.0.1:{port}", retry=retry) as client:
                plan = await client.plan(QUESTION, mode="direct")
                assert ready.is_set() and plan.graph.route == pb.ROUTE_DIRECT
        finally:
            stop.set()
            await task


async def test_bad_input_is_not_retried(small_engine):
    async with asyncio.timeout(60), serving(small_engine) as parts, \
            EspalierClient(f"127.0.0.1:{parts.port}") as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.plan("   ")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_ask_command_prints_events_as_json_lines(small_engine):
    async with asyncio.timeout(240), serving(small_engine) as parts:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "espalier.service.cli", "ask", QUESTION, "--mode", "sot", "--json",
            "--target", f"127.0.0.1:{parts.port}", "--point-tokens", "8",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    events = [json.loads(line) for line in out.decode().splitlines()]
    # one Answer call: the outline as the skeleton is written, then the plan, then the points
    ready = next(i for i, e in enumerate(events) if "planReady" in e)
    assert all("nodePlanned" in e for e in events[:ready])
    points = [n["title"] for n in events[ready]["planReady"]["graph"]["nodes"] if n.get("part") == "NODE_PART_POINT"]
    if points:  # a skeleton the small model could use (else a direct answer, with no outline)
        assert [e["nodePlanned"]["node"]["title"] for e in events[:ready]] == points
    assert "answerDone" in events[-1] and events[-1]["answerDone"]["text"].strip()
