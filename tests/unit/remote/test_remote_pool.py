"""espalier.service.remote.pool: least outstanding requests, turns among equals, ejection and its end."""

from __future__ import annotations

import pytest

from espalier.service.remote.pool import UrlPool


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pool(n: int = 3, **kw: float) -> tuple[UrlPool, Clock]:
    clock = Clock()
    return UrlPool([f"http://s{i}/v1" for i in range(n)], clock=clock, **kw), clock


def test_least_outstanding_wins_and_equals_take_turns() -> None:
    p, _ = pool(3)
    picks = [p.acquire() for _ in range(6)]
    assert [e.url[7:9] for e in picks if e] == ["s0", "s1", "s2", "s0", "s1", "s2"]
    assert [e.outstanding for e in p.endpoints] == [2, 2, 2]
    s1 = p.endpoints[1]
    p.release(s1)
    p.release(s1)  # s1 finished both of its requests: it is the least loaded now
    assert p.acquire() is s1 and p.acquire() is s1
    assert p.outstanding == 6


def test_turns_spread_sequential_requests() -> None:
    p, _ = pool(2)
    seen = []
    for _ in range(4):
        e = p.acquire()
        assert e is not None
        seen.append(e.url)
        p.release(e)
    assert seen == ["http://s0/v1", "http://s1/v1"] * 2


def test_exclude_and_nothing_left() -> None:
    p, _ = pool(2)
    a = p.acquire()
    assert a is not None
    b = p.acquire([a])
    assert b is not None and a is not b
    assert p.acquire([a, b]) is None
    assert p.endpoints[0].outstanding + p.endpoints[1].outstanding == 2  # a refused acquire counts nothing


def test_failed_server_is_passed_over_until_its_time_is_up_then_doubles() -> None:
    p, clock = pool(2, eject_s=5.0, max_eject_s=12.0)
    s0, s1 = p.endpoints
    p.failed(s0)
    assert s0.ejected(clock.now) and p.healthy() == 1
    for _ in range(3):
        e = p.acquire()
        assert e is s1
        p.release(e)
    clock.now += 5.0
    assert not s0.ejected(clock.now)
    p.failed(s0)
    assert s0.ejected_until == pytest.approx(clock.now + 10.0)  # second failure in a row: twice as long
    p.failed(s0)
    assert s0.ejected_until == pytest.approx(clock.now + 12.0)  # capped
    p.succeeded(s0)
    assert not s0.ejected(clock.now) and s0.failures == 0 and s0.errors == 3


def test_ejected_servers_are_still_a_last_resort() -> None:
    p, clock = pool(2, eject_s=5.0)
    s0, s1 = p.endpoints
    p.failed(s1)
    clock.now += 1
    p.failed(s0)  # s1 comes back first
    assert p.healthy() == 0
    assert p.acquire() is s1
    assert p.acquire([s1]) is s0


def test_an_empty_pool_is_refused() -> None:
    with pytest.raises(ValueError):
        UrlPool([])
