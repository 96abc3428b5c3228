"""Request messages that do not decode become INVALID_ARGUMENT naming the field, on every RPC.

Owns the servicer's registration with deserializers that never raise: grpc would answer a
DecodeError from a deserializer with UNKNOWN (unary) or INTERNAL (streams) and log it as a server
error, though the fault is the caller's. Here an undecodable message becomes an `Undecodable` value;
the servicer turns it into InvalidRequest (`checked`, `checked_stream`), which errors.py maps like any
other bad input. The field is found by walking the protobuf wire format against the message's
descriptor: the first string field whose bytes are not UTF-8 (the usual cause), else none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import message as pb_message
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from espalier.planner.engine import InvalidRequest

M = TypeVar("M", bound=pb_message.Message)


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A request message that protobuf could not decode."""

    type_name: str
    field: str  # dotted path of the offending field, "" when it cannot be told

    def error(self) -> InvalidRequest:
        if self.field:
            return InvalidRequest(f"{self.field}: not valid UTF-8 (a string field must hold UTF-8 text)",
                                  field=self.field)
        return InvalidRequest(f"the request is not a well-formed {self.type_name} message", field="request")


def checked(request: M | Undecodable) -> M:
    """The decoded request, or InvalidRequest naming the field that did not decode."""
    if isinstance(request, Undecodable):
        raise request.error()
    return request


async def checked_stream(messages: AsyncIterator[M | Undecodable]) -> AsyncIterator[M]:
    async for message in messages:
        yield checked(message)


def tolerant(message_class: type[M]) -> Callable[[bytes], M | Undecodable]:
    def deserialize(data: bytes) -> M | Undecodable:
        try:
            return message_class.FromString(data)
        except pb_message.DecodeError:
            descriptor = message_class.DESCRIPTOR
            return Undecodable(descriptor.full_name, _bad_string_field(descriptor, data) or "")
    return deserialize


def add_servicer(servicer: Any, server: grpc.aio.Server, service: ServiceDescriptor) -> None:
    """Register `servicer`'s methods for `service` as the generated add_*_to_server does, with tolerant
    request deserializers."""
    handlers = {}
    for method in service.methods:
        request_class = GetMessageClass(method.input_type)
        response_class = GetMessageClass(method.output_type)
        kind = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}[
            (method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(getattr(servicer, method.name), request_deserializer=tolerant(request_class),
                                     response_serializer=response_class.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


# --- the wire format, just enough to find a bad string ---------------------------------------------

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7


def _bad_string_field(descriptor: Descriptor, data: bytes, prefix: str = "") -> str | None:
    """The dotted path of the first string field in `data` that is not UTF-8 (None if there is none
    or the bytes are not even well-formed wire format)."""
    i = 0
    try:
        while i < len(data):
            key, i = _varint(data, i)
            number, wire = key >> 3, key & 7
            if wire == _VARINT:
                _, i = _varint(data, i)
            elif wire == _I64:
                i += 8
            elif wire == _I32:
                i += 4
            elif wire == _LEN:
                size, i = _varint(data, i)
                chunk, i = data[i:i + size], i + size
                field = descriptor.fields_by_number.get(number)
                if field is None:
                    continue
                path = f"{prefix}{field.name}"
                if field.type == FieldDescriptor.TYPE_STRING:
                    try:
                        chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        return path
                elif field.type == FieldDescriptor.TYPE_MESSAGE:
                    found = _bad_string_field(field.message_type, chunk, path + ".")
                    if found:
                        return found
            else:
                return None  # groups or garbage: nothing more to learn
    except ValueError:
        return None
    return None
