"""An incremental parser of Server-Sent Events (the `text/event-stream` format of streamed completions).

Owns turning body bytes, cut anywhere by the network, into whole events, following the WHATWG
rules that matter for completion streams: lines end in CRLF, LF or CR; `data:` lines of one event are
joined with newlines; one space after the colon is dropped; a blank line ends an event; lines
starting with `:` are comments (sse-starlette's pings) and are skipped; `event:` names the event.
One addition: llama-server reports a failure mid-stream as a bare `error: {json}` line, which
becomes an event named `error` at once.
Lines are split as bytes and only then decoded, so a UTF-8 character cut between two reads is never
broken.
"""

from __future__ import annotations

from dataclasses import dataclass


class SseError(ValueError):
    """The stream is not valid event-stream text (not UTF-8, or a line longer than the limit)."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    data: str
    event: str = "message"


class SseParser:
    """Feed body bytes with `feed()`, which returns the events completed by them."""

    def __init__(self, max_line: int = 4 * 1024 * 1024) -> None:
        self._buffer = bytearray()
        self._data: list[str] = []
        self._event = ""
        self._max_line = max_line

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        events: list[SseEvent] = []
        start = 0
        buf = self._buffer
        while True:
            cr = buf.find(b"\r", start)
            lf = buf.find(b"\n", start)
            ends = [i for i in (cr, lf) if i >= 0]
            if not ends:
                break
            end = min(ends)
            if end == cr and end + 1 == len(buf):
                break  # a CR at the very end may be the first half of CRLF: wait for the next read
            step = 2 if end == cr and buf[end + 1:end + 2] == b"\n" else 1
            event = self._line(bytes(buf[start:end]))
            if event is not None:
                events.append(event)
            start = end + step
        del buf[:start]
        if len(buf) > self._max_line:
            raise SseError(f"an event-stream line is longer than {self._max_line} bytes")
        return events

    def _line(self, raw: bytes) -> SseEvent | None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SseError(f"the event stream is not UTF-8: {exc}") from None
        if not line:  # a blank line dispatches the event gathered so far
            if not self._data:
                self._event = ""
                return None
            event = SseEvent("\n".join(self._data), self._event or "message")
            self._data, self._event = [], ""
            return event
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "error":
            # Not SSE: llama-server reports a failure inside a stream as a bare `error: {json}` line.
            return SseEvent(value, "error")
        # `id` and `retry` only matter to reconnecting browsers; completion streams are not resumed.
        return None
