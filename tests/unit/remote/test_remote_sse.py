"""espalier.service.remote.sse: events survive any split of the byte stream; comments, CRLF, multi-line data."""

from __future__ import annotations

import pytest

from espalier.service.remote.sse import SseError, SseEvent, SseParser

STREAM = (": ping - 2024-01-01\r\n\r\n"
          "data: {\"a\": \"h\u00e9llo \u2603\"}\r\n\r\n"
          "event: progress\ndata: line one\ndata:line two\n\n"
          "id: 7\nretry: 10\ndata:  two spaces\n\n"
          "data: [DONE]\r\r\n").encode()  # a bare CR ends a line too
EXPECTED = [SseEvent('{"a": "h\u00e9llo \u2603"}'), SseEvent("line one\nline two", "progress"),
            SseEvent(" two spaces"), SseEvent("[DONE]")]


def feed_in_pieces(data: bytes, size: int) -> list[SseEvent]:
    parser = SseParser()
    out: list[SseEvent] = []
    for i in range(0, len(data), size):
        out += parser.feed(data[i:i + size])
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_any_split_gives_the_same_events(size: int) -> None:
    assert feed_in_pieces(STREAM, size) == EXPECTED


def test_crlf_split_across_reads_is_one_line_end() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == []  # CRLF ended the data line; this CR may start a CRLF too
    assert parser.feed(b"\n") == [SseEvent("a")]


def test_event_without_a_blank_line_is_not_dispatched_yet() -> None:
    parser = SseParser()
    assert parser.feed(b"data: partial\n") == []
    assert parser.feed(b"\n") == [SseEvent("partial")]


def test_llama_server_error_line_is_an_error_event() -> None:
    assert SseParser().feed(b'error: {"code": 500}\n\n') == [SseEvent('{"code": 500}', "error")]


def test_bad_bytes_and_endless_lines_are_errors() -> None:
    with pytest.raises(SseError, match="UTF-8"):
        SseParser().feed(b"data: \xff\xfe\n\n")
    with pytest.raises(SseError, match="longer than"):
        SseParser(max_line=16).feed(b"data: " + b"x" * 32)
