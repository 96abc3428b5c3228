"""Translation between the protobuf API and the planner's own types (habit 2: pb2 stays at the edge).

Owns, inbound: the question (plain or the last of chat messages, bounded) and its conversation (the
caller's system text and earlier turns, bounded), the mode, a request's
GenerationSettings as overrides of the server's PlannerSettings (each field checked against its
documented range, errors naming the proto field), a caller's Graph as a Plan through
Plan.validated (so a cycle, an unknown id or too many nodes is a PlanInvalid naming `graph....`),
and the prompt of a Stream (`PromptBuffer`: pieces appended or revised). Outbound: Plan -> Graph
(with the model role each node will run on), planner events -> AnswerEvent.

Field names in errors are the proto's (graph.nodes[2].depends_on, settings.temperature), since that
is what a caller can fix; the planner speaks of `plan.` and `planner.`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

from espalier.planner import events as ev
from espalier.planner.conversation import NO_CONTEXT, Conversation
from espalier.planner.engine import FinishReason, InvalidRequest, Message, Role, RoleNotLoaded, Speculation
from espalier.planner.live import TypingProgress
from espalier.planner.plan import MAX_NODE_TOKENS, Difficulty, Mode, Node, Part, Plan, PlanInvalid, Route
from espalier.planner.runner import role_for
from espalier.planner.settings import PlannerSettings
from espalier.v1 import espalier_pb2 as pb

_MODES = {pb.MODE_UNSPECIFIED: Mode.AUTO, pb.MODE_AUTO: Mode.AUTO, pb.MODE_DIRECT: Mode.DIRECT,
          pb.MODE_SOT: Mode.SOT, pb.MODE_SGD: Mode.SGD, pb.MODE_LIVE: Mode.LIVE}
_ROUTES_IN = {pb.ROUTE_DIRECT: Route.DIRECT, pb.ROUTE_PARALLEL: Route.PARALLEL, pb.ROUTE_GRAPH: Route.GRAPH}
_ROUTES_OUT = {v: k for k, v in _ROUTES_IN.items()}
_DIFFICULTY_IN = {pb.DIFFICULTY_UNSPECIFIED: Difficulty.HARD, pb.DIFFICULTY_EASY: Difficulty.EASY,
                  pb.DIFFICULTY_HARD: Difficulty.HARD}
_DIFFICULTY_OUT = {Difficulty.EASY: pb.DIFFICULTY_EASY, Difficulty.HARD: pb.DIFFICULTY_HARD}
_PART_IN = {pb.NODE_PART_UNSPECIFIED: Part.POINT, pb.NODE_PART_POINT: Part.POINT,
            pb.NODE_PART_OPENING: Part.OPENING, pb.NODE_PART_CLOSING: Part.CLOSING}
FRAME_PARTS = (Part.OPENING, Part.CLOSING)
_PART_OUT = {Part.POINT: pb.NODE_PART_POINT, Part.OPENING: pb.NODE_PART_OPENING, Part.CLOSING: pb.NODE_PART_CLOSING}
_ROLES_IN = {pb.MODEL_ROLE_LARGE: Role.LARGE, pb.MODEL_ROLE_SMALL: Role.SMALL}
_ROLES_OUT = {v: k for k, v in _ROLES_IN.items()}
_SPECULATION = {pb.SPECULATION_AUTO: Speculation.AUTO, pb.SPECULATION_ON: Speculation.ON,
                pb.SPECULATION_OFF: Speculation.OFF}
_FINISH_OUT = {FinishReason.STOP: pb.FINISH_REASON_STOP, FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
               FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED, FinishReason.ERROR: pb.FINISH_REASON_ERROR}
_CHAT_ROLES = ("system", "user", "assistant")
MAX_POINTS = (2, 10)  # GenerationSettings.max_points, as documented in the proto


@dataclass(frozen=True, slots=True)
class Limits:
    """Server-wide bounds on what a request may ask for (from ServerSettings)."""

    max_question_chars: int = 8000
    max_tokens: int = 4096
    max_system_chars: int = 8000  # all of a request's system text
    max_history_chars: int = 32000  # all of its earlier turns (the planner then keeps what fits its prompts)


@dataclass(frozen=True, slots=True)
class PlanCall:
    question: str
    mode: Mode
    settings: PlannerSettings
    context: Conversation = NO_CONTEXT


@dataclass(frozen=True, slots=True)
class ExpandCall:
    question: str
    plan: Plan
    settings: PlannerSettings
    context: Conversation = NO_CONTEXT


@dataclass(frozen=True, slots=True)
class StreamCall:
    mode: Mode
    settings: PlannerSettings
    context: Conversation = NO_CONTEXT


# --- inbound -------------------------------------------------------------------------------------


def question_from(question: str, messages: Sequence[pb.ChatMessage], limits: Limits) -> tuple[str, Conversation]:
    """The question and its conversation: `question` alone, or `messages`, whose last message is the
    question (a user message) and the others its context (exactly one of the two)."""
    if question and messages:
        raise InvalidRequest("set either question or messages, not both", field="messages")
    if not messages:
        check_question(question, limits)
        return question, NO_CONTEXT
    last = len(messages) - 1
    if messages[last].role != "user":
        raise InvalidRequest(f"the last message must be the question, a user message (messages[{last}] is "
                             f"{messages[last].role!r})", field=f"messages[{last}].role")
    check_question(messages[last].content, limits, f"messages[{last}].content")
    return messages[last].content, conversation_from("", messages[:last], limits)


def conversation_from(system: str, messages: Sequence[pb.ChatMessage], limits: Limits,
                      field: str = "messages", system_field: str = "open.system") -> Conversation:
    """The caller's system text (`system` and system messages) and earlier turns, each total bounded by
    `limits`; an error names the message that goes over (field[i].content, or system_field)."""
    system_chars = len(system)
    if system_chars > limits.max_system_chars:
        raise InvalidRequest(f"{system_field} is longer than {limits.max_system_chars} characters "
                             f"(got {system_chars})", field=system_field)
    history_chars = 0
    for i, m in enumerate(messages):
        where = f"{field}[{i}]"
        if m.role not in _CHAT_ROLES:
            raise InvalidRequest(f"{where}.role must be one of {', '.join(_CHAT_ROLES)} (got {m.role!r})",
                                 field=f"{where}.role")
        if m.role == "system":
            system_chars += len(m.content)
            limit, total, what = limits.max_system_chars, system_chars, "system text"
        else:
            history_chars += len(m.content)
            limit, total, what = limits.max_history_chars, history_chars, "earlier turns"
        if total > limit:
            raise InvalidRequest(f"{where}.content: the {what} come to more than {limit} characters (got {total} "
                                 f"by this message)", field=f"{where}.content")
    turns = [Message("system", system)] if system else []
    return Conversation.from_messages(turns + [Message(m.role, m.content) for m in messages])


def check_question(question: str, limits: Limits, field: str = "question") -> None:
    if not question.strip():
        raise InvalidRequest(f"{field} must not be empty", field=field)
    if len(question) > limits.max_question_chars:
        raise InvalidRequest(f"{field} is longer than {limits.max_question_chars} characters (got {len(question)})",
                             field=field)


def mode_from(value: int, field: str = "mode") -> Mode:
    try:
        return _MODES[value]
    except KeyError:
        raise InvalidRequest(f"{field} has an unknown value {value}", field=field) from None


def planner_settings(msg: pb.GenerationSettings, base: PlannerSettings, limits: Limits,
                     field: str = "settings") -> PlannerSettings:
    """The server's defaults with the request's overrides; each set field checked against its range."""

    def bad(name: str, why: str, value: object) -> InvalidRequest:
        return InvalidRequest(f"{field}.{name} {why} (got {value!r})", field=f"{field}.{name}")

    sampling = base.sampling
    changes: dict[str, object] = {}
    for name, cast in (("temperature", float), ("top_p", float), ("top_k", int), ("seed", int)):
        if msg.HasField(name):  # type: ignore[arg-type]
            sampling = dataclasses.replace(sampling, **{name: cast(getattr(msg, name))})
    try:
        sampling.validate()  # the bounds are Sampling's own (espalier.planner.engine)
    except InvalidRequest as exc:
        name = (exc.field or "").removeprefix("sampling.")
        raise InvalidRequest(str(exc).replace("sampling.", f"{field}.", 1), field=f"{field}.{name}") from None
    budgets = (("point_max_tokens", "point_max_tokens", 4096), ("answer_max_tokens", "direct_max_tokens", 32768))
    for pb_name, name, hi in budgets:
        if msg.HasField(pb_name):  # type: ignore[arg-type]
            value = getattr(msg, pb_name)
            top = min(hi, limits.max_tokens)
            if not 1 <= value <= top:
                raise bad(pb_name, f"must be between 1 and {top}", value)
            changes[name] = value
    if msg.speculation:
        if msg.speculation not in _SPECULATION:
            raise bad("speculation", "has an unknown value", msg.speculation)
        changes["speculation"] = _SPECULATION[msg.speculation]
    if msg.HasField("max_points"):
        lo, hi = MAX_POINTS
        if not lo <= msg.max_points <= hi:
            raise bad("max_points", f"must be between {lo} and {hi}", msg.max_points)
        changes["max_nodes"] = msg.max_points
        changes["min_nodes"] = min(base.min_nodes, msg.max_points)
    if sampling is not base.sampling:
        changes["sampling"] = sampling
    if not changes:
        return base
    try:
        return base.replace(**changes)
    except InvalidRequest as exc:  # a combination the planner refuses; name the settings message
        raise InvalidRequest(str(exc), field=field) from None


def plan_request(msg: pb.PlanRequest | pb.AnswerRequest, base: PlannerSettings, limits: Limits) -> PlanCall:
    """A Plan request, or an Answer request (the same fields: question or messages, mode, settings)."""
    question, context = question_from(msg.question, msg.messages, limits)
    return PlanCall(question, mode_from(msg.mode), planner_settings(msg.settings, base, limits), context)


def expand_request(msg: pb.ExpandRequest, base: PlannerSettings, limits: Limits,
                   loaded: frozenset[Role]) -> ExpandCall:
    question, context = question_from(msg.question, msg.messages, limits)
    settings = planner_settings(msg.settings, base, limits)
    if not msg.HasField("graph"):
        raise InvalidRequest("graph is required (as returned by Plan, possibly edited)", field="graph")
    return ExpandCall(question, plan_from_graph(msg.graph, settings.max_nodes, loaded, limits.max_tokens), settings,
                      context)


def stream_open(msg: pb.StreamOpen, base: PlannerSettings, limits: Limits) -> StreamCall:
    for i, m in enumerate(msg.history):
        if m.role == "system":  # the streamed prompt's system text has its own field
            raise InvalidRequest(f"open.history[{i}].role must be user or assistant (the system text goes in "
                                 "open.system)", field=f"open.history[{i}].role")
    context = conversation_from(msg.system, msg.history, limits, field="open.history")
    return StreamCall(mode_from(msg.mode, "open.mode"), planner_settings(msg.settings, base, limits, "open.settings"),
                      context)


def plan_from_graph(graph: pb.Graph, max_nodes: int, loaded: frozenset[Role],
                    max_tokens: int = MAX_NODE_TOKENS) -> Plan:
    """A caller's graph as a validated Plan. PlanInvalid / RoleNotLoaded name the graph field."""
    # Count first: a huge graph is refused before building anything from it. max_nodes counts
    # points; an opening and a closing may come on top (Plan.validated checks the exact rule).
    if len(graph.nodes) > max_nodes + len(FRAME_PARTS):
        raise PlanInvalid(f"graph.nodes: a graph may have at most {max_nodes} points, an opening and a closing "
                          f"(got {len(graph.nodes)} nodes)",
                          field="graph.nodes")
    nodes: list[Node] = []
    for i, n in enumerate(graph.nodes):
        where = f"graph.nodes[{i}]"
        difficulty = _DIFFICULTY_IN.get(n.difficulty)
        if difficulty is None:
            raise PlanInvalid(f"{where}.difficulty has an unknown value {n.difficulty}", field=f"{where}.difficulty")
        role = None
        if n.model_role != pb.MODEL_ROLE_UNSPECIFIED:
            role = _ROLES_IN.get(n.model_role)
            if role is None:
                raise InvalidRequest(f"{where}.model_role has an unknown value {n.model_role}",
                                     field=f"{where}.model_role")
            if role not in loaded:
                have = ", ".join(sorted(r.value for r in loaded)) or "none"
                raise RoleNotLoaded(f"{where}.model_role: the {role.value} model is not loaded (loaded: {have})")
        part = _PART_IN.get(n.part)
        if part is None:
            raise PlanInvalid(f"{where}.part has an unknown value {n.part}", field=f"{where}.part")
        if n.max_tokens > max_tokens:
            raise PlanInvalid(f"{where}.max_tokens must be at most {max_tokens} (got {n.max_tokens})",
                              field=f"{where}.max_tokens")
        nodes.append(Node(n.id, n.title, tuple(n.depends_on), difficulty, role, part, n.max_tokens))
    if graph.route == pb.ROUTE_UNSPECIFIED:
        route = Route.GRAPH if any(n.depends_on for n in nodes) else Route.PARALLEL
    elif graph.route in _ROUTES_IN:
        route = _ROUTES_IN[graph.route]
    else:
        raise PlanInvalid(f"graph.route has an unknown value {graph.route}", field="graph.route")
    try:
        return Plan.validated(nodes, route, max_nodes=max_nodes, reason="graph from the caller")
    except PlanInvalid as exc:
        raise PlanInvalid(_graph_names(str(exc)), field=_graph_names(exc.field)) from None


