"""The plan: a validated, frozen graph of answer points.

Owns the vocabulary of what an answer is made of (Node, Difficulty), how it is produced (Route,
and the caller-facing Mode that selects a route), and the one place where a graph is checked:
`Plan.validated` (ids unique, references known, acyclic, bounded count). Caller-edited graphs go
through the same check, so its error (PlanInvalid, an InvalidRequest naming the bad field) is what
the service turns into INVALID_ARGUMENT.
"""

from __future__ import annotations

import dataclasses
import enum
import graphlib
from collections.abc import Iterable
from dataclasses import dataclass

from espalier.planner.engine import InvalidRequest, Role

DEFAULT_MAX_NODES = 10
MAX_TITLE_CHARS = 300
MAX_NODE_ID = 2**31 - 1
MAX_NODE_TOKENS = 32768  # the engine's own bound on a sequence's budget


class Difficulty(enum.StrEnum):
    """How hard a point is to write; picks the model role (easy -> small, hard -> large)."""

    EASY = "easy"
    HARD = "hard"


class Part(enum.StrEnum):
    """What a node is in the answer: a numbered point of the skeleton, or the sentence that opens
    or closes the answer around the points (written in parallel with them, from the outline)."""

    POINT = "point"
    OPENING = "opening"
    CLOSING = "closing"


class PointLength(enum.StrEnum):
    """How much each point of a skeleton answer says."""

    BRIEF = "brief"  # one or two short sentences (Skeleton-of-Thought's "very shortly")
    # two short sentences with a concrete detail, over several lines where the question asks for code,
    # steps or examples: the default, since one-line points lost to direct answers with a careful reader
    DETAILED = "detailed"


class Route(enum.StrEnum):
    """How an answer is produced."""

    PARALLEL = "parallel"  # independent points, expanded together (Skeleton-of-Thought)
    GRAPH = "graph"  # points with dependencies and difficulty (Skeleton Graph Decoding)
    DIRECT = "direct"  # no skeleton: plain decoding


class Mode(enum.StrEnum):
    """What the caller asks for; `auto` lets the router pick the route."""

    AUTO = "auto"
    DIRECT = "direct"
    SOT = "sot"
    SGD = "sgd"
    # A streamed prompt: notes written while it arrives, then a plain answer with them in view.
    # Outside a stream (nothing arrives in pieces) it is plain decoding.
    LIVE = "live"

    @property
    def forced_route(self) -> Route | None:
        return _FORCED[self]


_FORCED: dict[Mode, Route | None] = {
    Mode.AUTO: None,
    Mode.DIRECT: Route.DIRECT,
    Mode.LIVE: Route.DIRECT,
    Mode.SOT: Route.PARALLEL,
    Mode.SGD: Route.GRAPH,
}


class PlanInvalid(InvalidRequest):
    """A plan breaks a rule of Plan.validated.

    `field` names the offending part, e.g. plan.nodes[2].depends_on.
    """


