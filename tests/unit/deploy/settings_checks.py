"""deploy/ as Espalier's own settings loader sees it.

Owns the bridge between the deployment files and espalier.service.settings: which ESPALIER_* names are
real settings, and the settings a container ends up with from its image's ENV, its own
environment and the TOML file mounted for it, loaded by `load_settings` itself (the same code the
server runs), so a file the server would refuse fails here first.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from espalier.service.settings import CONFIG_ENV, ServerSettings, load_settings, options

KNOWN_ENV = frozenset({opt.env for opt in options()} | {CONFIG_ENV})
ENV_TO_KEY = {opt.env: opt.key for opt in options()}

# Environment names a manifest may use before the setting exists (none now: the remote engine's
# ESPALIER_REMOTE_* settings are real).
PENDING_ENV: frozenset[str] = frozenset()


def settings_for(environ: Mapping[str, str], config_text: str | None, tmp: Path) -> ServerSettings:
    """What `espalier serve` (no flags) would run with, given its environment and the text of the
    file ESPALIER_CONFIG names (written to `tmp`, since the loader reads a path)."""
    env = dict(environ)
    env.pop(CONFIG_ENV, None)
    if config_text is not None:
        path = tmp / "espalier.toml"
        path.write_text(config_text, encoding="utf-8")
        env[CONFIG_ENV] = str(path)
    return load_settings([], env)


def toml_keys(text: str) -> set[str]:
    """The dotted keys a TOML document sets (`large.slots`, `grace_s`)."""
    found: set[str] = set()

    def visit(prefix: str, table: Mapping[str, Any]) -> None:
        for name, value in table.items():
            if isinstance(value, dict):
                visit(f"{prefix}{name}.", value)
            else:
                found.add(f"{prefix}{name}")

    visit("", tomllib.loads(text))
    return found
