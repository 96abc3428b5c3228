"""A scripted fake Engine and stub runner/judge for the bench's unit tests.

Same idea as the planner's fake (tests/unit/planner/planner_fakes.py), trimmed to what the bench
needs: replies chosen by prompt substring (first match wins, else the default reply), streamed one
word per chunk, honouring stop strings and max_tokens; every request is recorded. ChatML template.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from planner.engine import (
    Chunk,
    EngineStats,
    FinishReason,
    GenerateRequest,
    Message,
    Prefix,
    Role,
    RoleNotLoaded,
    RoleStats,
)
from service.bench.answers import RunResult


def chatml(messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    text = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


class FakePrefix:
    def __init__(self, role: Role, text: str) -> None:
        self._role = role
        self._text = text

    @property
    def role(self) -> Role:
        return self._role

    @property
    def text(self) -> str:
        return self._text

    async def ready(self) -> int:
        return len(self._text.split())

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> Prefix:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


@dataclass
class Call:
    role: Role
    prompt: str
    output: str = ""


class FakeEngine:
    def __init__(self, roles: Sequence[Role] = (Role.LARGE, Role.SMALL), *, delay: float = 0.0,
                 default_reply: str = "Some helpful text.") -> None:
        self._roles = frozenset(roles)
        self.delay = delay
        self.default_reply = default_reply
        self.scripts: list[tuple[str, str | Callable[[str], str]]] = []
        self.calls: list[Call] = []

    def script(self, match: str, reply: str | Callable[[str], str]) -> None:
        self.scripts.append((match, reply))

    def roles(self) -> frozenset[Role]:
        return self._roles

    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        return self._generate(request)

    async def _generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        if request.role not in self._roles:
            raise RoleNotLoaded(f"{request.role} is not loaded")
        request.sampling.validate()
        assert isinstance(request.prompt, str)
        full = (request.prefix.text if request.prefix is not None else "") + request.prompt
        reply: str | Callable[[str], str] = next((r for m, r in self.scripts if m in full), self.default_reply)
        text = reply(full) if callable(reply) else reply
        call = Call(request.role, full)
        self.calls.append(call)
        finish = FinishReason.STOP
        cut = [text.find(s) for s in request.sampling.stop if s in text]
        if cut:
            text = text[:min(cut)]
        pieces = re.findall(r"\s*\S+", text)
        if len(pieces) > request.sampling.max_tokens:
            pieces = pieces[:request.sampling.max_tokens]
            finish = FinishReason.LENGTH
        for piece in pieces:
            await asyncio.sleep(self.delay)
            call.output += piece
            yield Chunk(piece, 1)
        yield Chunk("", 0, finish, prompt_tokens=len(full.split()))

    def prefix(self, role: Role, text: str) -> Prefix:
        return FakePrefix(role, text)

    def chat_prompt(self, role: Role, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        return chatml(messages, add_generation_prompt)

    def free_slots(self, role: Role) -> int:
        return 8

    def stats(self) -> EngineStats:
        return EngineStats(tuple(RoleStats(r, "fake", 8, 0, 0, 0, 0, 0, 0.0, 0) for r in sorted(self._roles)))

    async def aclose(self, grace_s: float = 5.0) -> None:
        return None


class StubRunner:
    """Answers from a table: seconds[(question, mode)]; logs the order it was asked in."""

    def __init__(self, seconds: dict[tuple[str, str], float], routes: dict[str, str] | None = None,
                 fail: set[tuple[str, str]] | None = None) -> None:
        self.seconds = seconds
        self.routes = routes or {}
        self.fail = fail or set()
        self.log: list[tuple[str, str]] = []

    async def answer(self, question: str, mode: str) -> RunResult:
        self.log.append((question, mode))
        if (question, mode) in self.fail:
            return RunResult(0.5, error="EngineFault: injected")
        route = self.routes.get(question, "parallel") if mode == "auto" else \
            {"direct": "direct", "sot": "parallel", "sgd": "graph"}[mode]
        secs = self.seconds[(question, mode)]
        return RunResult(secs, secs / 4, tokens=int(secs * 10), answer=f"{mode} answer to {question}", route=route)

    async def route(self, question: str) -> tuple[str, str]:
        return self.routes.get(question, "parallel"), "stub"


class StubJudge:
    """Replies from a function of (answer_a, answer_b); records every call."""

    name = "stub judge"

    def __init__(self, decide: Callable[[str, str], str]) -> None:
        self.decide = decide
        self.calls: list[tuple[str, str, str]] = []

    async def reply(self, question: str, answer_a: str, answer_b: str) -> str:
        self.calls.append((question, answer_a, answer_b))
        return self.decide(answer_a, answer_b)