@dataclass(frozen=True, slots=True)
class Node:
    """One point of the answer. depends_on lists ids of nodes whose text this one needs.

    role: the model that decodes it when the caller chose one; None lets difficulty decide.
    part: a numbered point, or the answer's opening or closing sentence (see Part).
    max_tokens: the node's own token budget (a code example needs more than a definition); 0 uses
    the planner's point budget.
    """

    id: int
    title: str
    depends_on: tuple[int, ...] = ()
    difficulty: Difficulty = Difficulty.HARD
    role: Role | None = None
    part: Part = Part.POINT
    max_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    """Nodes in skeleton order (the order the answer is assembled in) and the route.

    Build with Plan.validated (or Plan.direct); the runner assumes a validated plan.
    `reason` says how the route and nodes were chosen (for logs and benchmarks; not validated).
    `skeleton` is the raw text the model wrote, when the plan came from a skeleton.
    """

    nodes: tuple[Node, ...]
    route: Route
    reason: str = ""
    skeleton: str = ""

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def direct(cls, reason: str = "") -> Plan:
        """The one-node plan of plain decoding."""
        return cls((Node(1, "Answer"),), Route.DIRECT, reason)

    @classmethod
    def validated(
        cls,
        nodes: Iterable[Node],
        route: Route | str,
        *,
        max_nodes: int = DEFAULT_MAX_NODES,
        reason: str = "",
        skeleton: str = "",
    ) -> Plan:
        """Check a graph and return it frozen; raise PlanInvalid naming the first bad field.

        Rules: 1..max_nodes points, plus at most one opening (the first node, depending on
        nothing) and one closing (the last node); ids positive and unique; titles non-empty and
        bounded; depends_on only names other known nodes, without repeats, and never an opening or
        closing; no cycles; a parallel plan has no dependencies; a direct plan has exactly one point.
        """
        try:
            route = Route(route)
        except ValueError:
            raise PlanInvalid(
                f"unknown route {route!r} (one of {', '.join(Route)})", field="plan.route"
            ) from None
        nodes = tuple(nodes)
        if not nodes:
            raise PlanInvalid("a plan needs at least one node", field="plan.nodes")
        points = sum(1 for n in nodes if getattr(n, "part", None) is Part.POINT)
        if points > max_nodes:
            raise PlanInvalid(
                f"a plan may have at most {max_nodes} points (got {points})", field="plan.nodes"
            )
        if route is Route.DIRECT and (len(nodes) != 1 or points != 1):
            raise PlanInvalid("a direct plan has exactly one node, a point", field="plan.nodes")
        seen: set[int] = set()
        for i, node in enumerate(nodes):
            _check_node(node, i, len(nodes), seen)
            seen.add(node.id)
        if not points:
            raise PlanInvalid("a plan needs at least one point", field="plan.nodes")
        frames = {n.id: n.part for n in nodes if n.part is not Part.POINT}
        for i, node in enumerate(nodes):
            _check_dependencies(node, i, route, seen, frames)
        plan = cls(nodes, route, reason, skeleton)
        cycle = plan._find_cycle()
        if cycle:
            index = next(i for i, n in enumerate(nodes) if n.id == cycle[0])
            path = " -> ".join(str(c) for c in (*cycle, cycle[0]))
            raise PlanInvalid(f"dependencies form a cycle: {path}", field=f"plan.nodes[{index}].depends_on")
        return plan

    # --- queries ------------------------------------------------------------------------------

    def node(self, node_id: int) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    @property
    def points(self) -> tuple[Node, ...]:
        """The numbered points, in skeleton order (the nodes without the opening and closing)."""
        return tuple(n for n in self.nodes if n.part is Part.POINT)

    def position(self, node_id: int) -> int:
        """1-based place of a point among the points (the number shown to the model and the reader);
        0 for the opening and closing, which have no number."""
        for i, n in enumerate(self.points, 1):
            if n.id == node_id:
                return i
        self.node(node_id)  # KeyError when unknown
        return 0

    def depth(self) -> int:
        """Stages of the longest chain of dependent nodes (1 = every node can run at once; 0 = no nodes)."""
        depth: dict[int, int] = {}
        for node_id in self.topological_order():
            depth[node_id] = 1 + max((depth[d] for d in self.node(node_id).depends_on), default=0)
        return max(depth.values(), default=0)

    def with_max_depth(self, max_depth: int) -> Plan:
        """The same plan with dependencies cut so that no chain has more than max_depth stages.

        Every stage of a chain is a point decoded after its parent finished, so depth is what
        serialises a graph; a model copying a chain from its examples would otherwise undo all
        parallelism. A node keeps the parents that still fit (the shallow ones), drops the rest.
        """
        depth: dict[int, int] = {}
        kept: dict[int, tuple[int, ...]] = {}
        for node_id in self.topological_order():
            node = self.node(node_id)
            deps = tuple(d for d in node.depends_on if depth[d] < max_depth)
            kept[node_id] = deps
            depth[node_id] = 1 + max((depth[d] for d in deps), default=0)
        nodes = tuple(dataclasses.replace(n, depends_on=kept[n.id]) for n in self.nodes)
        return dataclasses.replace(self, nodes=nodes)

    def topological_order(self) -> tuple[int, ...]:
        """Node ids so that every node comes after the nodes it depends on.

        Stable: among ready nodes, skeleton order wins (one node at a time from a position-ordered
        ready list), so an edge-free plan keeps its skeleton order.
        """
        sorter = self._sorter()
        try:
            sorter.prepare()
        except graphlib.CycleError:
            raise PlanInvalid("dependencies form a cycle", field="plan.nodes") from None
        pos = {n.id: i for i, n in enumerate(self.nodes)}
        ready: list[int] = []
        order: list[int] = []
        while sorter.is_active():
            ready.extend(sorter.get_ready())
            ready.sort(key=pos.__getitem__)
            current = ready.pop(0)
            order.append(current)
            sorter.done(current)
        return tuple(order)

    def _find_cycle(self) -> tuple[int, ...]:
        """One cycle as a tuple of ids, each depending on the next (empty if none)."""
        try:
            self._sorter().prepare()
        except graphlib.CycleError as exc:
            # graphlib lists the cycle against the dependencies, its first node repeated at the end
            return tuple(reversed(exc.args[1]))[:-1]
        return ()

    def _sorter(self) -> graphlib.TopologicalSorter[int]:
        return graphlib.TopologicalSorter({n.id: n.depends_on for n in self.nodes})


