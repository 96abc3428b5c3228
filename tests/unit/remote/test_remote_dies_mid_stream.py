"""A remote model server that dies in the middle of one answer's stream, through the real gRPC server:
that answer's node is reported failed in its own stream (after one retry, which dies too), the other
answer finishes, and the server goes on answering. Remote server scripted, gRPC server real (port 0)."""

from __future__ import annotations

import asyncio

import grpc
from remote_fakes import Received, ScriptedServer, end_stream, engine_for, event, send_chunk, start_stream

from espalier.planner.settings import PlannerSettings
from espalier.service.server import build
from espalier.service.settings import ServerSettings
from espalier.v1 import espalier_pb2 as pb
from espalier.v1 import espalier_pb2_grpc


async def dies_on_break(req: Received, writer: asyncio.StreamWriter) -> None:
    """Streams an answer; for a prompt saying BREAK, two pieces and then the connection is cut."""
    start_stream(writer)
    if "BREAK" in str(req.body.get("prompt", "")):
        for text in ("Half", " an"):
            send_chunk(writer, event(text))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()
        return
    for text in ("Blue", " is", " a colour."):
        send_chunk(writer, event(text))
        await asyncio.sleep(0.01)
    send_chunk(writer, event("", finish="stop"))
    end_stream(writer)


async def test_a_remote_server_dying_mid_stream_fails_that_answer_alone() -> None:
    async with ScriptedServer(dies_on_break) as remote:
        engine = engine_for(remote.url, chat_template="chatml")
        config = ServerSettings(port=0, metrics_port=-1, planner=PlannerSettings(direct_max_tokens=16))
        parts = await build(config, engine)
        await parts.set_serving(True)
        await parts.server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{parts.port}") as channel, asyncio.timeout(30):
                stub = espalier_pb2_grpc.EspalierServiceStub(channel)

                async def ask(question: str) -> list[pb.AnswerResponse]:
                    call = stub.Answer(pb.AnswerRequest(question=question, mode=pb.MODE_DIRECT), timeout=20)
                    return [r async for r in call]

                broken, fine = await asyncio.gather(ask("BREAK: what is blue?"), ask("What is blue?"))
                kinds = [r.event.WhichOneof("event") for r in broken]
                assert "node_failed" in kinds and "node_finished" not in kinds, kinds
                assert list(broken[-1].event.answer_done.failed_node_ids) == [1]
                assert sum("BREAK" in str(r.body.get("prompt")) for r in remote.received) == 2  # tried twice
                assert fine[-1].event.answer_done.text.strip() == "Blue is a colour."
                assert not fine[-1].event.answer_done.failed_node_ids
                again = await ask("What is blue, again?")
                assert again[-1].event.answer_done.text.strip() == "Blue is a colour."
        finally:
            await parts.server.stop(0)
            await engine.aclose(0)
