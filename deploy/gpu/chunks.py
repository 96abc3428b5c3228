#!/usr/bin/env python3
"""Files in parts small enough to carry, and back, checked by sha256 (standard library only).

A GPU box that takes at most 64 MiB per transfer gets each large file (a model, the llama.cpp source)
as parts of under 60 MiB beside a manifest that names every part with its size and sha256 and the
whole file's; `join` rebuilds the file from them, checks every part and then the whole, and only then
puts it in place (an interrupted or corrupt transfer leaves no file that looks complete).

    chunks.py split FILE OUTDIR [--max-mib 60]   -> OUTDIR/NAME.part000, ..., OUTDIR/NAME.manifest.json
    chunks.py join MANIFEST OUTDIR                -> OUTDIR/NAME (exit 1 naming the part that does not match)
    chunks.py check MANIFEST                      -> exit 0 when every part is present and matches
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

MIB = 1024 * 1024
BLOCK = 4 * MIB


class ChunkError(Exception):
    """A part or the whole file is missing, short or does not match its sha256."""


# The same hashing loop as espalier.service.engine.models._sha256_file, written again on purpose: this script runs
# on the GPU box with the system Python before Espalier (or any environment) is installed there.
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def split(path: Path, out: Path, max_mib: float = 60.0) -> Path:
    """Write path's parts and its manifest into out; returns the manifest's path."""
    limit = int(max_mib * MIB)
    if limit < 1:
        raise ChunkError("a part must hold at least one byte")
    out.mkdir(parents=True, exist_ok=True)
    whole = hashlib.sha256()
    parts = []
    with open(path, "rb") as src:
        index = 0
        while True:
            name = f"{path.name}.part{index:03d}"
            digest, size = hashlib.sha256(), 0
            with open(out / name, "wb") as dst:
                while size < limit and (block := src.read(min(BLOCK, limit - size))):
                    dst.write(block)
                    digest.update(block)
                    whole.update(block)
                    size += len(block)
            if size == 0:
                (out / name).unlink()
                break
            parts.append({"name": name, "size": size, "sha256": digest.hexdigest()})
            index += 1
    manifest = {"name": path.name, "size": sum(p["size"] for p in parts), "sha256": whole.hexdigest(),
                "parts": parts}
    target = out / f"{path.name}.manifest.json"
    target.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return target


def check(manifest_path: Path) -> dict:
    """The manifest, once every part beside it is present with its size and sha256."""
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    folder = manifest_path.parent
    for part in manifest["parts"]:
        p = folder / part["name"]
        if not p.is_file():
            raise ChunkError(f"{part['name']}: missing")
        if p.stat().st_size != part["size"]:
            raise ChunkError(f"{part['name']}: {p.stat().st_size} bytes, the manifest says {part['size']}")
        if _sha256(p) != part["sha256"]:
            raise ChunkError(f"{part['name']}: sha256 does not match")
    return manifest


def join(manifest_path: Path, out: Path) -> Path:
    """Rebuild the file into out from checked parts; the whole is checked before it takes its name."""
    manifest = check(manifest_path)
    out.mkdir(parents=True, exist_ok=True)
    target = out / manifest["name"]
    if target.is_file() and target.stat().st_size == manifest["size"] and _sha256(target) == manifest["sha256"]:
        return target  # already there and whole
    partial = out / f".{manifest['name']}.joining"
    whole = hashlib.sha256()
    with open(partial, "wb") as dst:
        for part in manifest["parts"]:
            with open(manifest_path.parent / part["name"], "rb") as src:
                while block := src.read(BLOCK):
                    dst.write(block)
                    whole.update(block)
    if whole.hexdigest() != manifest["sha256"]:
        partial.unlink()
        raise ChunkError(f"{manifest['name']}: the joined file's sha256 does not match the manifest")
    os.replace(partial, target)
    return target


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="chunks.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("split", help="a file into parts and a manifest")
    s.add_argument("file", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--max-mib", type=float, default=60.0, help="largest part in MiB (default 60)")
    j = sub.add_parser("join", help="a manifest's parts back into the file, checked")
    j.add_argument("manifest", type=Path)
    j.add_argument("out", type=Path)
    c = sub.add_parser("check", help="every part of a manifest present and matching")
    c.add_argument("manifest", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.what == "split":
            manifest = split(args.file, args.out, args.max_mib)
            print(f"{args.file.name}: {len(json.loads(manifest.read_text())['parts'])} part(s), manifest {manifest}")
        elif args.what == "join":
            print(f"joined and checked: {join(args.manifest, args.out)}")
        else:
            manifest = check(args.manifest)
            print(f"{manifest['name']}: all {len(manifest['parts'])} part(s) present and matching")
    except (ChunkError, OSError, KeyError, ValueError) as exc:
        print(f"chunks.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
