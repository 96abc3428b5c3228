"""The OpenAI-compatible /v1/completions wire format, as llama-server, vLLM and llama-cpp-python speak it.

Owns the request body built from a Sampling, the reading of one streamed event (text, finish
reason, usage) and the meaning of an HTTP error status. No I/O here, so every rule is unit-tested.

Field names: `repeat_penalty` is llama.cpp's name (llama-server, llama-cpp-python) and
`repetition_penalty` vLLM's; both are sent when the penalty is on, and each server ignores the
other's. `top_k: 0` means off on all three (llama-server defaults to 40, so it is always sent), as
do `min_p: 0` and `top_p: 1`. `cache_prompt: true` asks llama-server to keep the prompt's KV in the
slot and reuse its longest common prefix on the next request; vLLM's automatic prefix caching needs
no flag. `stream_options.include_usage` makes vLLM (and recent llama-server) send token counts at the
end of the stream; llama-cpp-python's server sends none, and then prompt_tokens stays 0.
`word_repeat_penalty` has no counterpart on these servers and is not sent (a remote skeleton is
decoded without it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from espalier.planner.engine import (
    EngineError,
    EngineFault,
    Exhausted,
    FinishReason,
    InvalidRequest,
    Sampling,
)

DONE = "[DONE]"
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})  # the server refused before doing anything: try another
BUSY_STATUS = frozenset({429, 503})  # "come back later" when no other server took the request either

_FINISH = {"stop": FinishReason.STOP, "eos": FinishReason.STOP, "length": FinishReason.LENGTH}


class WireError(ValueError):
    """An event that is not a completion chunk, or an error the server reported inside the stream."""


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One parsed `data:` event of a streamed completion."""

    text: str = ""
    finish: FinishReason | None = None
    prompt_tokens: int | None = None  # from usage, when the server sends it
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # prompt tokens the server reused from its cache
    done: bool = False  # the `[DONE]` sentinel


def completion_body(prompt: str | Sequence[int], sampling: Sampling, model: str = "") -> dict[str, Any]:
    """The JSON body of a streamed /v1/completions request."""
    body: dict[str, Any] = {
        "prompt": prompt if isinstance(prompt, str) else list(prompt),
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "min_p": sampling.min_p,
        "cache_prompt": True,
    }
    if model:
        body["model"] = model
    if sampling.repeat_penalty != 1.0:
        body["repeat_penalty"] = sampling.repeat_penalty
        body["repetition_penalty"] = sampling.repeat_penalty
    if sampling.temperature > 0:
        body["seed"] = sampling.seed  # greedy decoding needs none; a seed would only vary by server
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.min_tokens:
        # vLLM honours it; llama-server ignores it (the planner then retries an empty point instead)
        body["min_tokens"] = sampling.min_tokens
    return body


def parse_event(data: str) -> StreamEvent:
    """One `data:` payload: a completion chunk, the `[DONE]` sentinel, or an error (raised as WireError)."""
    if data.strip() == DONE:
        return StreamEvent(done=True)
    try:
        obj = json.loads(data)
    except ValueError:
        raise WireError(f"the server sent an event that is not JSON: {data[:200]!r}") from None
    if not isinstance(obj, dict):
        raise WireError(f"the server sent an event that is not a JSON object: {data[:200]!r}")
    if "error" in obj:  # llama-server and vLLM report a failure mid-stream this way
        raise WireError(f"the server failed the stream: {error_message(obj)}")
    text = ""
    finish: FinishReason | None = None
    choices = obj.get("choices") or []
    if choices:
        choice = choices[0]
        if not isinstance(choice, dict):
            raise WireError(f"a choice is not a JSON object: {data[:200]!r}")
        text = choice.get("text") or ""
        if not isinstance(text, str):
            raise WireError(f"a choice's text is not a string: {data[:200]!r}")
        reason = choice.get("finish_reason")
        if reason is not None:
            finish = _FINISH.get(reason)
            if finish is None:  # vLLM's "abort", a content filter: the sequence did not end normally
                raise WireError(f"the server ended the sequence with finish_reason {reason!r}")
    usage = _object(obj.get("usage"))
    timings = _object(obj.get("timings"))
    details = _object(usage.get("prompt_tokens_details"))
    cached = details.get("cached_tokens", timings.get("cache_n"))  # OpenAI's field, else llama-server's
    return StreamEvent(text, finish, _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")),
                       _count(cached))


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def error_message(payload: Any) -> str:
    """The human part of an OpenAI-style error body ({"error": {"message": ...}}, or FastAPI's {"detail"})."""
    if isinstance(payload, dict):
        err = payload.get("error", payload.get("detail", payload))
        if isinstance(err, dict):
            return str(err.get("message") or err)[:500]
        return str(err)[:500]
    return str(payload)[:500]


def status_error(status: int, body: bytes, url: str) -> EngineError:
    """The engine error for a non-200 response (the caller decides on retries with RETRYABLE_STATUS)."""
    try:
        detail = error_message(json.loads(body))
    except ValueError:
        detail = body.decode("utf-8", "replace").strip()[:500] or "(no body)"
    message = f"{url} answered HTTP {status}: {detail}"
    if status in (400, 413, 422):  # bad fields, a prompt longer than the context, failed validation
        return InvalidRequest(message)
    if status in BUSY_STATUS:
        return Exhausted(message)
    return EngineFault(message)
