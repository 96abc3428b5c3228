"""espalier.service.remote.wire: Sampling to request fields, stream events to text/finish/usage, status to errors."""

from __future__ import annotations

import json

import pytest

from espalier.planner.engine import EngineFault, Exhausted, FinishReason, InvalidRequest, Sampling
from espalier.service.remote.wire import StreamEvent, WireError, completion_body, parse_event, status_error


def test_sampling_maps_to_request_fields() -> None:
    s = Sampling(temperature=0.7, top_p=0.9, top_k=20, min_p=0.05, repeat_penalty=1.1, seed=42, max_tokens=33,
                 stop=("\n\n", "3."), min_tokens=4, word_repeat_penalty=1.2)  # the last has no wire name
    body = completion_body("Hi", s, "qwen")
    assert body == {
        "prompt": "Hi", "model": "qwen", "stream": True, "stream_options": {"include_usage": True},
        "max_tokens": 33, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.05,
        "repeat_penalty": 1.1, "repetition_penalty": 1.1, "seed": 42, "stop": ["\n\n", "3."],
        "min_tokens": 4, "cache_prompt": True,
    }


def test_greedy_defaults_send_explicit_offs_and_nothing_else() -> None:
    body = completion_body([1, 2, 3], Sampling())
    # llama-server's own defaults (top_k 40, min_p 0.05) would change greedy output: send the offs
    assert body["top_k"] == 0 and body["min_p"] == 0.0 and body["top_p"] == 1.0 and body["temperature"] == 0.0
    assert body["prompt"] == [1, 2, 3]
    assert not {"model", "seed", "stop", "repeat_penalty", "repetition_penalty", "min_tokens"} & set(body)
    json.dumps(body)


def test_text_finish_and_usage() -> None:
    assert parse_event('{"choices": [{"text": "Hel", "finish_reason": null}]}') == StreamEvent("Hel")
    assert parse_event('{"choices": [{"text": "", "finish_reason": "length"}]}').finish is FinishReason.LENGTH
    last = parse_event(json.dumps({
        "choices": [{"text": ".", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 8}}}))
    assert last == StreamEvent(".", FinishReason.STOP, 12, 5, 8)
    # vLLM's usage comes in an event without choices; llama-server's cache count in its timings
    assert parse_event('{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}') == StreamEvent(
        "", None, 3, 1, None)
    assert parse_event('{"choices": [], "timings": {"cache_n": 4}}').cached_tokens == 4
    assert parse_event(" [DONE]").done


@pytest.mark.parametrize(("data", "words"), [
    ("not json", "not JSON"),
    ("[1]", "not a JSON object"),
    ('{"error": {"message": "out of memory", "code": 500}}', "out of memory"),
    ('{"choices": [{"text": "x", "finish_reason": "abort"}]}', "finish_reason 'abort'"),
    ('{"choices": [{"text": 5}]}', "not a string"),
])
def test_bad_events(data: str, words: str) -> None:
    with pytest.raises(WireError, match=words):
        parse_event(data)


def test_status_codes_map_to_engine_errors() -> None:
    err = status_error(400, b'{"error": {"message": "context length exceeded", "type": "invalid_request_error"}}',
                       "http://a/v1")
    assert isinstance(err, InvalidRequest) and "HTTP 400: context length exceeded" in str(err)
    assert isinstance(status_error(422, b'{"detail": [{"msg": "bad"}]}', "u"), InvalidRequest)
    assert isinstance(status_error(429, b"slow down", "u"), Exhausted)
    assert isinstance(status_error(503, b"", "u"), Exhausted)
    for code in (401, 404, 500, 502):
        err = status_error(code, b"<html>oops</html>", "u")
        assert type(err) is EngineFault and f"HTTP {code}: <html>oops</html>" in str(err)
