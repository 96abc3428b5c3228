"""Every status the server sends reaches the caller as sent: through the Python client on each RPC,
and through `espalier ask` (its message on stderr, exit code 1). Over a real grpc.aio server on port 0
with the scripted fake engine."""

from __future__ import annotations

import asyncio
import os
import sys

import grpc
import pytest
from service_fakes import engine_with_skeletons, running, settings

from espalier.clients.python.client import EspalierClient, RetryPolicy
from espalier.v1 import espalier_pb2 as pb

C = grpc.StatusCode
QUESTION = "Why is the sky blue?"


async def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        result = call()
        if hasattr(result, "__aiter__"):
            async for _ in result:
                pass
        else:
            await result
    return info.value.code(), info.value.details()


def every_rpc(client: EspalierClient, question: str):
    graph = pb.Graph(route=pb.ROUTE_DIRECT, nodes=[pb.Node(id=1, title="answer")])
    return {"plan": lambda: client.plan(question), "answer": lambda: client.answer(question),
            "ask": lambda: client.ask(question), "stream": lambda: client.stream([question]),
            "expand": lambda: client.expand(question, graph)}


@pytest.mark.parametrize(("server_kw", "question", "token", "code", "words"), [
    ({"auth_token": "s3cret"}, QUESTION, None, C.UNAUTHENTICATED, "this server needs metadata"),
    ({"auth_token": "s3cret"}, QUESTION, "wrong", C.UNAUTHENTICATED, "this server needs metadata"),
    ({}, "x" * 200, None, C.INVALID_ARGUMENT, "longer than 100 characters"),
], ids=["no token", "wrong token", "bad input"])
async def test_the_python_client_sees_each_status_as_sent(server_kw, question, token, code, words) -> None:
    # each RPC several times: a stream refused while its client is still writing used to come back
    # INTERNAL ("Internal error from Core") about half the time
    async with running(settings(max_question_chars=100, **server_kw), engine_with_skeletons()) as srv, \
            EspalierClient(f"127.0.0.1:{srv.parts.port}", token=token, timeout_s=10) as client:
        for _ in range(8):
            for name, call in every_rpc(client, question).items():
                got, details = await status_of(call)
                assert got is code and words in details, (name, got, details)


async def test_unavailable_while_loading_reaches_the_client_after_its_retries() -> None:
    async with running(settings(), None, serving=False) as srv:  # no engine yet: still loading
        retry = RetryPolicy(attempts=2, first_backoff_s=0.01, max_backoff_s=0.02)
        async with EspalierClient(f"127.0.0.1:{srv.parts.port}", timeout_s=10, retry=retry) as client:
            for name, call in every_rpc(client, QUESTION).items():
                got, details = await status_of(call)
                assert got is C.UNAVAILABLE and "loading" in details, (name, got, details)


async def ask_cli(port: int, *argv: str) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "espalier.service.cli", "ask", "--target", f"127.0.0.1:{port}", "--timeout", "20", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, err.decode()


async def test_espalier_ask_prints_the_status_the_server_sent() -> None:
    async with running(settings(auth_token="s3cret", max_question_chars=100), engine_with_skeletons()) as srv:
        rc, err = await ask_cli(srv.parts.port, QUESTION)
        assert rc == 1 and "espalier ask: UNAUTHENTICATED: this server needs metadata" in err, err
        rc, err = await ask_cli(srv.parts.port, "--token", "s3cret", "x" * 200)
        assert rc == 1 and "espalier ask: INVALID_ARGUMENT: question" in err, err
