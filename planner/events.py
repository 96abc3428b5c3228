"""The event vocabulary of one answer, shared by the planner and the gRPC stream.

Owns the frozen event types (NodePlanned, PlanReady, NodeStarted, NodeDelta, NodeFinished,
NodeFailed, AnswerDone) and the usage/timing records AnswerDone carries, plus `Meter`, the accumulator
that fills those records while a request runs.

Order guarantees of a stream: NodePlanned for each point as the skeleton is written (answers that
write one), then PlanReady; then per node exactly one NodeStarted, any number of NodeDelta and
exactly one NodeFinished or NodeFailed (a node starts only after every node it depends on has
finished or failed); AnswerDone last. A cancelled request simply stops.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from espalier.planner.engine import FinishReason, Role
from espalier.planner.plan import Node, Plan, Route


@dataclass(frozen=True, slots=True)
class NodePlanned:
    """A point of the skeleton became known while the skeleton is still being written (its line is
    complete), so a client can draw the outline as it grows. PlanReady, which follows, has the final
    graph: a later line may still merge into a point, and the frame and budgets are added there."""

    node: Node
    position: int  # 1-based number of the point in the answer
    elapsed_s: float  # since the request started


@dataclass(frozen=True, slots=True)
class PlanReady:
    plan: Plan
    elapsed_s: float  # since the request started (routing and skeleton included)


@dataclass(frozen=True, slots=True)
class NodeStarted:
    node_id: int
    role: Role
    parents: tuple[int, ...] = ()  # parents whose finished text this node receives


@dataclass(frozen=True, slots=True)
class NodeDelta:
    node_id: int
    text: str
    tokens: int


@dataclass(frozen=True, slots=True)
class NodeFinished:
    node_id: int
    text: str  # the node's whole text
    tokens: int
    finish: FinishReason  # STOP or LENGTH
    elapsed_s: float  # since the node started


@dataclass(frozen=True, slots=True)
class NodeFailed:
    node_id: int
    reason: str  # human-readable
    error: str  # what failed: an error class name (e.g. EngineFault) or a finish reason (cancelled, error)
    partial_text: str = ""  # text produced before the failure, kept in the answer


@dataclass(frozen=True, slots=True)
class RoleUsage:
    role: Role
    calls: int = 0
    prompt_tokens: int = 0  # including tokens reused from a prefix
    reused_tokens: int = 0  # prompt tokens copied from a prefix instead of prefilled
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    roles: tuple[RoleUsage, ...] = ()

    def role(self, role: Role) -> RoleUsage:
        return next((r for r in self.roles if r.role == role), RoleUsage(role))

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.roles)

    @property
    def prompt_tokens(self) -> int:
        return sum(r.prompt_tokens for r in self.roles)


@dataclass(frozen=True, slots=True)
class Timings:
    """Seconds since the request started."""

    route_s: float  # routing decided (0 when forced)
    plan_s: float  # plan ready (routing and skeleton included)
    first_token_s: float | None  # first token of any point (or of the direct answer); None if none came
    total_s: float


@dataclass(frozen=True, slots=True)
class AnswerDone:
    text: str  # points in skeleton order, each as its title and text; gaps noted
    route: Route
    usage: Usage
    timings: Timings
    failed: tuple[int, ...] = ()  # ids of nodes that failed


Event = NodePlanned | PlanReady | NodeStarted | NodeDelta | NodeFinished | NodeFailed | AnswerDone


class Meter:
    """Collects usage per role and the timing marks of one request (single event loop, no locks)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._t0 = clock()
        self._usage: dict[Role, RoleUsage] = {}
        self._route_s: float | None = None
        self._plan_s: float | None = None
        self._first_token_s: float | None = None

    def elapsed(self) -> float:
        return self._clock() - self._t0

    def add(
        self,
        role: Role,
        *,
        prompt_tokens: int = 0,
        reused_tokens: int = 0,
        completion_tokens: int = 0,
        calls: int = 1,
    ) -> None:
        u = self._usage.get(role, RoleUsage(role))
        self._usage[role] = RoleUsage(
            role,
            u.calls + calls,
            u.prompt_tokens + prompt_tokens,
            u.reused_tokens + reused_tokens,
            u.completion_tokens + completion_tokens,
        )

    def mark_routed(self) -> None:
        if self._route_s is None:
            self._route_s = self.elapsed()

    def mark_planned(self) -> float:
        if self._plan_s is None:
            self.mark_routed()
            self._plan_s = self.elapsed()
        return self._plan_s

    def mark_first_token(self) -> None:
        if self._first_token_s is None:
            self._first_token_s = self.elapsed()

    def usage(self) -> Usage:
        return Usage(tuple(self._usage[r] for r in sorted(self._usage)))

    def timings(self) -> Timings:
        total = self.elapsed()
        plan_s = self._plan_s if self._plan_s is not None else 0.0
        route_s = self._route_s if self._route_s is not None else 0.0
        return Timings(route_s=route_s, plan_s=plan_s, first_token_s=self._first_token_s, total_s=total)
