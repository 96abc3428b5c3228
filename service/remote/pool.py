"""The servers of one remote role: which one takes the next request, and which ones are failing.

Owns the choice (least outstanding requests, ties taken in turn so equal servers share the load),
the outstanding count per server, and ejection: a server that refused or failed a request before
its first token is passed over for `eject_s`, doubling with each further failure in a row (at most
`max_eject_s`), and forgiven by its next success. An ejected server is still chosen as a last resort
when every other one is ejected or already tried: trying it beats failing without trying.

A plain state machine with an injectable clock: no I/O, tested without a network.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass


@dataclass(eq=False, slots=True)
class Endpoint:
    """One server and what the pool knows about it."""

    url: str
    outstanding: int = 0  # requests sent and not yet finished
    failures: int = 0  # failures in a row; 0 once it succeeds
    ejected_until: float = 0.0  # clock time before which it is passed over
    requests: int = 0
    errors: int = 0

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until


class UrlPool:
    def __init__(self, urls: Sequence[str], *, eject_s: float = 5.0, max_eject_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not urls:
            raise ValueError("a pool needs at least one URL")
        self.endpoints = tuple(Endpoint(url) for url in urls)
        self._eject_s = eject_s
        self._max_eject_s = max(max_eject_s, eject_s)
        self._clock = clock
        self._turn = 0  # where the search for a tie starts: round robin among equally loaded servers

    def acquire(self, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        """Choose a server not in `exclude` and count a request on it; None when every one is excluded."""
        now = self._clock()
        n = len(self.endpoints)
        order = [self.endpoints[(self._turn + i) % n] for i in range(n)]
        candidates = [e for e in order if e not in exclude]
        if not candidates:
            return None
        healthy = [e for e in candidates if not e.ejected(now)]
        if healthy:
            chosen = min(healthy, key=lambda e: e.outstanding)  # min keeps the first of equals: the turn order
        else:
            chosen = min(candidates, key=lambda e: e.ejected_until)  # the one that comes back soonest
        self._turn = (self.endpoints.index(chosen) + 1) % n
        chosen.outstanding += 1
        chosen.requests += 1
        return chosen

    def release(self, endpoint: Endpoint) -> None:
        endpoint.outstanding -= 1

    def succeeded(self, endpoint: Endpoint) -> None:
        endpoint.failures = 0
        endpoint.ejected_until = 0.0

    def failed(self, endpoint: Endpoint) -> None:
        """The server failed a request in a way that says something about the server: pass it over a while."""
        endpoint.failures += 1
        endpoint.errors += 1
        hold = min(self._max_eject_s, self._eject_s * 2 ** min(endpoint.failures - 1, 16))
        endpoint.ejected_until = self._clock() + hold

    @property
    def outstanding(self) -> int:
        return sum(e.outstanding for e in self.endpoints)

    def healthy(self) -> int:
        now = self._clock()
        return sum(not e.ejected(now) for e in self.endpoints)
