"""Async Python client of the Espalier API: typed wrappers over the generated stubs.

Owns channel set-up (plain, TLS, mutual TLS, shared token), deadlines, retries, and how a question
travels with the caller's system text and earlier turns (`system=`, `history=` on every call). Only
UNAVAILABLE is retried (the server is starting, draining or unreachable), and a stream only before
its first event arrived, so no request is ever applied twice and no text is ever duplicated.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from espalier.v1 import espalier_pb2 as pb
from espalier.v1 import espalier_pb2_grpc as pb_grpc

T = TypeVar("T")

MODES = {"auto": pb.MODE_AUTO, "direct": pb.MODE_DIRECT, "sot": pb.MODE_SOT, "sgd": pb.MODE_SGD}
# An earlier turn: ("user" | "assistant", text), or a ChatMessage. A system message may be among them too.
Turn = tuple[str, str] | pb.ChatMessage
SERVICE_NAME = "espalier.v1.EspalierService"


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """PEM files. ca verifies the server; cert + key identify this client for mutual TLS."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None  # override the name checked in the server certificate


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 4
    first_backoff_s: float = 0.2
    max_backoff_s: float = 3.0


def settings(*, temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
             seed: int | None = None, point_max_tokens: int | None = None,
             answer_max_tokens: int | None = None, max_points: int | None = None) -> pb.GenerationSettings:
    """Generation settings with only the given fields set (the rest take the server's defaults)."""
    given = {k: v for k, v in locals().items() if v is not None}
    return pb.GenerationSettings(**given)


