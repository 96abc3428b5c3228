"""A small streaming HTTP/1.1 client: asyncio streams for the I/O, h11 for the protocol.

Owns one thing: send a request to a base URL and hand back the response status, headers and body as
it arrives, with a `close()` that drops the connection at once.

Why this and not httpx or aiohttp (chosen on purpose):
- Pure Python, as the project requires: h11 is one small package without dependencies (it is the
  parser httpx's own transport uses); aiohttp carries C extensions, and httpx would add httpcore,
  anyio, certifi and idna plus a connection pool and timeout layer between us and the socket.
- One connection per request (`Connection: close`). A completion stream lasts seconds, so a TCP
  handshake is noise beside it; there is no pool whose idle keep-alive connections the server may
  have closed (a stale connection fails like a dead server and would trigger needless ejection);
  and closing the socket is precisely the signal llama-server, vLLM and llama-cpp-python watch for
  to stop decoding and free the slot. `close()` aborts the transport, so that signal is sent
  immediately instead of after buffered data drains.
- Every timeout is the caller's: it wraps calls in asyncio.timeout_at with its own deadlines
  (first byte, idle between events), which also cancels cleanly; only connecting has its own.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self
from urllib.parse import urlsplit

import h11

READ_SIZE = 64 * 1024


class HttpError(Exception):
    """Base of transport failures (an HTTP error status is not one: the caller reads the status)."""


class ConnectError(HttpError):
    """No connection was made (refused, unreachable, name unknown, connect timeout): the server saw nothing."""


class TransportError(HttpError):
    """The connection broke, or the peer spoke malformed HTTP, after it was made."""


@dataclass(frozen=True, slots=True)
class BaseUrl:
    """A server's base URL, parsed once: http://host:8080/v1 -> scheme, host, port, path '/v1'."""

    text: str
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> BaseUrl:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL with a host: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(url, parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.text


class Response:
    """An HTTP response whose body is still arriving. Close it (or use `async with`) when done."""

    def __init__(self, status: int, reason: str, headers: dict[str, str], conn: h11.Connection,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self._conn = conn
        self._reader = reader
        self._writer = writer

    async def receive(self) -> bytes | None:
        """The next piece of the body as it arrives (chunked encoding undone); None once it is complete."""
        while True:
            event = await _next_event(self._conn, self._reader)
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return None

    async def read(self, limit: int = 1 << 20) -> bytes:
        """The whole body (at most `limit` bytes are kept: an error page needs no more)."""
        out = bytearray()
        while (data := await self.receive()) is not None:
            out += data[: max(0, limit - len(out))]
        return bytes(out)

    def close(self) -> None:
        """Drop the connection now: the server sees the client gone and stops decoding."""
        self._writer.transport.abort()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


async def request(url: BaseUrl, method: str, suffix: str, *, body: bytes = b"",
                  headers: Sequence[tuple[str, str]] = (), connect_timeout: float = 10.0,
                  ssl_context: ssl.SSLContext | None = None) -> Response:
    """Send `method url.path + suffix` and wait for the response head; the body is read from the Response.

    Raises ConnectError when no connection could be made, TransportError when it broke before the
    response head arrived. Cancellation at any point closes the connection.
    """
    try:
        async with asyncio.timeout(connect_timeout):
            if url.scheme == "https":
                context = ssl_context or ssl.create_default_context()
                reader, writer = await asyncio.open_connection(url.host, url.port, ssl=context,
                                                               server_hostname=url.host, limit=READ_SIZE)
            else:
                reader, writer = await asyncio.open_connection(url.host, url.port, limit=READ_SIZE)
    except TimeoutError:
        raise ConnectError(f"{url}: no connection within {connect_timeout:g}s") from None
    except ConnectionRefusedError:
        raise ConnectError(f"{url}: connection refused") from None
    except OSError as exc:  # unreachable, unknown name, TLS handshake failure
        raise ConnectError(f"{url}: cannot connect: {exc.strerror or exc}") from None
    try:
        conn = h11.Connection(h11.CLIENT)
        head = [("Host", url.authority), ("User-Agent", "espalier"), ("Connection", "close"), *headers]
        if body or method in ("POST", "PUT", "PATCH"):
            head.append(("Content-Length", str(len(body))))
        out = conn.send(h11.Request(method=method, target=url.path + suffix, headers=head)) or b""
        if body:
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        writer.write(out)
        await writer.drain()
        while True:
            event = await _next_event(conn, reader)
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and friends carry nothing for us
            if isinstance(event, h11.Response):
                fields = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
                return Response(event.status_code, event.reason.decode("latin-1"), fields, conn, reader, writer)
            raise TransportError(f"{url}: connection closed before a response")
    except BaseException:
        writer.transport.abort()
        raise


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Event:
    """The next HTTP event, reading from the socket as h11 needs. Errors become TransportError."""
    while True:
        try:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(READ_SIZE))  # b"" tells h11 the peer closed
                continue
        except h11.RemoteProtocolError as exc:
            raise TransportError(f"bad HTTP from the server: {exc}") from None
        except (ConnectionError, OSError) as exc:
            raise TransportError(f"connection lost: {exc.strerror or exc}") from None
        if event is h11.PAUSED:  # only after a complete response on a kept-alive connection
            return h11.ConnectionClosed()
        assert isinstance(event, h11.Event)
        return event
