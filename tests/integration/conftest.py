"""Integration tests cost model time: each runs once, on uvloop (the server's event loop)."""

from __future__ import annotations

import pytest
from event_loops import BACKENDS


@pytest.fixture(params=[pytest.param(BACKENDS["uvloop"], id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return request.param
