"""Test harness: async tests through anyio's pytest plugin, on asyncio and on uvloop, and the real-model fixtures.

anyio's plugin runs every `async def test_...` (anyio_mode = auto in pyproject.toml) in a fresh event
loop of the `anyio_backend` fixture's kind: unit tests once per loop kind (asyncio, and uvloop, the
server's loop); integration tests on uvloop only (tests/integration/conftest.py), since they cost
model time.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from event_loops import BACKENDS


@pytest.fixture(params=[pytest.param(backend, id=kind) for kind, backend in BACKENDS.items()])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return request.param


# --- real models -------------------------------------------------------------------------------


def small_model_path() -> Path:
    """The small default model, fetched by `make test` (or ESPALIER_TEST_MODEL, any GGUF)."""
    from espalier.service.engine.models import resolve_model

    return resolve_model(os.environ.get("ESPALIER_TEST_MODEL", "small"))


@pytest.fixture(scope="session")
def small_model() -> Path:
    return small_model_path()


@pytest.fixture(scope="session")
def small_engine(small_model: Path) -> Iterator[object]:
    """An engine with only the small role loaded, shared by the integration tests of a session."""
    from espalier.service.engine.config import ContextConfig, EngineConfig
    from espalier.service.engine.llama_engine import LlamaEngine

    cfg = EngineConfig(small=ContextConfig(model=str(small_model), slots=4, n_ctx=4096, n_batch=256,
                                           threads=2))
    engine = asyncio.run(LlamaEngine.load(cfg))
    yield engine
    asyncio.run(engine.aclose())
