"""The API contract: generated stubs are fresh, and the proto passes `buf lint` (STANDARD)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
GENERATED = ("espalier_pb2.py", "espalier_pb2.pyi", "espalier_pb2_grpc.py")


def test_generated_python_stubs_are_fresh(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"--python_out={tmp_path}",
           f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(PROTOS / "espalier/v1/espalier.proto")]
    subprocess.run(cmd, check=True, capture_output=True)
    for name in GENERATED:
        fresh = (tmp_path / "espalier/v1" / name).read_text()
        checked_in = (PROTOS / "espalier/v1" / name).read_text()
        assert fresh == checked_in, f"protos/espalier/v1/{name} is stale: run `make protos`"


def _buf() -> str | None:
    local = ROOT / ".tools/node_modules/.bin/buf"
    return str(local) if local.exists() else shutil.which("buf")


@pytest.mark.skipif(_buf() is None, reason="buf is not installed (make test installs it when npm is present)")
def test_proto_passes_buf_lint_standard() -> None:
    buf = _buf()
    assert buf is not None
    result = subprocess.run([buf, "lint"], cwd=PROTOS, capture_output=True, text=True, check=False,
                            env={**os.environ, "BUF_CACHE_DIR": str(ROOT / ".tools/buf-cache")})
    assert result.returncode == 0, result.stdout + result.stderr
