"""Dependencies point one way (DESIGN.md): planner is pure, only the engine touches llama.cpp,
clients speak only through the generated stubs, and nothing imports the service from outside."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _unit(module: str) -> str:
    """What an import reaches: espalier.<folder> is that folder, other espalier.* the generated API code
    ("espalier"), anything else its top-level package."""
    parts = module.split(".")
    if parts[0] == "espalier" and len(parts) > 1 and parts[1] in ("planner", "service", "clients"):
        return parts[1]
    return parts[0]


def imported_modules(folder: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / folder).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(_unit(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(_unit(node.module))
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(("folder", "forbidden"), [
    ("planner", {"grpc", "llama_cpp", "service", "clients", "espalier"}),
    ("clients", {"llama_cpp", "service", "planner"}),
])
def test_package_does_not_import(folder: str, forbidden: set[str]) -> None:
    bad = {path: sorted(names & forbidden) for path, names in imported_modules(folder).items() if names & forbidden}
    assert not bad, f"{folder} must not import {sorted(forbidden)}: {bad}"


def test_only_the_engine_imports_llama_cpp() -> None:
    users = [p for p, names in imported_modules("service").items() if "llama_cpp" in names]
    assert users and all(p.startswith("service/engine/") for p in users), users
