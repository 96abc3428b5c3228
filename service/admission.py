"""Admission control: a bounded number of requests in flight and a bounded, fair queue behind them.

Owns `Admission` (an async context manager per request: `async with admission.slot(): ...`) and its
frozen `AdmissionStats` snapshot. Past max_in_flight running and max_waiting queued, a request is
refused at once with errors.Overloaded (RESOURCE_EXHAUSTED) carrying a retry estimate, instead of
piling up behind work it would only time out on. Waiters are served first come, first served; a
waiter that is cancelled (client gone, deadline) leaves the queue, and a slot handed to a waiter
that was cancelled at the same moment is passed on, never lost. Single event loop, no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from espalier.service.errors import NotServing, Overloaded

MAX_RETRY_AFTER_MS = 30_000


@dataclass(frozen=True, slots=True)
class AdmissionStats:
    in_flight: int
    waiting: int
    max_in_flight: int
    max_waiting: int
    admitted: int  # requests that got a slot, since start
    rejected: int  # requests refused because the queue was full, since start

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and self.waiting == 0


class Admission:
    def __init__(self, max_in_flight: int, max_waiting: int, *, name: str = "requests",
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_in_flight < 1 or max_waiting < 0:
            raise ValueError("max_in_flight must be >= 1 and max_waiting >= 0")
        self.max_in_flight = max_in_flight
        self.max_waiting = max_waiting
        self.name = name
        self._clock = clock
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._admitted = 0
        self._rejected = 0
        self._closed = False
        self._mean_hold_s = 1.0  # moving average of how long a slot is held; seeds the retry hint

    def stats(self) -> AdmissionStats:
        return AdmissionStats(self._in_flight, len(self._waiters), self.max_in_flight, self.max_waiting,
                              self._admitted, self._rejected)

    def close(self) -> None:
        """Refuse new requests (draining); those already admitted or waiting carry on."""
        self._closed = True

    def retry_after_ms(self) -> int:
        """A rough estimate of when a slot frees: one mean hold per full round of the queue ahead."""
        rounds = math.ceil((len(self._waiters) + 1) / self.max_in_flight)
        return min(MAX_RETRY_AFTER_MS, max(100, int(self._mean_hold_s * 1000 * rounds)))

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one in-flight slot for the body; raises Overloaded when the queue is full."""
        await self._acquire()
        started = self._clock()
        try:
            yield
        finally:
            held = self._clock() - started
            self._mean_hold_s = 0.8 * self._mean_hold_s + 0.2 * held
            self._release()

    async def _acquire(self) -> None:
        if self._closed:
            raise NotServing("the server is shutting down")
        if self._in_flight < self.max_in_flight and not self._waiters:
            self._in_flight += 1
            self._admitted += 1
            return
        if len(self._waiters) >= self.max_waiting:
            self._rejected += 1
            raise Overloaded(f"{self._in_flight} {self.name} in flight and {len(self._waiters)} waiting "
                             f"(limits {self.max_in_flight} and {self.max_waiting})",
                             retry_after_ms=self.retry_after_ms())
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed to us as we were cancelled: pass it on
            elif waiter in self._waiters:  # _release may already have skipped and dropped it
                self._waiters.remove(waiter)
            raise
        self._admitted += 1

    def _release(self) -> None:
        # Hand the slot straight to the first live waiter (in_flight stays the same), so a newcomer
        # can never overtake the queue.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_flight -= 1
