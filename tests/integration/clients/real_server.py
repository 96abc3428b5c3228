"""Shared by the other-language client tests: a real server on port 0 and a subprocess runner.

The clients under test are separate programs (node, a Go binary), so the server runs in the test's
event loop while the program runs as a child process that talks to it over loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from espalier.planner.engine import Engine
from espalier.planner.settings import PlannerSettings
from espalier.service.server import build
from espalier.service.settings import ServerSettings

TOKEN = "other-language-client-test-token"
# Short outputs: the small model on 2 CPU cores.
PLANNER = PlannerSettings(point_max_tokens=12, skeleton_max_tokens=48, direct_max_tokens=16, max_nodes=4)
CONFIG = ServerSettings(port=0, metrics_port=-1, small_only=True, planner=PLANNER, auth_token=TOKEN)


@asynccontextmanager
async def serving(engine: Engine, settings: ServerSettings = CONFIG) -> AsyncIterator[str]:
    """A serving server; yields its address."""
    parts = await build(settings, engine)
    await parts.set_serving(True)
    await parts.server.start()
    try:
        yield f"127.0.0.1:{parts.port}"
    finally:
        await parts.server.stop(0)


async def run(*cmd: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Exit status and combined output of a command (killed if the caller's timeout cancels it)."""
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")
