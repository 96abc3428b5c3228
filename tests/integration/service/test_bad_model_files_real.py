"""A model file that is missing, not a GGUF, or cut short: `espalier serve` says so in one clear error
line naming the file, exits with 1, and prints no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model


def serve_with(model: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "espalier.service.cli", "serve", "--port", "0", "--metrics-port", "-1", "--small-only",
         "--small-model", str(model)],
        check=False, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


@pytest.mark.parametrize("kind", ["missing", "not a GGUF", "cut short"])
def test_a_bad_model_file_is_one_clear_error_and_exit_code_1(kind: str, small_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    if kind == "not a GGUF":
        model.write_bytes(b"\x00" * 4096)
    elif kind == "cut short":
        with open(small_model, "rb") as src:
            model.write_bytes(src.read(20_000_000))  # the header and part of the weights
    done = serve_with(model)
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert done.returncode == 1, done.stderr[-2000:]
    assert len(errors) == 1 and "could not load the models" in errors[0] and str(model) in errors[0], errors
    assert "Traceback" not in done.stderr
