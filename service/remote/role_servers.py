"""One remote role: streaming one sequence from its servers, with retries, timeouts and counters.

Owns the life of a request: choose a server (espalier.service.remote.pool), POST /completions with
stream=true, wait for the first token within `first_byte_timeout_s`, then read tokens with at most
`idle_timeout_s` between two, and turn events into Chunks. Until the first token arrives nothing
has reached the caller, so a refused or reset connection, a 429/502/503/504 or a first-byte timeout
is retried on another server; once a token has arrived the request is committed to its server and a
failure ends the sequence (sending it elsewhere could repeat or contradict text already shown).
Whatever ends a request (its end, an error, the caller closing the iterator or being cancelled)
closes its connection at once, which is what makes the server stop decoding and free its slot.
Also owns the role's counters for stats().
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence

from espalier.planner.engine import (
    Chunk,
    EngineClosed,
    EngineError,
    EngineFault,
    Exhausted,
    Role,
    RoleStats,
    Sampling,
)
from espalier.service.remote import http_client, wire
from espalier.service.remote.config import RemoteRoleConfig
from espalier.service.remote.pool import Endpoint, UrlPool
from espalier.service.remote.sse import SseError, SseEvent, SseParser

log = logging.getLogger(__name__)

TRAILER_S = 2.0  # after the finish reason, how long to wait for the usage event and [DONE]
RATE_WINDOW_S = 10.0  # tokens_per_s is measured over this recent window
MAX_EJECT_S = 60.0


class _Retry(Exception):
    """A failure before the first token, worth trying on another server; `error` is what the caller gets
    when no server is left."""

    def __init__(self, error: EngineError, busy: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.busy = busy


class _Attempt:
    """One request to one server: its connection and the events read but not yet consumed."""

    def __init__(self, owner: RoleServers, endpoint: Endpoint) -> None:
        self.owner = owner
        self.endpoint = endpoint
        self.url = http_client.BaseUrl.parse(endpoint.url)
        self.response: http_client.Response | None = None
        self.parser = SseParser()
        self.pending: collections.deque[SseEvent] = collections.deque()
        self.closed = False

    async def begin(self, body: bytes) -> wire.StreamEvent:
        """Send the request and return its first event; raises _Retry for failures another server may not have."""
        cfg = self.owner.config
        deadline = asyncio.get_running_loop().time() + cfg.first_byte_timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                self.response = await http_client.request(
                    self.url, "POST", "/completions", body=body, headers=self.owner.headers,
                    connect_timeout=cfg.connect_timeout_s)
                if self.response.status != 200:
                    raise self._status_error(await self._error_body())
                ctype = self.response.headers.get("content-type", "")
                if not ctype.startswith("text/event-stream"):
                    raise EngineFault(f"{self.url} answered with {ctype or 'no content type'}, not an event "
                                      "stream (is it an OpenAI-compatible server?)")
                first = await self.next_event()
        except TimeoutError:
            raise _Retry(EngineFault(f"{self.url}: no token within first_byte_timeout_s="
                                     f"{cfg.first_byte_timeout_s:g}s")) from None
        except http_client.HttpError as exc:
            raise _Retry(EngineFault(str(exc))) from None
        except (wire.WireError, SseError) as exc:  # the server judged this request: another would too
            raise EngineFault(f"{self.url}: {exc}") from None
        if first is None:
            raise _Retry(EngineFault(f"{self.url} ended the stream before any token"))
        return first

    async def next_event(self) -> wire.StreamEvent | None:
        """The next completion event, or None when the body ends. Raises WireError, SseError, HttpError."""
        while not self.pending:
            assert self.response is not None
            data = await self.response.receive()
            if data is None:
                return None
            self.pending.extend(self.parser.feed(data))
        event = self.pending.popleft()
        if event.event == "error":
            raise wire.WireError(f"the server failed the stream: {_error_text(event.data)}")
        return wire.parse_event(event.data)

    async def _error_body(self) -> bytes:
        assert self.response is not None
        try:
            return await self.response.read(64 * 1024)
        except http_client.HttpError:
            return b""

    def _status_error(self, body: bytes) -> EngineError | _Retry:
        assert self.response is not None
        error = wire.status_error(self.response.status, body, str(self.url))
        if self.response.status in wire.RETRYABLE_STATUS:
            return _Retry(error, busy=self.response.status in wire.BUSY_STATUS)
        return error

    def close(self) -> None:
        """Drop the connection (if still open) and stop counting the request on its server. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.response is not None:
            self.response.close()
        self.owner.pool.release(self.endpoint)
        self.owner.live.discard(self)


