"""The Node.js client (clients/node) against a real server on port 0 with the small model.

Runs clients/node's own `node --test` suite with ESPALIER_TARGET pointing at the server, so the
JavaScript checks (Plan + Expand round trip, INVALID_ARGUMENT, deadlines, the shared token, the
example's output) run against the real thing. The round-trip tests skip themselves without a
target, so a skip here means the wiring is broken: it fails this test.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest
from real_server import TOKEN, run, serving

pytestmark = pytest.mark.model

NODE_DIR = Path(__file__).resolve().parents[3] / "clients" / "node"


def _missing_tools() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (Debian: apt-get install nodejs npm)"
    if not (NODE_DIR / "node_modules").is_dir() and shutil.which("npm") is None:
        return "npm is not installed, so clients/node's dependencies cannot be installed"
    return None


def _tap_count(output: str, name: str) -> int:
    found = re.search(rf"^# {name} (\d+)$", output, re.MULTILINE)
    assert found, f"no '# {name}' line in node's TAP output:\n{output}"
    return int(found.group(1))


@pytest.mark.skipif(_missing_tools() is not None, reason=_missing_tools() or "")
@pytest.mark.timeout(600)
async def test_node_client_suite_passes_against_a_real_server(small_engine) -> None:
    async with asyncio.timeout(540):
        if not (NODE_DIR / "node_modules").is_dir():  # `make test` runs `make node` first; this is for a bare pytest
            code, out = await run("npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", cwd=NODE_DIR)
            assert code == 0, f"npm ci failed:\n{out}"
        async with serving(small_engine) as target:
            env = {**os.environ, "ESPALIER_TARGET": target, "ESPALIER_TOKEN": TOKEN}
            code, out = await run("node", "--test", "--test-reporter=tap", cwd=NODE_DIR, env=env)
    assert code == 0, out
    assert _tap_count(out, "fail") == 0 and _tap_count(out, "skipped") == 0, out
    assert _tap_count(out, "pass") == _tap_count(out, "tests"), out
    assert re.search(r"^ok \d+ - Plan then Expand", out, re.MULTILINE), out  # the round trip itself ran
