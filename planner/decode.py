"""Thin helpers over Engine.generate shared by the router, the skeleton stage and the runner.

Owns: picking a loaded role when the wanted one is not loaded, and decoding one whole sequence
into text with usage accounting (or into its chunks), always closing the engine's iterator (which
frees the sequence).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from espalier.planner.engine import Chunk, Engine, FinishReason, GenerateRequest, Role, RoleNotLoaded
from espalier.planner.events import Meter

log = logging.getLogger(__name__)


def resolve_role(wanted: Role, loaded: frozenset[Role]) -> Role:
    """`wanted` if loaded, else the other loaded role (an engine may load only one model)."""
    if wanted in loaded:
        return wanted
    for role in (Role.LARGE, Role.SMALL):
        if role in loaded:
            return role
    raise RoleNotLoaded(f"no model role is loaded (wanted {wanted})")


async def aclose_quietly(iterator: AsyncIterator[Chunk]) -> None:
    """Close an engine iterator if it can be closed (async generators can); frees the sequence."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


@dataclass(frozen=True, slots=True)
class Collected:
    text: str
    finish: FinishReason | None
    tokens: int


async def metered(engine: Engine, request: GenerateRequest, meter: Meter | None = None) -> AsyncGenerator[Chunk, None]:
    """One sequence's chunks up to and with its finish; the one loop every decoding caller runs.

    Use with `contextlib.aclosing`: leaving early (a break, a return, an error, a cancel) closes the
    engine's iterator, which frees the sequence, and the tokens seen so far are metered either way
    (prompt and reused counts from the last chunk, completion tokens summed).
    """
    tokens = 0
    last: Chunk | None = None
    stream = engine.generate(request)
    try:
        async for chunk in stream:
            tokens += chunk.tokens
            last = chunk
            yield chunk
            if chunk.finish is not None:
                break
    finally:
        await aclose_quietly(stream)
        if meter is not None:
            meter.add(request.role, prompt_tokens=last.prompt_tokens if last else 0,
                      reused_tokens=last.reused_tokens if last else 0, completion_tokens=tokens)


async def chunks(engine: Engine, request: GenerateRequest) -> list[Chunk]:
    """Every chunk of one sequence (for callers that read more than text: logprobs); freed either way."""
    async with aclosing(metered(engine, request)) as stream:
        return [chunk async for chunk in stream]


async def collect(engine: Engine, request: GenerateRequest, meter: Meter | None = None,
                  on_text: Callable[[str], None] | None = None) -> Collected:
    """Decode a whole sequence; EngineError propagates, the sequence is freed either way.

    on_text: called with each piece of text as it arrives (a skeleton read while it is written)."""
    parts: list[str] = []
    tokens = 0
    last: Chunk | None = None
    async with aclosing(metered(engine, request, meter)) as stream:
        async for chunk in stream:
            parts.append(chunk.text)
            tokens += chunk.tokens
            if on_text is not None and chunk.text:
                on_text(chunk.text)
            last = chunk
    return Collected("".join(parts), last.finish if last else None, tokens)


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel tasks and wait until they have unwound (their sequences freed).

    If we are cancelled ourselves while waiting, keep waiting (the wait is bounded by the tasks' own
    unwinding) and re-raise the cancellation afterwards: never swallowed. A task's own error, if it
    had one, is retrieved (and logged at debug level): whoever would have received it has left.
    """
    for task in tasks:
        task.cancel()  # no-op if it is done
    interrupted = False
    while not all(task.done() for task in tasks):
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError:
            interrupted = True
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.debug("%s ended with %r", task.get_name(), task.exception())
    if interrupted:
        raise asyncio.CancelledError
