"""Test harness: async tests without plugins, on asyncio and on uvloop, and the real-model fixtures.

An `async def test_...` runs in a fresh event loop. Unit tests run once per loop kind (asyncio and
uvloop, the server's loop); integration tests run on uvloop only, since they cost model time.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

LOOP_KINDS = ("asyncio", "uvloop")


def _loop_factory(kind: str):
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if inspect.iscoroutinefunction(metafunc.function):
        integration = "integration" in Path(str(metafunc.definition.fspath)).parts
        metafunc.fixturenames.append("loop_kind")
        metafunc.parametrize("loop_kind", ("uvloop",) if integration else LOOP_KINDS)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    kind = pyfuncitem.funcargs.get("loop_kind", "asyncio")
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names if name in pyfuncitem.funcargs}
    with asyncio.Runner(loop_factory=_loop_factory(kind)) as runner:
        runner.run(func(**kwargs))
    return True


# --- real models -------------------------------------------------------------------------------


def small_model_path() -> Path:
    """The small default model, fetched by `make test` (or ESPALIER_TEST_MODEL, any GGUF)."""
    from service.engine.models import resolve_model

    return resolve_model(os.environ.get("ESPALIER_TEST_MODEL", "small"))


@pytest.fixture(scope="session")
def small_model() -> Path:
    return small_model_path()


@pytest.fixture(scope="session")
def small_engine(small_model: Path) -> Iterator[object]:
    """An engine with only the small role loaded, shared by the integration tests of a session."""
    from service.engine.config import ContextConfig, EngineConfig
    from service.engine.llama_engine import LlamaEngine

    cfg = EngineConfig(small=ContextConfig(model=str(small_model), slots=4, n_ctx=4096, n_batch=256,
                                           threads=2))
    engine = asyncio.run(LlamaEngine.load(cfg))
    yield engine
    asyncio.run(engine.aclose())