def _graph_names(text: str) -> str:
    # The planner names the graph `plan`; the caller knows it as `graph`. A rename of field paths,
    # not a classification of the error.
    return re.sub(r"\bplan\.", "graph.", text)


class PromptBuffer:
    """The prompt of a Stream as it arrives: pieces append, a `revise` piece rewrites from an offset."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._text = ""
        self.pieces = 0

    @property
    def text(self) -> str:
        return self._text

    def apply(self, piece: pb.PromptPiece) -> None:
        if piece.revise:
            if piece.revise_from > len(self._text):
                raise InvalidRequest(f"piece.revise_from {piece.revise_from} is past the end of the prompt "
                                     f"({len(self._text)} characters so far)", field="piece.revise_from")
            text = self._text[:piece.revise_from] + piece.text
        else:
            text = self._text + piece.text
        if len(text) > self._limits.max_question_chars:
            raise InvalidRequest(f"piece.text: the prompt is longer than {self._limits.max_question_chars} "
                                 f"characters (got {len(text)})", field="piece.text")
        self._text = text
        self.pieces += 1

    def question(self) -> str:
        check_question(self._text, self._limits, "piece.text")
        return self._text


# --- outbound ------------------------------------------------------------------------------------


def graph_to_pb(plan: Plan, settings: PlannerSettings, loaded: frozenset[Role]) -> pb.Graph:
    return pb.Graph(nodes=[node_to_pb(n, plan.route, settings, loaded) for n in plan.nodes],
                    route=_ROUTES_OUT[plan.route])


def node_to_pb(node: Node, route: Route, settings: PlannerSettings, loaded: frozenset[Role]) -> pb.Node:
    """A node with the model role it will run on (the one Expand keeps when the graph comes back)."""
    try:
        role = _ROLES_OUT[role_for(node, route, settings, loaded)]
    except RoleNotLoaded:  # nothing loaded (not reachable while serving): let the server choose later
        role = pb.MODEL_ROLE_UNSPECIFIED
    return pb.Node(id=node.id, title=node.title, depends_on=node.depends_on,
                   difficulty=_DIFFICULTY_OUT[node.difficulty], model_role=role, part=_PART_OUT[node.part],
                   max_tokens=node.max_tokens)


def timings_to_pb(t: ev.Timings) -> pb.Timings:
    return pb.Timings(route_s=t.route_s, plan_s=t.plan_s, first_token_s=t.first_token_s or 0.0, total_s=t.total_s)


def plan_response(plan: Plan, timings: ev.Timings, settings: PlannerSettings,
                  loaded: frozenset[Role]) -> pb.PlanResponse:
    return pb.PlanResponse(graph=graph_to_pb(plan, settings, loaded), reason=plan.reason, skeleton=plan.skeleton,
                           timings=timings_to_pb(timings))


def event_to_pb(event: ev.Event, settings: PlannerSettings, loaded: frozenset[Role]) -> pb.AnswerEvent:
    match event:
        case ev.NodePlanned(node=node, position=position, elapsed_s=elapsed):
            # a skeleton's point: its role follows its difficulty (any skeleton route says the same)
            return pb.AnswerEvent(node_planned=pb.NodePlanned(node=node_to_pb(node, Route.GRAPH, settings, loaded),
                                                              position=position, elapsed_s=elapsed))
        case ev.PlanReady(plan=plan, elapsed_s=elapsed):
            return pb.AnswerEvent(plan_ready=pb.PlanReady(graph=graph_to_pb(plan, settings, loaded),
                                                          reason=plan.reason, elapsed_s=elapsed))
        case ev.NodeStarted(node_id=node_id, role=role, parents=parents):
            return pb.AnswerEvent(node_started=pb.NodeStarted(node_id=node_id, model_role=_ROLES_OUT[role],
                                                              parents=parents))
        case ev.NodeDelta(node_id=node_id, text=text, tokens=tokens):
            return pb.AnswerEvent(node_delta=pb.NodeDelta(node_id=node_id, text=text, tokens=tokens))
        case ev.NodeFinished():
            return pb.AnswerEvent(node_finished=pb.NodeFinished(
                node_id=event.node_id, text=event.text, tokens=event.tokens,
                finish_reason=_FINISH_OUT.get(event.finish, pb.FINISH_REASON_UNSPECIFIED),
                elapsed_s=event.elapsed_s))
        case ev.NodeFailed():
            return pb.AnswerEvent(node_failed=pb.NodeFailed(node_id=event.node_id, reason=event.reason,
                                                            error=event.error, partial_text=event.partial_text))
        case ev.AnswerDone():
            usage = [pb.RoleUsage(model_role=_ROLES_OUT[u.role], calls=u.calls, prompt_tokens=u.prompt_tokens,
                                  reused_tokens=u.reused_tokens, completion_tokens=u.completion_tokens)
                     for u in event.usage.roles]
            return pb.AnswerEvent(answer_done=pb.AnswerDone(
                text=event.text, route=_ROUTES_OUT[event.route], usage=usage, timings=timings_to_pb(event.timings),
                failed_node_ids=event.failed))
    raise TypeError(f"not a planner event: {type(event).__name__}")


def progress_to_pb(progress: TypingProgress) -> pb.AnswerEvent:
    """What a Stream reports while its prompt arrives, and once more after the end marker."""
    return pb.AnswerEvent(prompt_progress=pb.PromptProgress(
        chars_received=progress.chars_received, tokens_prefilled=progress.tokens_prefilled,
        sentences=progress.sentences, note=progress.note))
