"""A scripted OpenAI-style HTTP server on the loopback interface, for the remote engine's unit tests.

Each connection's request is parsed (head and Content-Length body) and recorded, then handed to the
server's `handler`, an async function that writes whatever response the test needs: a stream of
completion events, an error status, nothing at all, or a stream cut in the middle. The server
notices when the client goes away (`Received.gone` is set), which is how tests see that closing or
cancelling a sequence really closed its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from espalier.planner.engine import Role
from espalier.service.remote.config import RemoteRoleConfig
from espalier.service.remote.remote_engine import RemoteEngine


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    gone: asyncio.Event = field(default_factory=asyncio.Event)


Handler = Callable[[Received, asyncio.StreamWriter], Awaitable[None]]


class ScriptedServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.received: list[Received] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)}
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            req = Received(method, path, headers, json.loads(raw) if raw else {})
            self.received.append(req)
            watcher = asyncio.create_task(_watch(reader, req.gone))
            try:
                await self.handler(req, writer)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                writer.close()
            except ConnectionError:
                req.gone.set()
            finally:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(req.gone.wait(), 5)
                watcher.cancel()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


async def _watch(reader: asyncio.StreamReader, gone: asyncio.Event) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(1024):
            pass
    gone.set()


# --- response writers ---------------------------------------------------------------------------


def start_stream(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                 b"Connection: close\r\n\r\n")


def send_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))


def event(text: str = "", finish: str | None = None, **extra: Any) -> bytes:
    obj: dict[str, Any] = {"choices": [{"text": text, "index": 0, "finish_reason": finish}], **extra}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def end_stream(writer: asyncio.StreamWriter) -> None:
    send_chunk(writer, b"data: [DONE]\n\n")
    writer.write(b"0\r\n\r\n")


def stream_of(pieces: Sequence[bytes], delay: float = 0.0, end: bool = True) -> Handler:
    async def handler(req: Received, writer: asyncio.StreamWriter) -> None:
        start_stream(writer)
        for piece in pieces:
            if delay:
                await asyncio.sleep(delay)
            send_chunk(writer, piece)
            await writer.drain()
        if end:
            end_stream(writer)
        else:
            await req.gone.wait()  # keep the connection open, silent
    return handler


def status(code: int, body: dict[str, Any]) -> Handler:
    async def handler(req: Received, writer: asyncio.StreamWriter) -> None:
        data = json.dumps(body).encode()
        writer.write(b"HTTP/1.1 %d Whatever\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (code, len(data), data))
    return handler


async def hang(req: Received, writer: asyncio.StreamWriter) -> None:
    await req.gone.wait()


async def endless(req: Received, writer: asyncio.StreamWriter) -> None:
    """One token every 20 ms until the client goes away."""
    start_stream(writer)
    while not req.gone.is_set():
        send_chunk(writer, event("x"))
        await writer.drain()
        await asyncio.sleep(0.02)


def engine_for(*urls: str, role: Role = Role.LARGE, **changes: Any) -> RemoteEngine:
    return RemoteEngine({role: RemoteRoleConfig(urls=tuple(urls), **changes)})


def dead_url() -> str:
    """A loopback URL on which nothing listens (connection refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def drain(it: AsyncIterator[Any]) -> list[Any]:
    return [c async for c in it]
