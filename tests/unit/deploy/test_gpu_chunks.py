"""deploy/gpu/chunks.py: a file split into checked parts and joined back, refusing anything that does not match."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("chunks", Path(__file__).resolve().parents[3] / "deploy" / "gpu" / "chunks.py")
assert _SPEC is not None and _SPEC.loader is not None
chunks = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(chunks)


def _file(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(os.urandom(size))
    return path


def test_split_then_join_gives_the_same_bytes_in_parts_under_the_limit(tmp_path: Path) -> None:
    source = _file(tmp_path, 10_000)
    manifest_path = chunks.split(source, tmp_path / "parts", max_mib=3000 / chunks.MIB)
    manifest = json.loads(manifest_path.read_text())
    assert [p["size"] for p in manifest["parts"]] == [3000, 3000, 3000, 1000]
    assert all((tmp_path / "parts" / p["name"]).stat().st_size <= 3000 for p in manifest["parts"])
    joined = chunks.join(manifest_path, tmp_path / "out")
    assert joined.read_bytes() == source.read_bytes() and joined.name == "model.gguf"
    assert chunks.join(manifest_path, tmp_path / "out") == joined  # joining again finds it whole
    assert chunks.main(["check", str(manifest_path)]) == 0


def test_a_missing_short_or_corrupt_part_is_named_and_no_file_is_left(tmp_path: Path) -> None:
    source = _file(tmp_path, 5000)
    manifest_path = chunks.split(source, tmp_path / "parts", max_mib=2000 / chunks.MIB)
    part = tmp_path / "parts" / "model.gguf.part001"
    data = part.read_bytes()
    part.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped
    with pytest.raises(chunks.ChunkError, match="part001: sha256"):
        chunks.join(manifest_path, tmp_path / "out")
    part.write_bytes(data[:100])
    with pytest.raises(chunks.ChunkError, match="part001: 100 bytes"):
        chunks.check(manifest_path)
    part.unlink()
    assert chunks.main(["join", str(manifest_path), str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out" / "model.gguf").exists()


def test_a_whole_that_does_not_match_its_manifest_is_refused(tmp_path: Path) -> None:
    manifest_path = chunks.split(_file(tmp_path, 4000), tmp_path / "parts", max_mib=1500 / chunks.MIB)
    manifest = json.loads(manifest_path.read_text())
    manifest["sha256"] = "0" * 64  # parts intact, the whole's checksum wrong
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(chunks.ChunkError, match="joined file's sha256"):
        chunks.join(manifest_path, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # the partial file is removed


@pytest.mark.parametrize("script", ["prepare.sh", "gpu-check.sh"])
def test_the_gpu_scripts_parse(script: str) -> None:
    import subprocess

    path = Path(__file__).resolve().parents[3] / "deploy" / "gpu" / script
    assert os.access(path, os.X_OK)
    assert subprocess.run(["bash", "-n", str(path)], check=False, capture_output=True).returncode == 0
