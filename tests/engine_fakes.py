"""A scripted fake Engine for the planner's unit tests.

Replies are chosen by prompt substring (the first matching script wins, else the default reply);
each reply is streamed one word per chunk with an optional delay, honouring stop strings and
max_tokens like a real engine (the stop string itself is not returned). A script can fail after N
chunks, end with a given finish reason, or hold until an asyncio.Event is set. A prompt that already
ends with the start of its reply (a retried point continuing its first attempt) gets the rest. The fake records
every request (with its full prompt = prefix text + prompt), how many sequences were in flight per
role (and the maximum), which sequences were closed, and every prefix opened and closed. Its chat
template is ChatML.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from espalier.planner.engine import (
    Chunk,
    EngineError,
    EngineFault,
    EngineStats,
    FinishReason,
    GenerateRequest,
    Message,
    ModelIdentity,
    Pooling,
    Prefix,
    PrefixBase,
    Role,
    RoleNotLoaded,
    RoleStats,
)


def chatml(messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    text = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def llama3_trimming(messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """A template that trims content, like Llama 3's: the split must still work."""
    text = "<|begin_of_text|>" + "".join(
        f"<|start_header_id|>{m.role}<|end_header_id|>\n\n{m.content.strip()}<|eot_id|>" for m in messages
    )
    return text + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")


@dataclass
class Script:
    match: str
    reply: str | Callable[[str], str]
    role: Role | None = None
    fail_after: int | None = None  # raise `error` after this many chunks
    error: Exception = field(default_factory=lambda: EngineFault("decoder fault injected"))
    finish: FinishReason | None = None  # force this finish reason on the last chunk
    delay: float | None = None  # per chunk; None = the engine's default
    hold: asyncio.Event | None = None  # wait for this before the first chunk
    point: int | None = None  # match only the prompt of this point (its heading ends the prompt)


@dataclass
class Call:
    request: GenerateRequest
    full_prompt: str
    script: Script | None
    closed: bool = False
    output: str = ""


class FakePrefix(PrefixBase):
    def __init__(self, engine: FakeEngine, role: Role, text: str) -> None:
        super().__init__(role, text)
        self._engine = engine
        self.closed = False

    async def ready(self) -> int:
        return len(self._text.split())

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self._engine.prefix_closes.append(self)


