"""espalier.service.admission: bounded in-flight and waiting, FIFO, cancellation-safe, RESOURCE_EXHAUSTED past it."""

from __future__ import annotations

import asyncio

import pytest

from espalier.service.admission import Admission, AdmissionStats
from espalier.service.errors import NotServing, Overloaded


async def _hold(adm: Admission, started: list[int], release: asyncio.Event, n: int) -> None:
    async with adm.slot():
        started.append(n)
        await release.wait()


async def test_runs_up_to_the_limit_queues_the_rest_and_refuses_past_it() -> None:
    adm = Admission(2, 2)
    release = asyncio.Event()
    started: list[int] = []
    async with asyncio.timeout(5):
        tasks = [asyncio.create_task(_hold(adm, started, release, i)) for i in range(4)]
        await asyncio.sleep(0.01)
        assert sorted(started) == [0, 1]
        assert adm.stats() == AdmissionStats(2, 2, 2, 2, 2, 0)
        with pytest.raises(Overloaded) as info:
            async with adm.slot():
                pass
        assert 100 <= info.value.retry_after_ms <= 30_000
        assert adm.stats().rejected == 1
        release.set()
        await asyncio.gather(*tasks)
    assert started[2:] == [2, 3]  # first come, first served
    assert adm.stats().idle and adm.stats().admitted == 4


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    adm = Admission(1, 1)
    release = asyncio.Event()
    started: list[int] = []
    async with asyncio.timeout(5):
        first = asyncio.create_task(_hold(adm, started, release, 0))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(_hold(adm, started, release, 1))
        await asyncio.sleep(0.01)
        assert adm.stats().waiting == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert adm.stats().waiting == 0
        release.set()
        await first
    assert started == [0] and adm.stats().idle


async def test_a_slot_handed_to_a_waiter_cancelled_at_that_moment_is_passed_on() -> None:
    adm = Admission(1, 2)
    release = asyncio.Event()
    started: list[int] = []
    tasks: dict[str, asyncio.Task[None]] = {}

    async def first() -> None:
        async with adm.slot():
            started.append(0)
            await release.wait()
        tasks["second"].cancel()  # in the same step as the hand-over, before `second` can run

    async with asyncio.timeout(5):
        tasks["first"] = asyncio.create_task(first())
        await asyncio.sleep(0)
        tasks["second"] = asyncio.create_task(_hold(adm, started, release, 1))
        tasks["third"] = asyncio.create_task(_hold(adm, started, release, 2))
        await asyncio.sleep(0.01)
        assert adm.stats().waiting == 2
        release.set()
        await tasks["first"]
        with pytest.raises(asyncio.CancelledError):
            await tasks["second"]
        await tasks["third"]
    assert started == [0, 2] and adm.stats().idle


async def test_an_error_in_the_body_frees_the_slot() -> None:
    adm = Admission(1, 0)
    with pytest.raises(ValueError):
        async with adm.slot():
            raise ValueError
    assert adm.stats().idle


async def test_closed_admission_refuses_as_not_serving() -> None:
    adm = Admission(1, 0)
    adm.close()
    with pytest.raises(NotServing):
        async with adm.slot():
            pass


def test_stats_are_a_frozen_snapshot() -> None:
    adm = Admission(3, 4)
    stats = adm.stats()
    with pytest.raises(AttributeError):
        stats.in_flight = 5  # type: ignore[misc]
    with pytest.raises(ValueError):
        Admission(0, 1)
