"""Thin helpers over Engine.generate shared by the router, the skeleton stage and the runner.

Owns: picking a loaded role when the wanted one is not loaded, and decoding one whole sequence
into text with usage accounting (or into its chunks), always closing the engine's iterator (which
frees the sequence).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
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


async def collect(engine: Engine, request: GenerateRequest, meter: Meter | None = None) -> Collected:
    """Decode a whole sequence; EngineError propagates, the sequence is freed either way."""
    parts: list[str] = []
    tokens = 0
    last: Chunk | None = None
    stream = engine.generate(request)
    try:
        async for chunk in stream:
            parts.append(chunk.text)
            tokens += chunk.tokens
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
