"""What a real engine holds, for integration tests that check an answer left nothing behind."""

from __future__ import annotations

import asyncio

from planner.engine import Role


async def kv_now(engine, role: Role = Role.SMALL) -> dict[str, list[int]]:
    return await engine.kv_positions(role)


async def wait_back_to(engine, before: dict[str, list[int]], role: Role = Role.SMALL) -> None:
    """Every sequence id holds what it held before the test (resident prefixes of earlier tests stay)."""
    def settled(now: dict[str, list[int]]) -> bool:  # each id as before, or emptied (late cleanup)
        return all(a == b or a == -1 for ctx in now for a, b in zip(now[ctx], before[ctx], strict=True))

    async with asyncio.timeout(20):
        while engine.stats().slots_busy or not settled(await kv_now(engine, role)):
            await asyncio.sleep(0.05)
