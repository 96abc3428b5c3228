"""MixedEngine: one Engine made of several, each serving its own model roles.

Owns dispatch by role, so that a role served by remote servers and a role served by the embedded
llama.cpp engine look like one engine to the planner and the servicer (for example the large model
on a GPU box's llama-server and the small one embedded). Each role belongs to exactly one engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from espalier.planner.engine import (
    Chunk,
    Embedder,
    Engine,
    EngineStats,
    GenerateRequest,
    Message,
    ModelIdentity,
    NoEmbeddings,
    Pooling,
    Prefix,
    Role,
    RoleNotLoaded,
)


class MixedEngine:
    def __init__(self, engines: Sequence[Engine]) -> None:
        self._engines = tuple(engines)
        self._by_role: dict[Role, Engine] = {}
        for engine in self._engines:
            for role in engine.roles():
                if role in self._by_role:
                    raise ValueError(f"the {role.value} role is served by two engines")
                self._by_role[role] = engine

    def roles(self) -> frozenset[Role]:
        return frozenset(self._by_role)

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Chunk, None]:
        async with aclosing(self._engine(request.role).generate(request)) as stream:
            async for chunk in stream:
                yield chunk

    def prefix(self, role: Role, text: str) -> Prefix:
        return self._engine(role).prefix(role, text)

    def chat_prompt(self, role: Role, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        return self._engine(role).chat_prompt(role, messages, add_generation_prompt=add_generation_prompt)

    def free_slots(self, role: Role) -> int:
        engine = self._by_role.get(role)
        return engine.free_slots(role) if engine is not None else 0

    def stats(self) -> EngineStats:
        return EngineStats(tuple(r for engine in self._engines for r in engine.stats().roles))

    async def add_resident_prefix(self, role: Role, text: str) -> int:
        """Passed to the role's engine when it keeps resident prefixes (see server.warm_up); else 0."""
        add = getattr(self._engine(role), "add_resident_prefix", None)
        return int(await add(role, text)) if add is not None else 0

    async def embed(self, role: Role, texts: Sequence[str], pooling: Pooling,
                    depth: float = 1.0) -> list[tuple[float, ...]]:
        return await self._embedder(role).embed(role, texts, pooling, depth)

    async def model_identity(self, role: Role) -> ModelIdentity:
        return await self._embedder(role).model_identity(role)

    def _embedder(self, role: Role) -> Embedder:
        engine = self._engine(role)
        if not isinstance(engine, Embedder):
            raise NoEmbeddings(f"the {role.value} role's engine gives no embeddings")
        return engine

    async def aclose(self, grace_s: float = 5.0) -> None:
        await asyncio.gather(*(engine.aclose(grace_s) for engine in self._engines))

    def _engine(self, role: Role) -> Engine:
        engine = self._by_role.get(role)
        if engine is None:
            served = ", ".join(sorted(r.value for r in self._by_role)) or "none"
            raise RoleNotLoaded(f"the {Role(role).value} model is not loaded (loaded: {served})")
        return engine
