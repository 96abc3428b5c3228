"""How many of one answer's parts decode at once: as many as the engine has room for, read as they start.

Owns `SlotShare`, one per answer and model role. An answer may run up to settings.max_concurrency
parts at once, but not more than the engine's free slots: past them its parts would only queue in the
engine behind other requests' parts. The room used to be read once, when the plan arrived, so an
answer planned while the engine was full ran its points one at a time to the end while slots freed
by finished answers stood idle (under load, half the slots). Now it is read again whenever a part
wants to start, at most every `poll_s` (the engine's count is a hint published by its worker thread
after each step, so reading it faster would only count the same free slot twice). One part may
always run, so every answer makes progress. This answer's own parts hand their slot on as they end.
"""

from __future__ import annotations

import asyncio
import contextlib

from espalier.planner.engine import Engine, Role

POLL_S = 0.1


class SlotShare:
    def __init__(self, engine: Engine, role: Role, cap: int, poll_s: float = POLL_S) -> None:
        self._engine = engine
        self._role = role
        self._cap = max(1, cap)
        self._poll_s = poll_s
        self._running = 0
        self._room = engine.free_slots(role)  # slots this answer may still take without reading again
        self._read_at = asyncio.get_running_loop().time()
        self._changed = asyncio.Event()

    async def __aenter__(self) -> None:
        """Wait for one of this answer's decoding places (used as `async with share:`, like a semaphore)."""
        while not self._take():
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._poll_s)

    async def __aexit__(self, *exc_info: object) -> None:
        self._running -= 1
        self._room += 1  # the slot this part held is free again
        self._changed.set()

    def _take(self) -> bool:
        if self._running >= self._cap:
            return False
        now = asyncio.get_running_loop().time()
        if self._room <= 0 and now - self._read_at >= self._poll_s:
            self._room = self._engine.free_slots(self._role)
            self._read_at = now
        if self._running > 0 and self._room <= 0:
            return False
        self._running += 1
        self._room -= 1
        return True
