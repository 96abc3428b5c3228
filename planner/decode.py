"""Thin helpers over Engine.generate shared by the router, the skeleton stage and the runner.

Owns: picking a loaded role when the wanted one is not loaded, and decoding one whole sequence
into text with usage accounting (or into its chunks), always closing the engine's iterator (which
frees the sequence).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from planner.engine import Chunk, Engine, FinishReason, GenerateRequest, Role, RoleNotLoaded
from planner.events import Meter


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


async def chunks(engine: Engine, request: GenerateRequest) -> list[Chunk]:
    """Every chunk of one sequence (for callers that read more than text: logprobs); freed either way."""
    out: list[Chunk] = []
    stream = engine.generate(request)
    try:
        async for chunk in stream:
            out.append(chunk)
            if chunk.finish is not None:
                break
    finally:
        await aclose_quietly(stream)
    return out


async def collect(engine: Engine, request: GenerateRequest, meter: Meter | None = None,
                  on_text: Callable[[str], None] | None = None) -> Collected:
    """Decode a whole sequence; EngineError propagates, the sequence is freed either way.

    on_text: called with each piece of text as it arrives (a skeleton read while it is written)."""
    parts: list[str] = []
    tokens = 0
    last: Chunk | None = None
    stream = engine.generate(request)
    try:
        async for chunk in stream:
            parts.append(chunk.text)
            tokens += chunk.tokens
            if on_text is not None and chunk.text:
                on_text(chunk.text)
            last = chunk
            if chunk.finish is not None:
                break
    finally:
        await aclose_quietly(stream)
        if meter is not None:
            meter.add(
                request.role,
                prompt_tokens=last.prompt_tokens if last else 0,
                reused_tokens=last.reused_tokens if last else 0,
                completion_tokens=tokens,
            )
    return Collected("".join(parts), last.finish if last else None, tokens)


async def cancel_and_wait(task: asyncio.Task[object]) -> None:
    """Cancel a task and wait until it has unwound (its sequences freed).

    If we are cancelled ourselves while waiting, keep waiting (the wait is bounded by the task's own
    unwinding) and re-raise the cancellation afterwards: never swallowed. The task's own error, if it
    had one, is retrieved: whoever would have received it has left.
    """
    task.cancel()  # no-op if it is done
    interrupted = False
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            interrupted = True
    if not task.cancelled():
        task.exception()
    if interrupted:
        raise asyncio.CancelledError
