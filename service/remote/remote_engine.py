"""RemoteEngine: the Engine protocol over OpenAI-compatible HTTP servers, one set of servers per role.

Owns the Engine face of espalier.service.remote: request checks, role lookup, chat formatting by the role's
named template, prefixes, stats and orderly shutdown. The streaming itself (server choice, retries,
timeouts, cancellation) belongs to espalier.service.remote.role_servers.

Prefixes degrade to sending the full prompt: a remote server cannot be told to fork a sequence, so
`prefix()` only remembers the text and every request sends prefix + prompt. Servers with prompt
caching reuse the shared part themselves (llama-server with `cache_prompt`, which every request sets;
vLLM with automatic prefix caching), and report what they reused in their usage, which becomes the
chunk's `reused_tokens`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing

from espalier.planner.engine import (
    Chunk,
    EngineStats,
    GenerateRequest,
    InvalidRequest,
    Message,
    Prefix,
    PrefixBase,
    Role,
    RoleNotLoaded,
    role_entry,
)
from espalier.service.remote import http_client
from espalier.service.remote.chat_templates import TEMPLATES
from espalier.service.remote.config import RemoteRoleConfig
from espalier.service.remote.role_servers import RoleServers

log = logging.getLogger(__name__)


class RemotePrefix(PrefixBase):
    """A prefix that is only text (see espalier.planner.engine.Prefix): nothing is prefilled here."""

    async def ready(self) -> int:
        return 0  # no tokens are prefilled on our side; the server's cache does the sharing

    async def aclose(self) -> None:
        return None


class RemoteEngine:
    """Build with `RemoteEngine(configs)` (no I/O); `await probe()` checks the servers once."""

    def __init__(self, configs: Mapping[Role, RemoteRoleConfig]) -> None:
        for role, cfg in configs.items():
            cfg.validate(f"remote.{role.value}")
            if not cfg.enabled:
                raise ValueError(f"remote.{role.value} has no URLs")
        if not configs:
            raise ValueError("a remote engine needs at least one role with URLs")
        self._roles = {role: RoleServers(role, cfg) for role, cfg in configs.items()}
        self._closing = False

    # --- Engine protocol --------------------------------------------------------------------

    def roles(self) -> frozenset[Role]:
        return frozenset(self._roles)

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Chunk, None]:
        """As every engine's: a bad request or an unknown role raises on the first iteration."""
        servers = self._servers(request.role)
        request.validate()
        prompt = request.prompt
        if request.prefix is not None:
            if not isinstance(request.prefix, RemotePrefix) or request.prefix.role != request.role:
                raise InvalidRequest("the prefix was opened on another engine or role", field="prefix")
            if not isinstance(prompt, str):
                raise InvalidRequest("a prefix (text) cannot be joined to a prompt of token ids", field="prompt")
            prompt = request.prefix.text + prompt
        if not prompt:
            raise InvalidRequest("the prompt is empty", field="prompt")
        async with aclosing(servers.stream(prompt, request.sampling)) as stream:
            async for chunk in stream:
                yield chunk

    def prefix(self, role: Role, text: str) -> Prefix:
        self._servers(role)
        return RemotePrefix(role, text)

    def chat_prompt(self, role: Role, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        servers = self._roles.get(role)
        if servers is None:
            raise RoleNotLoaded(f"the {role.value} role has no remote servers")
        return TEMPLATES[servers.config.chat_template](messages, add_generation_prompt)

    def free_slots(self, role: Role) -> int:
        servers = self._roles.get(role)
        return servers.free_slots() if servers is not None else 0

    def stats(self) -> EngineStats:
        return EngineStats(tuple(s.stats() for s in self._roles.values()))

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Take no new work; let open sequences finish for up to grace_s, then close their connections."""
        self._closing = True
        for servers in self._roles.values():
            servers.closing = True
        deadline = time.monotonic() + grace_s
        while any(s.live for s in self._roles.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for servers in self._roles.values():
            servers.abort_all()

    # --- start-up check -----------------------------------------------------------------------

    async def probe(self) -> dict[str, str]:
        """GET <base>/models on every server (in parallel); returns {url: "ok" or what went wrong}.

        Only informs: a server that is down now may be up by the first request, and the pool
        passes over failing servers by itself.
        """
        urls = {url: servers.config for servers in self._roles.values() for url in servers.config.urls}
        results = await asyncio.gather(*(_probe(url, cfg) for url, cfg in urls.items()))
        return dict(zip(urls, results, strict=True))

    # --- internals ----------------------------------------------------------------------------

    def _servers(self, role: Role) -> RoleServers:
        return role_entry(self._roles, role, closing=self._closing, missing="role has no remote servers",
                          held="served")


async def _probe(url: str, cfg: RemoteRoleConfig) -> str:
    headers = (("Authorization", f"Bearer {cfg.api_key}"),) if cfg.api_key else ()
    try:
        async with asyncio.timeout(cfg.connect_timeout_s * 2):
            response = await http_client.request(http_client.BaseUrl.parse(url), "GET", "/models", headers=headers,
                                                 connect_timeout=cfg.connect_timeout_s)
            async with response:
                await response.read(64 * 1024)
                return "ok" if response.status == 200 else f"HTTP {response.status} from GET /models"
    except TimeoutError:
        return "no answer to GET /models in time"
    except http_client.HttpError as exc:
        return str(exc)