class FakeEngine:
    def __init__(
        self,
        roles: Sequence[Role] = (Role.LARGE, Role.SMALL),
        *,
        slots: int = 8,
        delay: float = 0.0,
        default_reply: str = "Some helpful text.",
        template: Callable[[Sequence[Message], bool], str] = chatml,
    ) -> None:
        self._roles = frozenset(roles)
        self.slots = slots
        self.delay = delay
        self.default_reply = default_reply
        self.template = template
        self.scripts: list[Script] = []
        self.calls: list[Call] = []
        self.in_flight: Counter[Role] = Counter()
        self.max_in_flight: Counter[Role] = Counter()
        self.prefix_opens: list[FakePrefix] = []
        self.prefix_closes: list[FakePrefix] = []
        self.fail_prefix = False
        self.batch_cost: tuple[tuple[int, float], ...] = ()  # what stats() reports as measured

    # --- scripting -----------------------------------------------------------------------------

    def script(self, match: str, reply: str | Callable[[str], str], **kw: object) -> Script:
        s = Script(match, reply, **kw)  # type: ignore[arg-type]
        self.scripts.append(s)
        return s

    def script_point(self, position: int | str, reply: str | Callable[[str], str], **kw: object) -> Script:
        """Script the point at this position (or the part whose pre-fill starts so, e.g. "Closing:"):
        its pre-filled heading is the prompt's last line."""
        return self.script("", reply, point=position, **kw)

    def _find(self, prompt: str, role: Role) -> Script | None:
        for s in self.scripts:
            if s.point is not None and not _writes_point(prompt, s.point):
                continue
            if s.match in prompt and (s.role is None or s.role == role):
                return s
        return None

    # --- the Engine protocol -------------------------------------------------------------------

    def roles(self) -> frozenset[Role]:
        return self._roles

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Chunk, None]:
        if request.role not in self._roles:
            raise RoleNotLoaded(f"{request.role} is not loaded")
        request.validate()
        assert isinstance(request.prompt, str)
        if request.prefix is not None:
            assert not getattr(request.prefix, "closed", False), "forked from a closed prefix"
            assert request.prefix.role == request.role
        full = (request.prefix.text if request.prefix is not None else "") + request.prompt
        script = self._find(full, request.role)
        call = Call(request, full, script)
        self.calls.append(call)
        self.in_flight[request.role] += 1
        self.max_in_flight[request.role] = max(self.max_in_flight[request.role], self.in_flight[request.role])
        try:
            reply = self.default_reply if script is None else script.reply
            text = _continued(full, reply(full) if callable(reply) else reply)
            finish = FinishReason.LENGTH
            cut = [text.find(s) for s in request.sampling.stop if s in text]
            if cut:
                text = text[: min(cut)]
                finish = FinishReason.STOP
            pieces = re.findall(r"\s*\S+", text) or []
            if len(pieces) > request.sampling.max_tokens:
                pieces = pieces[: request.sampling.max_tokens]
                finish = FinishReason.LENGTH
            elif not cut:
                finish = FinishReason.STOP
            if script is not None and script.finish is not None:
                finish = script.finish
            delay = self.delay if script is None or script.delay is None else script.delay
            if script is not None and script.hold is not None:
                await script.hold.wait()
            for i, piece in enumerate(pieces):
                if script is not None and script.fail_after is not None and i >= script.fail_after:
                    raise script.error
                await asyncio.sleep(delay)
                call.output += piece
                yield Chunk(piece, 1)
            if script is not None and script.fail_after is not None and script.fail_after >= len(pieces):
                raise script.error
            await asyncio.sleep(delay)
            reused = len(request.prefix.text.split()) if request.prefix is not None else 0
            yield Chunk("", 0, finish, prompt_tokens=len(full.split()), reused_tokens=reused)
        finally:
            self.in_flight[request.role] -= 1
            call.closed = True

    def prefix(self, role: Role, text: str) -> Prefix:
        if role not in self._roles:
            raise RoleNotLoaded(f"{role} is not loaded")
        if self.fail_prefix:
            raise EngineError("prefix refused")
        p = FakePrefix(self, role, text)
        self.prefix_opens.append(p)
        return p

    def chat_prompt(
        self, role: Role, messages: Sequence[Message], *, add_generation_prompt: bool = True
    ) -> str:
        return self.template(messages, add_generation_prompt)

    def free_slots(self, role: Role) -> int:
        return max(0, self.slots - self.in_flight[role])

    def stats(self) -> EngineStats:
        return EngineStats(
            tuple(
                RoleStats(role, "fake", self.slots, self.in_flight[role], 0, 0, 0, 0, 0.0, 0,
                          batch_cost=self.batch_cost)
                for role in sorted(self._roles)
            )
        )

    async def aclose(self, grace_s: float = 5.0) -> None:
        return None

    # --- helpers for assertions ----------------------------------------------------------------

    def calls_matching(self, text: str) -> list[Call]:
        return [c for c in self.calls if text in c.full_prompt]

    def calls_for_point(self, position: int | str) -> list[Call]:
        return [c for c in self.calls if _writes_point(c.full_prompt, position)]

    @property
    def open_sequences(self) -> int:
        return sum(self.in_flight.values())


def _continued(prompt: str, reply: str) -> str:
    """The rest of the reply when the prompt already ends with its start (a retried sequence continues
    the text its first attempt wrote, as a real model continues its prompt)."""
    for k in range(len(reply), 0, -1):
        if reply[:k].strip() and prompt.endswith(reply[:k]):
            return reply[k:]
    return reply


def _writes_point(prompt: str, position: int | str) -> bool:
    heading = position if isinstance(position, str) else f"{position}. "
    return prompt.rsplit("\n", 1)[-1].startswith(heading)


class FakeEmbeddingEngine(FakeEngine):
    """A FakeEngine that also embeds (espalier.planner.engine.Embedder): a text's vector is `featurize(text)`;
    the model's identity is what `identity` says."""

    def __init__(self, featurize: Callable[[str], Sequence[float]], identity: ModelIdentity, *,
                 identities: Mapping[Role, ModelIdentity] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.featurize = featurize
        self.identity = identity
        self.identities = dict(identities or {})  # a role's own model, where it differs from `identity`
        self.embedded: list[str] = []
        self.embedded_roles: list[Role] = []

    async def embed(self, role: Role, texts: Sequence[str], pooling: Pooling,
                    depth: float = 1.0) -> list[tuple[float, ...]]:
        if role not in self._roles:
            raise RoleNotLoaded(f"the {role.value} model is not loaded")
        self.embedded.extend(texts)
        self.embedded_roles.extend([role] * len(texts))
        return [tuple(float(x) for x in self.featurize(t)) for t in texts]

    async def model_identity(self, role: Role) -> ModelIdentity:
        return self.identities.get(role, self.identity)
