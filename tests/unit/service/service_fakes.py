"""Helpers for the service's unit tests: the planner's scripted FakeEngine and real servers on port 0.

The fake engine is the shared one (tests/engine_fakes.py), reused rather than
copied so that both suites script the same behaviour. `running()` builds a real grpc.aio server
around it on 127.0.0.1:0 and yields the generated stubs over an insecure channel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from engine_fakes import FakeEngine, Script
from grpc_health.v1 import health_pb2_grpc

from espalier.planner.settings import PlannerSettings
from espalier.service.server import Server, build
from espalier.service.settings import ServerSettings
from espalier.v1 import espalier_pb2_grpc

__all__ = ["QUESTION", "FakeEngine", "Running", "Script", "engine_with_skeletons", "running", "settings"]

QUESTION = "Why do some people enjoy being scared by horror movies while others avoid it?"
GRAPH_SKELETON = (" Thrill of fear (needs: none; easy)\n2. Brain chemistry (needs: 1; hard)\n"
                  "3. Personality differences (needs: 1, 2; hard)\n\nNow the answer: ...")
PLAIN_SKELETON = " Thrill of fear\n2. Brain chemistry\n3. Personality differences\n"


def engine_with_skeletons(**kw: Any) -> FakeEngine:
    engine = FakeEngine(**kw)
    engine.script("(needs: 2", GRAPH_SKELETON)  # only in the graph skeleton prompt (its example)
    engine.script("You are an organizer", PLAIN_SKELETON)
    return engine


def settings(**kw: Any) -> ServerSettings:
    kw.setdefault("planner", PlannerSettings(point_max_tokens=16, direct_max_tokens=16, skeleton_max_tokens=48))
    kw.setdefault("port", 0)
    kw.setdefault("metrics_port", -1)
    return ServerSettings(**kw)


@dataclass
class Running:
    parts: Server
    channel: grpc.aio.Channel
    stub: espalier_pb2_grpc.EspalierServiceStub
    health: health_pb2_grpc.HealthStub

    @property
    def servicer(self):  # type: ignore[no-untyped-def]
        return self.parts.servicer


@asynccontextmanager
async def running(config: ServerSettings, engine: Any, *, serving: bool = True,
                  connect: Callable[[int], grpc.aio.Channel] | None = None) -> AsyncIterator[Running]:
    parts = await build(config, engine)
    if serving:
        await parts.set_serving(True)
    await parts.server.start()
    ch = connect(parts.port) if connect else grpc.aio.insecure_channel(f"127.0.0.1:{parts.port}")
    try:
        yield Running(parts, ch, espalier_pb2_grpc.EspalierServiceStub(ch), health_pb2_grpc.HealthStub(ch))
    finally:
        await ch.close()
        await parts.server.stop(0)
