"""What a real engine holds, for integration tests that check an answer left nothing behind."""

from __future__ import annotations

import asyncio

from espalier.planner.engine import Role


async def kv_now(engine, role: Role = Role.SMALL) -> dict[str, list[int]]:
    """What each sequence id holds once the engine is idle: no slot busy and two reads alike, so that a
    prefix an earlier test released and the engine is still clearing does not count as this test's."""
    async with asyncio.timeout(20):
        last = None
        while True:
            now = await engine.kv_positions(role)
            if not engine.stats().slots_busy and now == last:
                return now
            last = now
            await asyncio.sleep(0.05)


async def wait_back_to(engine, before: dict[str, list[int]], role: Role = Role.SMALL) -> None:
    """Every sequence id holds exactly what it held before the test (resident prefixes stay as they were;
    a sequence the test left behind, or a resident one it emptied, fails by timeout)."""
    async with asyncio.timeout(20):
        while engine.stats().slots_busy or await engine.kv_positions(role) != before:
            await asyncio.sleep(0.05)