class EspalierClient:
    """`async with EspalierClient("localhost:50051") as client: ...`"""

    def __init__(self, target: str, *, token: str | None = None, tls: TlsOptions | None = None,
                 timeout_s: float | None = 300.0, retry: RetryPolicy = RetryPolicy(),
                 max_message_bytes: int = 8 * 1024 * 1024) -> None:
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if tls is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(tls.ca), private_key=_read(tls.key), certificate_chain=_read(tls.cert))
            self._channel = grpc.aio.secure_channel(target, creds, options=options)
        self._stub = pb_grpc.EspalierServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout_s
        self._retry = retry

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    # --- RPCs -------------------------------------------------------------------------------

    # Every call that takes a question also takes the caller's standing instructions (`system`) and the
    # conversation before the question (`history`, oldest first); the proto's ChatMessage says how the
    # server uses them.

    async def plan(self, question: str, *, mode: str = "auto", generation: pb.GenerationSettings | None = None,
                   system: str = "", history: Sequence[Turn] = (), timeout_s: float | None = None) -> pb.PlanResponse:
        request = pb.PlanRequest(**asked(question, system, history), mode=_mode(mode), settings=generation)
        return await self._with_retry(lambda: self._stub.Plan(request, timeout=self._deadline(timeout_s),
                                                              metadata=self._metadata))

    def expand(self, question: str, graph: pb.Graph, *, generation: pb.GenerationSettings | None = None,
               system: str = "", history: Sequence[Turn] = (),
               timeout_s: float | None = None) -> AsyncIterator[pb.AnswerEvent]:
        request = pb.ExpandRequest(**asked(question, system, history), graph=graph, settings=generation)
        return self._events(lambda: self._stub.Expand(request, timeout=self._deadline(timeout_s),
                                                      metadata=self._metadata))

    def stream(self, pieces: AsyncIterable[str] | Sequence[str], *, mode: str = "auto",
               generation: pb.GenerationSettings | None = None, system: str = "", history: Sequence[Turn] = (),
               timeout_s: float | None = None) -> AsyncIterator[pb.AnswerEvent]:
        """Send the prompt piece by piece (as the user types), then the end marker."""
        if not isinstance(pieces, AsyncIterable) and not isinstance(pieces, Sequence):
            raise TypeError("pieces must be a sequence or an async iterable of strings")
        opened = pb.StreamOpen(mode=_mode(mode), settings=generation, system=system, history=chat(history))

        async def requests() -> AsyncIterator[pb.StreamRequest]:
            yield pb.StreamRequest(open=opened)
            if isinstance(pieces, AsyncIterable):
                async for text in pieces:
                    yield pb.StreamRequest(piece=pb.PromptPiece(text=text))
            else:
                for text in pieces:
                    yield pb.StreamRequest(piece=pb.PromptPiece(text=text))
            yield pb.StreamRequest(end=pb.StreamEnd())

        # A streamed prompt is consumed as it is sent: only a whole (non-async) prompt is retried.
        retry = isinstance(pieces, Sequence)
        return self._events(lambda: self._stub.Stream(requests(), timeout=self._deadline(timeout_s),
                                                      metadata=self._metadata), retry=retry)

    def answer(self, question: str, *, mode: str = "auto", generation: pb.GenerationSettings | None = None,
               system: str = "", history: Sequence[Turn] = (),
               timeout_s: float | None = None) -> AsyncIterator[pb.AnswerEvent]:
        """Plan and expand a whole question in one call (the Answer RPC): the outline as the skeleton is
        written (node_planned), then plan_ready and the points' events."""
        request = pb.AnswerRequest(**asked(question, system, history), mode=_mode(mode), settings=generation)
        return self._events(lambda: self._stub.Answer(request, timeout=self._deadline(timeout_s),
                                                      metadata=self._metadata))

    def ask(self, question: str, *, mode: str = "auto", generation: pb.GenerationSettings | None = None,
            system: str = "", history: Sequence[Turn] = (),
            timeout_s: float | None = None) -> AsyncIterator[pb.AnswerEvent]:
        """The answer to a whole question, as `answer` gives it."""
        return self.answer(question, mode=mode, generation=generation, system=system, history=history,
                           timeout_s=timeout_s)

    async def health(self, timeout_s: float = 5.0, *, service: str = SERVICE_NAME) -> str:
        """SERVING, NOT_SERVING, ... of the Espalier service (or of `service`; "" = the whole server)."""
        reply = await self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def wait_serving(self, timeout_s: float = 600.0, on_wait: Callable[[str], None] | None = None) -> None:
        """Poll health until SERVING (models load for a while after the port opens)."""
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    status = await self.health()
                except grpc.aio.AioRpcError as err:
                    status = err.code().name
                if status == "SERVING":
                    return
                if on_wait is not None:
                    on_wait(status)
                await asyncio.sleep(0.5)

    # --- internals --------------------------------------------------------------------------

    def _deadline(self, timeout_s: float | None) -> float | None:
        return timeout_s if timeout_s is not None else self._timeout

    async def _with_retry(self, call: Callable[[], Awaitable[T]]) -> T:
        backoff = self._retry.first_backoff_s
        for attempt in range(self._retry.attempts):
            try:
                return await call()
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == self._retry.attempts:
                    raise
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self._retry.max_backoff_s)
        raise AssertionError("unreachable")

    async def _events(self, start: Callable[[], grpc.aio.UnaryStreamCall | grpc.aio.StreamStreamCall],
                      retry: bool = True) -> AsyncIterator[pb.AnswerEvent]:
        backoff = self._retry.first_backoff_s
        attempts = self._retry.attempts if retry else 1
        for attempt in range(attempts):
            call = start()
            received = False
            try:
                async for reply in call:
                    received = True
                    yield reply.event
                return
            except grpc.aio.AioRpcError as err:
                if received or err.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == attempts:
                    raise
            finally:
                call.cancel()  # the caller stopped early (or we are done): free the server's slots
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self._retry.max_backoff_s)


def chat(turns: Sequence[Turn]) -> list[pb.ChatMessage]:
    """Turns as ChatMessages: ("user", "text") pairs or ChatMessages, in order."""
    out = []
    for turn in turns:
        if isinstance(turn, pb.ChatMessage):
            out.append(turn)
        else:
            role, content = turn
            out.append(pb.ChatMessage(role=role, content=content))
    return out


def asked(question: str, system: str = "", history: Sequence[Turn] = ()) -> dict[str, object]:
    """A request's question fields: the bare question, or, with a system text or earlier turns, the
    messages [system, *history, user question] (the server reads the last one as the question)."""
    if not system and not history:
        return {"question": question}
    messages = [pb.ChatMessage(role="system", content=system)] if system else []
    return {"messages": [*messages, *chat(history), pb.ChatMessage(role="user", content=question)]}


def _mode(mode: str) -> int:
    try:
        return MODES[mode]
    except KeyError:
        raise ValueError(f"unknown mode {mode!r}: one of {', '.join(MODES)}") from None


def _read(path: Path | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None