OPENING_TITLE = "Opening"
CLOSING_TITLE = "Closing"


def framed(points: Iterable[Node], *, closing: bool = True) -> tuple[Node, ...]:
    """The points after an opening, written in parallel with them, and before a closing, written
    from the points' own text once they are done (so it never sums up what they do not say).

    The frame takes ids after the points' (so point ids keep matching their numbers). It is hard
    work, for the large model even in a graph plan: the opening is what a reader sees first, and
    the small model, tried on it, wrote a bare list of the titles rather than a sentence.
    """
    points = tuple(points)
    last = max((n.id for n in points), default=0)
    opening = Node(last + 1, OPENING_TITLE, part=Part.OPENING)
    if not closing:
        return (opening, *points)
    return (opening, *points, Node(last + 2, CLOSING_TITLE, part=Part.CLOSING))


def _check_node(node: object, i: int, count: int, seen: set[int]) -> None:
    """One node's own fields (seen: the ids of the nodes before it); PlanInvalid naming the field."""
    where = f"plan.nodes[{i}]"
    if not isinstance(node, Node):
        raise PlanInvalid(f"{where} is not a Node", field=where)
    if not isinstance(node.id, int) or isinstance(node.id, bool) or not 1 <= node.id <= MAX_NODE_ID:
        raise PlanInvalid(f"{where}.id must be an integer from 1 to {MAX_NODE_ID} (got {node.id!r})",
                          field=f"{where}.id")
    if node.id in seen:
        raise PlanInvalid(f"node id {node.id} is used twice", field=f"{where}.id")
    if not isinstance(node.title, str) or not node.title.strip():
        raise PlanInvalid(f"{where}.title must not be empty", field=f"{where}.title")
    if len(node.title) > MAX_TITLE_CHARS:
        raise PlanInvalid(f"{where}.title is longer than {MAX_TITLE_CHARS} characters", field=f"{where}.title")
    if node.role is not None and not isinstance(node.role, Role):
        raise PlanInvalid(f"{where}.role must be large, small or unset (got {node.role!r})", field=f"{where}.role")
    if (not isinstance(node.max_tokens, int) or isinstance(node.max_tokens, bool)
            or not 0 <= node.max_tokens <= MAX_NODE_TOKENS):
        raise PlanInvalid(f"{where}.max_tokens must be an integer from 0 to {MAX_NODE_TOKENS} "
                          f"(got {node.max_tokens!r})", field=f"{where}.max_tokens")
    if not isinstance(node.difficulty, Difficulty):
        raise PlanInvalid(f"{where}.difficulty must be easy or hard (got {node.difficulty!r})",
                          field=f"{where}.difficulty")
    _check_part(node, i, count)


def _check_dependencies(node: Node, i: int, route: Route, ids: set[int], frames: dict[int, Part]) -> None:
    """A node's depends_on: only in a graph, no repeats, only other known points (not the frame)."""
    where = f"plan.nodes[{i}].depends_on"
    if node.depends_on and route is not Route.GRAPH:
        raise PlanInvalid(f"a {route} plan has no dependencies (node {node.id} has some)", field=where)
    if len(set(node.depends_on)) != len(node.depends_on):
        raise PlanInvalid(f"node {node.id} names a dependency twice", field=where)
    for dep in node.depends_on:
        if dep == node.id:
            raise PlanInvalid(f"node {node.id} depends on itself", field=where)
        if dep not in ids:
            raise PlanInvalid(f"node {node.id} depends on unknown node {dep!r}", field=where)
        if dep in frames:
            raise PlanInvalid(f"node {node.id} depends on node {dep}, the answer's {frames[dep]}", field=where)


def _check_part(node: Node, index: int, count: int) -> None:
    """An opening comes first and needs nothing; a closing comes last (it may need points)."""
    where = f"plan.nodes[{index}]"
    if not isinstance(node.part, Part):
        raise PlanInvalid(f"{where}.part must be one of {', '.join(Part)} (got {node.part!r})",
                          field=f"{where}.part")
    if node.part is Part.OPENING:
        if index != 0:
            raise PlanInvalid(f"{where} is an opening but not the first node", field=f"{where}.part")
        if node.depends_on:
            raise PlanInvalid(f"{where}, the opening, cannot depend on other nodes", field=f"{where}.depends_on")
    if node.part is Part.CLOSING and index != count - 1:
        raise PlanInvalid(f"{where} is a closing but not the last node", field=f"{where}.part")
