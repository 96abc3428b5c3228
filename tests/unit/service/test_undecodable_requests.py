"""A request message that does not decode (invalid UTF-8 in a string, truncated bytes) is the caller's
fault: INVALID_ARGUMENT naming the field, on every RPC, never logged as a server error, and the server
goes on answering. Sent as raw bytes through a real grpc.aio server on port 0."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from service_fakes import engine_with_skeletons, running, settings

from espalier.service import errors
from espalier.service.wire_decoding import Undecodable, tolerant
from espalier.v1 import espalier_pb2 as pb

C = grpc.StatusCode
PATH = "/espalier.v1.EspalierService/"
BAD = b"\xff\xfe not utf-8"


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited field of the protobuf wire format (payloads under 128 bytes)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


async def unary(channel: grpc.aio.Channel, method: str, data: bytes) -> grpc.aio.AioRpcError:
    call = channel.unary_unary(PATH + method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(data, timeout=10)
    return info.value


async def server_stream(channel: grpc.aio.Channel, method: str, data: bytes) -> grpc.aio.AioRpcError:
    call = channel.unary_stream(PATH + method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call(data, timeout=10):
            pass
    return info.value


def field_of(error: grpc.aio.AioRpcError) -> str:
    return dict(error.trailing_metadata() or ()).get(errors.FIELD_KEY, "")


async def test_invalid_utf8_is_invalid_argument_naming_the_field_on_every_rpc(caplog) -> None:
    engine = engine_with_skeletons()
    async with running(settings(), engine) as srv, asyncio.timeout(30):
        question = field(1, BAD)
        error = await unary(srv.channel, "Plan", question)
        assert (error.code(), field_of(error)) == (C.INVALID_ARGUMENT, "question"), error
        assert error.details().startswith("question: not valid UTF-8")
        for method in ("Expand", "Answer"):
            error = await server_stream(srv.channel, method, question)
            assert (error.code(), field_of(error)) == (C.INVALID_ARGUMENT, "question"), (method, error)
        # a chat message's content, one level down
        error = await unary(srv.channel, "Plan", field(2, field(2, BAD)))
        assert (error.code(), field_of(error)) == (C.INVALID_ARGUMENT, "messages.content"), error
        # a Stream piece: the open message decodes, the piece does not
        stream = srv.channel.stream_stream(PATH + "Stream", request_serializer=lambda b: b,
                                           response_deserializer=pb.StreamResponse.FromString)
        opened = pb.StreamRequest(open=pb.StreamOpen(mode=pb.MODE_DIRECT)).SerializeToString()
        call = stream(iter([opened, field(2, field(1, BAD))]), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert (info.value.code(), field_of(info.value)) == (C.INVALID_ARGUMENT, "piece.text"), info.value
        # bytes that are not a message at all: the request, not a field
        error = await unary(srv.channel, "Plan", b"\x0a\x7f" + b"x" * 3)
        assert (error.code(), field_of(error)) == (C.INVALID_ARGUMENT, "request"), error
        # and the server goes on answering
        plan = await srv.stub.Plan(pb.PlanRequest(question="Why is the sky blue?", mode=pb.MODE_DIRECT), timeout=10)
        assert plan.graph.route == pb.ROUTE_DIRECT
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_a_tolerant_deserializer_names_the_field_or_the_request() -> None:
    decode = tolerant(pb.PlanRequest)
    good = pb.PlanRequest(question="Hi there?").SerializeToString()
    assert decode(good) == pb.PlanRequest(question="Hi there?")
    assert decode(field(1, BAD)) == Undecodable("espalier.v1.PlanRequest", "question")
    assert decode(b"\x0a\x7f") == Undecodable("espalier.v1.PlanRequest", "")
