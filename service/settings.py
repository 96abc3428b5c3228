"""Typed settings of the server process, and where they come from.

Owns `ServerSettings` (network, limits, TLS and auth, logging, the two model blocks and the planner's
defaults) and the one loader that fills it from, in rising precedence: defaults, a TOML file,
`ESPALIER_*` environment variables, command-line flags. Every setting is described once, in dataclass
field metadata (help, min/max, choices); the TOML keys, environment names, flags, `--help` text and
error messages are all derived from that, so they cannot drift apart. Planner settings reuse the
metadata of espalier.planner.settings.PlannerSettings, remote servers that of espalier.service.remote.config.

Naming: a setting's key is its dotted path (`port`, `small.slots`, `planner.point_max_tokens`,
`planner.sampling.temperature`); the TOML file nests tables the same way; the environment variable
is ESPALIER_ + the path upper-cased with `_` (ESPALIER_SMALL_SLOTS); the flag is -- + the path with
`-` (--small-slots, --planner-sampling-temperature). A list (remote.large.urls) is a TOML array, and
comma-separated in the environment and on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from espalier.planner.engine import InvalidRequest, Role, Sampling
from espalier.planner.fields import choices_of, expected, field_meta, fits
from espalier.planner.settings import PlannerSettings
from espalier.service.engine.config import ConfigError, ContextConfig, EngineConfig
from espalier.service.remote.config import RemoteConfig, RemoteConfigError, RemoteRoleConfig

ENV_PREFIX = "ESPALIER_"
CONFIG_ENV = "ESPALIER_CONFIG"


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SettingsError(ValueError):
    """A setting is unknown, malformed, out of range or inconsistent; the message names it and its source."""




# The sampling settings a server sets for every request (max_tokens and stop are set per stage by the
# planner, min_tokens by the point budget); help and bounds are Sampling's own field metadata.
SAMPLING_SETTINGS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed")

_SMALL_ONLY_ROLES = ("skeleton_role", "router_role", "easy_role", "hard_role", "direct_role")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything `espalier serve` can be told. Call validate() once at start-up."""

    host: str = field(default="127.0.0.1", metadata=field_meta(
        "address to listen on (localhost unless told otherwise; 0.0.0.0 or :: for all interfaces)"))
    port: int = field(default=50051, metadata=field_meta("gRPC port; 0 = any free port", 0, 65535))
    metrics_host: str = field(default="127.0.0.1", metadata=field_meta("address of the Prometheus /metrics endpoint"))
    metrics_port: int = field(default=9464, metadata=field_meta(
        "port of the Prometheus /metrics endpoint; 0 = any free port, -1 = off", -1, 65535))
    # 8, not 4: under 16 clients on 2 CPU cores (bench load, deploy/README.md) direct answers per minute
    # rose by a third and every mode's first token came sooner; skeleton answers held their rate.
    max_in_flight: int = field(default=8, metadata=field_meta(
        "requests planned or expanded at once (each may use several engine slots)", 1, 1024))
    max_waiting: int = field(default=16, metadata=field_meta(
        "requests waiting for their turn; past this RESOURCE_EXHAUSTED with a retry hint", 0, 100_000))
    max_streams: int = field(default=64, metadata=field_meta(
        "Stream calls whose prompt is still arriving; past this RESOURCE_EXHAUSTED", 1, 100_000))
    max_request_s: float = field(default=600.0, metadata=field_meta(
        "longest a request may plan and expand, in seconds (client deadlines still apply); 0 = no limit",
        0, 86_400))
    grace_s: float = field(default=10.0, metadata=field_meta(
        "on SIGTERM/SIGINT, seconds in-flight requests get to finish before they are cancelled", 0, 3600))
    max_message_bytes: int = field(default=4 * 1024 * 1024, metadata=field_meta(
        "largest gRPC message received or sent, in bytes", 1024, 256 * 1024 * 1024))
    max_question_chars: int = field(default=8000, metadata=field_meta(
        "longest question or streamed prompt, in characters", 1, 1_000_000))
    max_system_chars: int = field(default=8000, metadata=field_meta(
        "most characters of a request's system text (system messages, Stream's open.system); past this "
        "INVALID_ARGUMENT naming the message", 0, 1_000_000))
    max_history_chars: int = field(default=32000, metadata=field_meta(
        "most characters of a request's earlier turns; past this INVALID_ARGUMENT naming the message (within "
        "it the planner keeps the newest turns that fit planner.history_max_chars)", 0, 10_000_000))
    max_tokens: int = field(default=4096, metadata=field_meta(
        "largest token budget a request may ask for (point_max_tokens, answer_max_tokens, a node's max_tokens)",
        1, 32768))
    tls_cert: str = field(default="", metadata=field_meta("PEM server certificate chain; empty = no TLS"))
    tls_key: str = field(default="", metadata=field_meta("PEM private key of tls_cert"))
    tls_client_ca: str = field(default="", metadata=field_meta(
        "PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)"))
    auth_token: str = field(default="", repr=False, metadata=field_meta(
        "when set, every call but health checks needs metadata 'authorization: Bearer <token>' "
        "(prefer the environment or the config file to a flag: flags show in ps)", secret=True))
    small_only: bool = field(default=False, metadata=field_meta(
        "load only the small model and use it for every planner role (tests, small machines)"))
    models_dir: str = field(default="", metadata=field_meta("cache of the default models; empty = the XDG cache"))
    resident_prefixes: bool = field(default=True, metadata=field_meta(
        "prefill the planner's fixed prompt parts once at start-up and fork them per request "
        "(faster requests, slower start)"))
    log_level: str = field(default="info", metadata=field_meta(
        "log level", choices=("debug", "info", "warning", "error")))
    log_format: str = field(default="text", metadata=field_meta(
        "log format: text lines or one JSON object per line", choices=("text", "json")))
    large: ContextConfig = field(default_factory=lambda: ContextConfig(model="large"), metadata=field_meta(
        "the large model (skeletons, hard points, speculation target)"))
    small: ContextConfig = field(default_factory=ContextConfig, metadata=field_meta(
        "the small model (routing, easy points, drafts, tests)"))
    planner: PlannerSettings = field(default_factory=PlannerSettings, metadata=field_meta(
        "planner defaults; a request's GenerationSettings override some per call"))
    remote: RemoteConfig = field(default_factory=RemoteConfig, metadata=field_meta(
        "OpenAI-compatible servers per role; a role with URLs is served by them, not by a local model"))

    def validate(self) -> ServerSettings:
        """Check everything; return a normalised copy (with small_only, every planner role is small)."""
        for opt in options():
            opt.check(opt.get(self), "setting")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("tls_cert and tls_key go together: set both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise SettingsError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise SettingsError(f"{name}: no such file: {path}")
        if self.auth_token and (any(c.isspace() for c in self.auth_token) or not self.auth_token.isprintable()):
            raise SettingsError("auth_token must be printable and contain no spaces")
        if self.metrics_port > 0 and self.metrics_port == self.port and self.metrics_host == self.host:
            raise SettingsError(f"metrics_port and port are both {self.port}: pick two ports")
        out = self
        if self.small_only:
            small: dict[str, Any] = {name: Role.SMALL for name in _SMALL_ONLY_ROLES}
            out = dataclasses.replace(self, planner=dataclasses.replace(self.planner, **small))
        try:
            out.planner.validate()
        except InvalidRequest as exc:
            raise SettingsError(str(exc)) from None
        if out.planner.long_point_max_tokens > out.max_tokens:
            # Plan writes it into a node's budget: a graph the server returns must be one it takes back
            raise SettingsError(f"planner.long_point_max_tokens ({out.planner.long_point_max_tokens}) must not "
                                f"exceed max_tokens ({out.max_tokens})")
        try:
            for role in Role:
                remote = out.remote.large if role is Role.LARGE else out.remote.small
                if remote.enabled:
                    remote.validate(f"remote.{role.value}")
            local = out.engine_config()
            if local.roles() or not out.remote_roles():
                local.validate()
        except (ConfigError, RemoteConfigError) as exc:
            raise SettingsError(str(exc)) from None
        return out

    def remote_roles(self) -> dict[Role, RemoteRoleConfig]:
        """The roles served by remote servers (those with URLs; not large with small_only)."""
        found = {Role.LARGE: self.remote.large, Role.SMALL: self.remote.small}
        return {role: cfg for role, cfg in found.items()
                if cfg.enabled and not (self.small_only and role is Role.LARGE)}

    def engine_config(self) -> EngineConfig:
        """The roles to load locally: both, or the small one alone with small_only, less the remote ones."""
        remote = self.remote_roles()
        large = None if self.small_only or Role.LARGE in remote else self.large
        small = None if Role.SMALL in remote else self.small
        return EngineConfig(large=large, small=small, models_dir=self.models_dir or None)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)


# --- the option table, derived from the dataclasses ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """One leaf setting: where it lives, its type, default and bounds."""

    path: tuple[str, ...]
    kind: type
    default: Any
    help: str
    meta: Mapping[str, Any]  # the field's metadata (espalier.planner.fields.field_meta): bounds, choices, secret

    @property
    def secret(self) -> bool:
        return bool(self.meta.get("secret", False))

    @property
    def lo(self) -> float | None:
        return self.meta.get("min")

    @property
    def key(self) -> str:
        return ".".join(self.path)

    @property
    def env(self) -> str:
        return ENV_PREFIX + "_".join(self.path).upper()

    @property
    def flag(self) -> str:
        return "--" + "-".join(self.path).replace("_", "-")

    @property
    def dest(self) -> str:
        return "__".join(self.path)

    def get(self, settings: ServerSettings) -> Any:
        value: Any = settings
        for name in self.path:
            value = getattr(value, name)
        return value

    def all_choices(self) -> tuple[str, ...]:
        return choices_of(self.kind, self.meta)

    def parse(self, raw: Any, source: str, *, text: bool) -> Any:
        """A TOML value (text=False: its type must fit) or a string from the environment or a flag
        (text=True: converted) as this option's type, checked against its bounds."""
        kind = self.kind
        value: Any = raw
        try:
            if text:
                if not isinstance(raw, str):
                    raise ValueError
                word = raw.strip()
                if kind is bool:
                    if word.lower() not in _TRUE + _FALSE:
                        raise ValueError
                    value = word.lower() in _TRUE
                elif kind is int:
                    value = int(word)
                elif kind is float:
                    value = float(word)
                elif kind is tuple:
                    value = tuple(part.strip() for part in word.split(",") if part.strip())
            elif kind is tuple:
                if not isinstance(raw, list):
                    raise ValueError
                value = tuple(raw)
            elif kind is float and isinstance(raw, int) and not isinstance(raw, bool):
                value = float(raw)  # TOML `grace_s = 2` means 2.0
            if isinstance(kind, type) and issubclass(kind, enum.Enum) and isinstance(value, str):
                value = kind(value.strip().lower()) if value.strip().lower() in self.all_choices() else value
        except ValueError:
            raise SettingsError(f"{self.key} must be {self.describe()} (got {raw!r}, from {source})") from None
        self.check(value, source)
        return value

    def check(self, value: Any, source: str) -> None:
        ok = (isinstance(value, tuple) and all(isinstance(v, str) for v in value) if self.kind is tuple
              else fits(self.kind, value, self.meta))
        if not ok:
            shown = "<hidden>" if self.secret else repr(value)
            raise SettingsError(f"{self.key} must be {self.describe()} (got {shown}, from {source})")

    def describe(self) -> str:
        if self.kind is tuple:
            return "a list of strings (comma-separated in the environment and flags)"
        return expected(self.kind, self.meta)


def _walk(cls: type, prefix: tuple[str, ...], default: Any, out: list[Option]) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        value = getattr(default, f.name)
        path = (*prefix, f.name)
        if kind is Sampling:
            metas = {f.name: f.metadata for f in dataclasses.fields(Sampling)}
            for name in SAMPLING_SETTINGS:
                out.append(_option((*path, name), type(getattr(value, name)), getattr(value, name), metas[name]))
        elif dataclasses.is_dataclass(kind):
            _walk(kind, path, value, out)  # type: ignore[arg-type]
        else:
            out.append(_option(path, kind, value, f.metadata))


def _option(path: tuple[str, ...], kind: type, default: Any, meta: Mapping[str, Any]) -> Option:
    if typing.get_origin(kind) is tuple:
        kind = tuple  # tuple[str, ...]: the only list setting so far (remote URLs)
    return Option(path, kind, default, meta.get("help", ""), meta)


_OPTIONS: tuple[Option, ...] | None = None


def options() -> tuple[Option, ...]:
    """Every leaf setting, in declaration order."""
    global _OPTIONS  # a cache of a pure function of the class definitions, not state
    if _OPTIONS is None:
        found: list[Option] = []
        _walk(ServerSettings, (), ServerSettings(), found)
        _OPTIONS = tuple(found)
    return _OPTIONS


# --- loading --------------------------------------------------------------------------------------


def build_parser(prog: str = "espalier serve") -> argparse.ArgumentParser:
    """Flags for every setting (help, default, bounds and environment name come from the metadata)."""
    parser = argparse.ArgumentParser(
        prog=prog, argument_default=argparse.SUPPRESS,
        description="Run the Espalier gRPC server. Settings come from defaults, then the TOML file "
                    "(--config), then ESPALIER_* environment variables, then these flags (flags win). "
                    "TOML keys nest like the flags: --small-slots is `[small] slots`.")
    parser.add_argument("--config", metavar="FILE", help=f"TOML settings file (env {CONFIG_ENV})")
    parser.add_argument("--print-settings", action="store_true",
                        help="print the effective settings as TOML and exit")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for opt in options():
        section = opt.path[0] if len(opt.path) > 1 else "server"
        group = groups.get(section)
        if group is None:
            title = {"server": "server", "large": "large model", "small": "small model",
                     "remote": "remote servers"}.get(section, section)
            group = groups[section] = parser.add_argument_group(title)
        default = "<hidden>" if opt.secret and opt.default else (opt.default.value if isinstance(
            opt.default, enum.Enum) else opt.default)
        if isinstance(default, tuple):
            default = ",".join(default) or "none"
        details = [f"default {default!r}" if isinstance(default, str) else f"default {default}"]
        if opt.kind in (int, float) and opt.lo is not None:
            details.append(opt.describe())
        details.append(f"env {opt.env}")
        text = f"{opt.help} ({'; '.join(details)})".replace("%", "%%")
        if opt.kind is bool:
            group.add_argument(opt.flag, dest=opt.dest, action=argparse.BooleanOptionalAction, help=text)
        else:
            metavar = "{" + ",".join(opt.all_choices()) + "}" if opt.all_choices() else (
                "N" if opt.kind in (int, float) else "A,B" if opt.kind is tuple else "TEXT")
            group.add_argument(opt.flag, dest=opt.dest, metavar=metavar, help=text)
    return parser


def load_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ServerSettings:
    """Defaults < TOML file < environment < flags; validated. Raises SettingsError naming the setting."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(list(argv))
    return from_flags(vars(args), environ)


def from_flags(flags: Mapping[str, Any], environ: Mapping[str, str]) -> ServerSettings:
    """Settings from parsed flags (vars() of build_parser's namespace), the environment and --config."""
    by_key = {opt.key: opt for opt in options()}
    values: dict[str, Any] = {}
    config = flags.get("config") or environ.get(CONFIG_ENV)
    if config:
        for key, raw in _read_toml(config).items():
            opt = by_key.get(key)
            if opt is None:
                raise SettingsError(f"unknown setting {key!r} in {config}")
            values[key] = opt.parse(raw, f"config file {config}", text=False)
    for opt in options():
        if opt.env in environ:
            values[opt.key] = opt.parse(environ[opt.env], f"environment {opt.env}", text=True)
    for opt in options():
        if opt.dest in flags:
            raw = flags[opt.dest]
            values[opt.key] = raw if opt.kind is bool else opt.parse(raw, f"flag {opt.flag}", text=True)
    return settings_from(values)


def settings_from(values: Mapping[str, Any]) -> ServerSettings:
    """ServerSettings from {dotted key: parsed value}; unset keys keep their defaults. Validated."""
    unknown = set(values) - {opt.key for opt in options()}
    if unknown:
        raise SettingsError(f"unknown setting {min(unknown)!r}")
    return _build(ServerSettings, (), ServerSettings(), values).validate()


def _build(cls: type, prefix: tuple[str, ...], default: Any, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        path = (*prefix, f.name)
        key = ".".join(path)
        current = getattr(default, f.name)
        if kind is Sampling:
            sub = {name: values[f"{key}.{name}"] for name in SAMPLING_SETTINGS if f"{key}.{name}" in values}
            if sub:
                changes[f.name] = dataclasses.replace(current, **sub)
        elif dataclasses.is_dataclass(kind):
            changes[f.name] = _build(kind, path, current, values)  # type: ignore[arg-type]
        elif key in values:
            changes[f.name] = values[key]
    return dataclasses.replace(default, **changes) if changes else default


def _read_toml(path: str) -> dict[str, Any]:
    """The file's leaf values as {dotted key: value}."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError(f"config file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"cannot read config file {path}: {exc}") from None
    flat: dict[str, Any] = {}

    def visit(prefix: str, table: Mapping[str, Any]) -> None:
        for name, value in table.items():
            key = f"{prefix}{name}"
            if isinstance(value, dict):
                visit(f"{key}.", value)
            else:
                flat[key] = value

    visit("", data)
    return flat


def to_toml(settings: ServerSettings) -> str:
    """The effective settings as a TOML document (secrets hidden); loads back with --config."""
    lines: list[str] = []
    section: tuple[str, ...] = ()
    for opt in options():
        table = opt.path[:-1]
        if table != section:
            lines.append(f"\n[{'.'.join(table)}]")
            section = table
        value = opt.get(settings)
        if opt.secret and value:
            lines.append(f"# {opt.path[-1]} = <hidden>")
            continue
        value = value.value if isinstance(value, enum.Enum) else value
        if isinstance(value, bool):
            shown = "true" if value else "false"
        elif isinstance(value, str):
            shown = _toml_string(value)
        elif isinstance(value, tuple):
            shown = "[" + ", ".join(_toml_string(v) for v in value) + "]"
        else:
            shown = repr(value)
        lines.append(f"{opt.path[-1]} = {shown}  # {opt.help}")
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