class RoleServers:
    """The servers of one role. `stream()` decodes one sequence; `abort_all()` ends every open one."""

    def __init__(self, role: Role, config: RemoteRoleConfig) -> None:
        self.role = role
        self.config = config
        self.pool = UrlPool(config.urls, eject_s=config.eject_s, max_eject_s=MAX_EJECT_S)
        self.headers: tuple[tuple[str, str], ...] = (
            ("Content-Type", "application/json"), ("Accept", "text/event-stream"),
            *((("Authorization", f"Bearer {config.api_key}"),) if config.api_key else ()))
        self.live: set[_Attempt] = set()
        self.closing = False
        self._prefilled = 0
        self._reused = 0
        self._generated = 0
        self._events = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()

    async def stream(self, prompt: str | Sequence[int], sampling: Sampling) -> AsyncIterator[Chunk]:
        body = json.dumps(wire.completion_body(prompt, sampling, self.config.model)).encode()
        attempt, first = await self._start(body)
        try:
            async for chunk in self._chunks(attempt, first):
                self._count(chunk)
                yield chunk
        finally:
            attempt.close()

    async def _start(self, body: bytes) -> tuple[_Attempt, wire.StreamEvent]:
        """Find a server that starts streaming; each failure before the first token moves to another."""
        tried: list[Endpoint] = []
        failures: list[_Retry] = []
        for _ in range(self.config.retries + 1):
            endpoint = None if self.closing else self.pool.acquire(tried)
            if endpoint is None:
                break
            tried.append(endpoint)
            attempt = _Attempt(self, endpoint)
            self.live.add(attempt)
            try:
                first = await attempt.begin(body)
            except _Retry as exc:
                attempt.close()
                self.pool.failed(endpoint)
                failures.append(exc)
                log.warning("%s server %s failed before its first token (%s)%s", self.role.value, endpoint.url,
                            exc, "; trying another" if len(tried) < len(self.pool.endpoints) else "")
                continue
            except BaseException:
                attempt.close()
                raise
            self.pool.succeeded(endpoint)
            return attempt, first
        if self.closing:
            raise EngineClosed("the engine is shutting down")
        detail = "; ".join(str(f) for f in failures)
        if any(f.busy for f in failures):
            raise Exhausted(f"every {self.role.value} server tried is busy: {detail}")
        raise EngineFault(f"no {self.role.value} server answered ({len(tried)} tried): {detail}")

    async def _chunks(self, attempt: _Attempt, first: wire.StreamEvent) -> AsyncIterator[Chunk]:
        """Chunks from a committed stream. Tokens are counted one per event with text (servers stream one
        token per event), corrected by the usage count at the end when the server sends one."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        event: wire.StreamEvent | None = first
        tokens = 0  # tokens already handed out
        try:
            while event is not None and event.finish is None and not event.done:
                self._events += 1
                if event.text:
                    tokens += 1
                    yield Chunk(event.text, 1)
                async with asyncio.timeout_at(loop.time() + cfg.idle_timeout_s):
                    event = await attempt.next_event()
            if event is None or event.finish is None:
                raise EngineFault(f"{attempt.url} ended the stream after {tokens} tokens without a finish "
                                  "reason (did another request interrupt it?)")
            self._events += 1
            finish, text = event.finish, event.text
            usage = event
            try:  # the usage often follows the finish reason in an event of its own
                async with asyncio.timeout_at(loop.time() + TRAILER_S):
                    while not event.done and (event.completion_tokens is None or event.prompt_tokens is None):
                        following = await attempt.next_event()
                        if following is None:
                            break
                        event = following
                        if event.completion_tokens is not None:
                            usage = event
            except (TimeoutError, http_client.HttpError, wire.WireError, SseError):
                pass  # the sequence is complete; only its usage count is lost
        except TimeoutError:
            raise EngineFault(f"{attempt.url}: no token for idle_timeout_s={cfg.idle_timeout_s:g}s after "
                              f"{tokens} tokens") from None
        except (http_client.HttpError, wire.WireError, SseError) as exc:
            if self.closing:
                raise EngineClosed("the engine shut down while the sequence was decoding") from None
            raise EngineFault(f"{attempt.url}: {exc}") from None
        last = 1 if text else 0
        if usage.completion_tokens is not None:
            last = max(last, usage.completion_tokens - tokens)
        prompt_tokens = usage.prompt_tokens or 0
        reused = min(usage.cached_tokens or 0, prompt_tokens)
        self._prefilled += prompt_tokens - reused
        self._reused += reused
        yield Chunk(text, last, finish, prompt_tokens=prompt_tokens, reused_tokens=reused)

    def _count(self, chunk: Chunk) -> None:
        if chunk.tokens:
            self._generated += chunk.tokens
            self._recent.append((time.monotonic(), chunk.tokens))

    def abort_all(self) -> None:
        for attempt in list(self.live):
            attempt.close()

    def free_slots(self) -> int:
        now = time.monotonic()
        return sum(max(0, self.config.slots - e.outstanding) for e in self.pool.endpoints if not e.ejected(now))

    def stats(self) -> RoleStats:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()
        rate = 0.0
        if self._recent:
            rate = sum(n for _, n in self._recent) / max(1.0, now - self._recent[0][0])
        total = self.config.slots * len(self.pool.endpoints)
        busy = self.pool.outstanding
        servers = len(self.pool.endpoints)
        model = f"{self.config.model or 'default model'} on {servers} server{'s' if servers > 1 else ''}"
        return RoleStats(self.role, model, total, min(busy, total), max(0, busy - total), self._prefilled,
                         self._reused, self._generated, rate, self._events)


def _error_text(data: str) -> str:
    try:
        return wire.error_message(json.loads(data))
    except ValueError:
        return data[:500]

