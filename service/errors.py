"""The one place where errors become gRPC status codes.

Owns the mapping table from the domain error hierarchy (espalier.planner.engine's EngineError family, plus
the few errors the service itself raises, defined here) to status codes, the details text a client
sees, and the trailing metadata that goes with it (`retry-after-ms` for RESOURCE_EXHAUSTED,
`espalier-field` for INVALID_ARGUMENT, `x-request-id` always). Classification is by exception type
only, never by message text. Unexpected exceptions become INTERNAL with a generic message and are
logged with their traceback and the request id. asyncio.CancelledError is not an Exception and never
reaches this module: cancellation propagates so that the work it interrupts frees its slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import NoReturn

import grpc

from espalier.planner.engine import (
    EngineClosed,
    EngineError,
    EngineFault,
    Exhausted,
    InvalidRequest,
    RoleNotLoaded,
)

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
RETRY_AFTER_KEY = "retry-after-ms"
FIELD_KEY = "espalier-field"
DEFAULT_RETRY_AFTER_MS = 1000  # when the engine itself is full it gives no estimate; one second is polite


# --- errors the service raises itself ------------------------------------------------------------


class Overloaded(Exhausted):
    """The server's admission queue is full. retry_after_ms is the server's estimate of when to retry."""

    def __init__(self, message: str, *, retry_after_ms: int = DEFAULT_RETRY_AFTER_MS) -> None:
        super().__init__(message)
        self.retry_after_ms = max(1, int(retry_after_ms))


class NotServing(EngineError):
    """The server is still loading its models, or draining before shutdown."""


class Unauthenticated(Exception):
    """The call lacks the shared token (or carries a wrong one)."""


# --- the table ------------------------------------------------------------------------------------

# Checked in order, first match wins: subclasses before their bases (Overloaded is an Exhausted,
# PlanInvalid an InvalidRequest, every engine error an EngineError).
_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (Exhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (RoleNotLoaded, grpc.StatusCode.FAILED_PRECONDITION),
    (NotServing, grpc.StatusCode.UNAVAILABLE),
    (EngineClosed, grpc.StatusCode.UNAVAILABLE),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),  # the server's own max_request_s ran out
    (EngineFault, grpc.StatusCode.INTERNAL),
    (EngineError, grpc.StatusCode.INTERNAL),
)

# Codes whose exception text is meant for the caller. Everything else gets a generic message, since
# an internal error's text may carry paths, native error numbers or other people's data.
_SAY_WHY = frozenset({
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE,
})


@dataclass(frozen=True, slots=True)
class Status:
    """What a failed call returns: code, details and trailing metadata."""

    code: grpc.StatusCode
    details: str
    trailers: tuple[tuple[str, str], ...] = ()


def code_for(exc: Exception) -> grpc.StatusCode:
    for kind, code in _TABLE:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def status_for(exc: Exception, request_id: str = "") -> Status:
    """The status of a call that failed with `exc`; logs internal errors with the request id."""
    if not isinstance(exc, Exception):  # CancelledError and friends must propagate, not be mapped
        raise TypeError(f"cannot map {type(exc).__name__} to a status: let it propagate")
    code = code_for(exc)
    trailers: list[tuple[str, str]] = []
    if request_id:
        trailers.append((REQUEST_ID_KEY, request_id))
    if code in _SAY_WHY:
        details = str(exc) or type(exc).__name__
        field = getattr(exc, "field", "")
        if code is grpc.StatusCode.INVALID_ARGUMENT and field:
            trailers.append((FIELD_KEY, field))
            if not details.startswith(field):  # the message should name the field first
                details = f"{field}: {details}"
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            retry = getattr(exc, "retry_after_ms", DEFAULT_RETRY_AFTER_MS)
            trailers.append((RETRY_AFTER_KEY, str(retry)))
            details = f"{details} (retry after {retry} ms)"
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
        details = "the request ran past the server's time limit (max_request_s)"
    else:
        what = "the decoder failed" if isinstance(exc, EngineError) else "internal error"
        details = f"{what}; see the server log" + (f" for request {request_id}" if request_id else "")
        log.error("request %s failed with %s", request_id or "-", type(exc).__name__, exc_info=exc)
    return Status(code, details, tuple(trailers))


# Before failing a call whose client is still sending: read and drop its messages for at most this
# long, and at most this many of them.
DRAIN_S = 0.5
DRAIN_MAX = 1000


async def drain_requests(messages: AsyncIterable[object]) -> None:
    """Before failing a client-streaming call, read and drop what the client is still sending, briefly.

    If the call ends while one of the client's writes is in flight, grpc's aio client reports that
    write's failure (INTERNAL, "Internal error from Core") in place of our status. A client that sends
    its messages and half-closes thus gets our status; one that keeps writing waits at most DRAIN_S.
    """
    with contextlib.suppress(Exception):  # the time running out, or the request side breaking
        async with asyncio.timeout(DRAIN_S):
            count = 0
            async for _ in messages:
                count += 1
                if count >= DRAIN_MAX:
                    return


async def abort(context: grpc.aio.ServicerContext, exc: Exception, request_id: str = "") -> NoReturn:
    """End the call with the status of `exc` (raises grpc.aio.AbortError, as context.abort does)."""
    status = status_for(exc, request_id)
    await context.abort(status.code, status.details, trailing_metadata=status.trailers)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises
