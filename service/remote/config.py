"""Settings of one model role served by remote OpenAI-compatible servers.

Owns `RemoteRoleConfig` (base URLs, model name, API key, slots per server, chat template, timeouts,
retries, ejection) and its validation. Each field carries `help` and bounds in its metadata, the same
vocabulary as espalier.planner.fields, so espalier.service.settings derives the TOML keys (`[remote.large]`), the
ESPALIER_REMOTE_* variables and the --remote-* flags from this one declaration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from espalier.planner.fields import field_meta, first_bad_field
from espalier.service.remote.chat_templates import TEMPLATES


class RemoteConfigError(ValueError):
    """A remote setting is malformed or out of range; the message names it."""




@dataclass(frozen=True, slots=True)
class RemoteRoleConfig:
    """One role's servers. A role with no URLs is not remote (the embedded engine serves it)."""

    urls: tuple[str, ...] = field(default=(), metadata=field_meta(
        "base URLs of OpenAI-compatible servers for this role, such as http://host:8080/v1; when set, "
        "the role is served by them instead of a local model"))
    model: str = field(default="", metadata=field_meta(
        "model name sent with each request (empty: omitted, the server's only or default model)"))
    api_key: str = field(default="", repr=False, metadata=field_meta(
        "sent as 'Authorization: Bearer <key>' when set", secret=True))
    slots: int = field(default=4, metadata=field_meta(
        "requests one server decodes at once (llama-server --parallel); sizes free_slots and stats", 1, 1024))
    chat_template: str = field(default="chatml", metadata=field_meta(
        "how chat messages become prompt text (servers get raw text through /v1/completions): chatml for "
        "Qwen2.5 and other ChatML models, llama3 for Llama 3", choices=tuple(TEMPLATES)))
    connect_timeout_s: float = field(default=5.0, metadata=field_meta(
        "seconds to open a connection before trying another server", 0.1, 600))
    first_byte_timeout_s: float = field(default=120.0, metadata=field_meta(
        "seconds from sending a request to its first streamed token (covers queueing and prefill) before "
        "trying another server", 0.1, 3600))
    idle_timeout_s: float = field(default=60.0, metadata=field_meta(
        "seconds between two streamed tokens before the sequence fails", 0.1, 3600))
    retries: int = field(default=2, metadata=field_meta(
        "further servers tried when one fails before its first token (refused, reset, 429/502/503/504, "
        "first-byte timeout); never after text was returned", 0, 16))
    eject_s: float = field(default=5.0, metadata=field_meta(
        "seconds a failing server is passed over (doubling on repeated failures, at most 60)", 0, 600))

    @property
    def enabled(self) -> bool:
        return bool(self.urls)

    def validate(self, where: str) -> None:
        """Raise RemoteConfigError naming `where.<field>` for the first bad value."""
        bad = first_bad_field(self)  # bounds and the chat template's choices
        if bad is not None:
            raise RemoteConfigError(f"{where}.{bad[0]} {bad[1]}")
        if len(set(self.urls)) != len(self.urls):
            raise RemoteConfigError(f"{where}.urls names a server twice")
        for url in self.urls:
            check_base_url(url, f"{where}.urls")
        if any(c.isspace() for c in self.api_key) or not self.api_key.isprintable():
            raise RemoteConfigError(f"{where}.api_key must be printable and contain no spaces")


def check_base_url(url: str, where: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RemoteConfigError(f"{where}: {url!r} is not an http:// or https:// base URL with a host "
                                "(such as http://127.0.0.1:8080/v1)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise RemoteConfigError(f"{where}: {url!r} must not carry a query, fragment or credentials "
                                "(set api_key for credentials)")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise RemoteConfigError(f"{where}: {url!r} has a bad port") from None


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    """Remote servers per role; `[remote.large]` and `[remote.small]` in the TOML file."""

    large: RemoteRoleConfig = field(default_factory=RemoteRoleConfig, metadata=field_meta(
        "servers for the large role"))
    small: RemoteRoleConfig = field(default_factory=RemoteRoleConfig, metadata=field_meta(
        "servers for the small role"))
