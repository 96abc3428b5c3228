"""RemoteEngine against a real OpenAI-compatible server: llama-cpp-python's own server (its `server`
extra) serving the small default model, started by this module on a port the OS picks.

Covers streaming, a dead URL next to the live one (the request moves on and the dead one is passed
over), closing a stream mid-way (the server notices and stops decoding, so the next request is served
at once), a real HTTP 400 mapped to InvalidRequest, and Plan + Expand through a real grpc.aio Espalier
server whose only engine is the remote one. One server process for the module: two llama processes on
two cores would slow each other down by an order of magnitude. Budgets are tiny.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from espalier.planner.engine import (
    Chunk,
    FinishReason,
    GenerateRequest,
    InvalidRequest,
    Message,
    Role,
    Sampling,
)
from espalier.service.remote import http_client, wire
from espalier.service.remote.config import RemoteRoleConfig
from espalier.service.remote.remote_engine import RemoteEngine
from espalier.service.server import serve
from espalier.service.settings import load_settings
from espalier.v1 import espalier_pb2 as pb
from espalier.v1 import espalier_pb2_grpc

pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python's server extra is not installed "
                    "(pip install -e '.[remote-test]')")
pytestmark = pytest.mark.model

LAUNCHER = Path(__file__).with_name("llama_openai_server.py")
N_CTX = 2048
START_S = 180  # loading the model on a busy 2-core machine
TIMEOUT = 240
QUESTION = "How can I improve my time management skills?"
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class OpenAIServer:
    url: str
    log: Path  # its stdout and stderr

    def disconnections(self) -> int:
        """How often it logged a client gone mid-stream (llama-cpp-python prints this when it stops)."""
        return self.log.read_text(errors="replace").count("Disconnected from client")


@pytest.fixture(scope="module")
def server(small_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIServer]:
    log_path = tmp_path_factory.mktemp("openai-server") / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(LAUNCHER), "--model", str(small_model), "--n-ctx", str(N_CTX), "--threads", "2"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        port = _wait_for_port(proc, log_path)
        url = f"http://127.0.0.1:{port}/v1"
        _wait_until_answering(proc, url, log_path)
        yield OpenAIServer(url, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_port(proc: subprocess.Popen[bytes], log_path: Path) -> int:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("PORT "):
                return int(line.split()[1])
        if proc.poll() is not None:
            pytest.fail(f"the OpenAI server exited ({proc.returncode}):\n{log_path.read_text(errors='replace')}")
        time.sleep(0.2)
    pytest.fail(f"the OpenAI server did not start in {START_S}s:\n{log_path.read_text(errors='replace')}")


def _wait_until_answering(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    engine = RemoteEngine({Role.SMALL: RemoteRoleConfig(urls=(url,))})
    deadline = time.monotonic() + 30
    while asyncio.run(engine.probe())[url] != "ok":
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the OpenAI server does not answer GET /models:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.2)


def dead_url() -> str:
    with socket.socket() as s:  # bound and closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def remote(*urls: str, **changes: Any) -> RemoteEngine:
    return RemoteEngine({Role.SMALL: RemoteRoleConfig(urls=urls, **changes)})


def ask(engine: RemoteEngine, text: str, max_tokens: int) -> GenerateRequest:
    prompt = engine.chat_prompt(Role.SMALL, [Message("system", "You are a helpful assistant."),
                                             Message("user", text)])
    return GenerateRequest(prompt, Role.SMALL, Sampling(max_tokens=max_tokens))


async def collect(engine: RemoteEngine, request: GenerateRequest) -> list[Chunk]:
    return [c async for c in engine.generate(request)]


async def test_streaming_generate_returns_text(server: OpenAIServer) -> None:
    engine = remote(server.url)
    async with asyncio.timeout(TIMEOUT):
        chunks = await collect(engine, ask(engine, "What is the capital of France? One word.", 8))
    text = "".join(c.text for c in chunks)
    assert text.strip(), chunks
    assert len(chunks) >= 2 and all(c.finish is None for c in chunks[:-1])
    assert chunks[-1].finish in (FinishReason.STOP, FinishReason.LENGTH)
    assert 0 < sum(c.tokens for c in chunks) <= 8
    stats = engine.stats().role(Role.SMALL)
    assert stats is not None and stats.generated_tokens == sum(c.tokens for c in chunks) and stats.slots_busy == 0


async def test_a_dead_url_is_retried_on_the_live_one(server: OpenAIServer) -> None:
    dead = dead_url()
    engine = remote(dead, server.url)  # equal load: the dead one, first in turn, is tried first
    async with asyncio.timeout(TIMEOUT):
        for _ in range(2):
            chunks = await collect(engine, ask(engine, "Say hi.", 4))
            assert "".join(c.text for c in chunks).strip() and chunks[-1].finish is not None
    dead_ep, live_ep = engine._roles[Role.SMALL].pool.endpoints
    assert (dead_ep.requests, dead_ep.errors) == (1, 1)  # refused once, then passed over while ejected
    assert (live_ep.requests, live_ep.errors) == (2, 0)


async def test_closing_a_stream_frees_the_server(server: OpenAIServer) -> None:
    """The server decodes one request at a time (interrupt_requests off): had it kept decoding the closed
    stream (up to 1500 tokens, over 30 s here), the next request would wait for it."""
    engine = remote(server.url)
    before = server.disconnections()
    async with asyncio.timeout(TIMEOUT):
        stream = engine.generate(ask(engine, "Count from 1 to 1000, one number per line.", 1500))
        seen: list[Chunk] = []
        async for chunk in stream:
            seen.append(chunk)
            if len(seen) == 10:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        assert all(c.finish is None for c in seen)  # it was still going
        assert engine.stats().slots_busy == 0
        started = time.monotonic()
        chunks = await collect(engine, ask(engine, "Say hi.", 4))
        elapsed = time.monotonic() - started
    assert chunks[-1].finish is not None
    assert elapsed < 10, f"the next request waited {elapsed:.1f}s: the closed stream kept decoding"
    deadline = time.monotonic() + 5
    while server.disconnections() == before:
        assert time.monotonic() < deadline, "the server never logged the client's disconnection"
        await asyncio.sleep(0.1)


async def test_a_400_is_an_invalid_request(server: OpenAIServer) -> None:
    """llama-cpp-python's server checks a streamed prompt only after it has answered 200 (it then drops the
    stream), so its 400 for a prompt longer than the context is provoked without streaming; the mapping is
    the one every streamed request goes through (llama-server and vLLM answer 400 before streaming)."""
    body = {"prompt": "word " * (N_CTX + 200), "max_tokens": 4, "stream": False}
    async with asyncio.timeout(TIMEOUT):
        response = await http_client.request(http_client.BaseUrl.parse(server.url), "POST", "/completions",
                                             body=json.dumps(body).encode(),
                                             headers=(("Content-Type", "application/json"),))
        async with response:
            data = await response.read()
    assert response.status == 400, data
    error = wire.status_error(response.status, data, server.url)
    assert isinstance(error, InvalidRequest) and "context" in str(error), error


async def test_plan_and_expand_through_a_real_espalier_server(server: OpenAIServer) -> None:
    """`serve` as `espalier serve --small-only` with ESPALIER_REMOTE_SMALL_URLS set: no model is loaded in
    this process; every skeleton and point goes to the OpenAI server."""
    settings = load_settings(["--small-only", "--port", "0", "--metrics-port", "-1",
                              "--planner-point-max-tokens", "12", "--planner-skeleton-max-tokens", "48",
                              "--planner-max-nodes", "3"], {"ESPALIER_REMOTE_SMALL_URLS": server.url})
    assert settings.engine_config().roles() == {} and set(settings.remote_roles()) == {Role.SMALL}
    stop = asyncio.Event()
    ports: dict[str, int] = {}
    task = asyncio.create_task(serve(settings, stop=stop, install_signals=False,
                                     on_listening=lambda port, _m: ports.update(port=port)))
    try:
        async with asyncio.timeout(TIMEOUT):
            while not ports:
                await asyncio.sleep(0.01)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['port']}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                while (await health.Check(health_pb2.HealthCheckRequest())).status != SERVING:
                    await asyncio.sleep(0.05)
                stub = espalier_pb2_grpc.EspalierServiceStub(channel)
                plan = await stub.Plan(pb.PlanRequest(question=QUESTION, mode=pb.MODE_SOT,
                                                      settings=pb.GenerationSettings(max_points=3)))
                if plan.graph.route == pb.ROUTE_PARALLEL:
                    graph = plan.graph
                else:  # the 0.5B model wrote no usable skeleton: expand a graph of our own
                    graph = pb.Graph(route=pb.ROUTE_PARALLEL, nodes=[pb.Node(id=1, title="Set priorities"),
                                                                     pb.Node(id=2, title="Plan the day")])
                events = [e async for e in stub.Expand(pb.ExpandRequest(question=QUESTION, graph=graph))]
    finally:
        stop.set()
        assert await task == 0
    kinds = [e.event.WhichOneof("event") for e in events]
    assert kinds[0] == "plan_ready" and kinds[-1] == "answer_done", kinds
    assert kinds.count("node_finished") == len(graph.nodes) and "node_failed" not in kinds, kinds
    done = events[-1].event.answer_done
    assert done.text.strip() and not done.failed_node_ids
    small = next(u for u in done.usage if u.model_role == pb.MODEL_ROLE_SMALL)
    assert small.calls == len(graph.nodes) and small.completion_tokens > 0
