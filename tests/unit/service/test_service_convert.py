"""espalier.service.convert: requests -> planner inputs (with proto field names in errors), planner -> protobuf."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from espalier.planner import events as ev
from espalier.planner.conversation import NO_CONTEXT, Conversation
from espalier.planner.engine import FinishReason, InvalidRequest, Message, Role, RoleNotLoaded
from espalier.planner.plan import Difficulty, Mode, Node, Part, Plan, PlanInvalid, Route, framed
from espalier.planner.settings import DEFAULT_SETTINGS, PlannerSettings
from espalier.service import convert
from espalier.v1 import espalier_pb2 as pb

LIMITS = convert.Limits(max_question_chars=100, max_tokens=64)
BASE = PlannerSettings()
BOTH = frozenset({Role.LARGE, Role.SMALL})
EASY_SMALL = PlannerSettings(easy_role=Role.SMALL)  # so that roles differ (every point is large by default)


def node(i: int, title: str = "", deps: tuple[int, ...] = (), difficulty: int = pb.DIFFICULTY_HARD,
         role: int = pb.MODEL_ROLE_UNSPECIFIED) -> pb.Node:
    return pb.Node(id=i, title=title or f"point {i}", depends_on=deps, difficulty=difficulty, model_role=role)


def test_plan_to_graph_and_back_is_the_same_plan() -> None:
    plan = Plan.validated((Node(1, "Thrill", (), Difficulty.EASY), Node(2, "Brain", (1,)),
                           Node(3, "People", (1, 2))), Route.GRAPH, reason="r")
    graph = convert.graph_to_pb(plan, EASY_SMALL, BOTH)
    assert graph.route == pb.ROUTE_GRAPH
    assert [n.model_role for n in graph.nodes] == [pb.MODEL_ROLE_SMALL, pb.MODEL_ROLE_LARGE, pb.MODEL_ROLE_LARGE]
    wire = pb.Graph.FromString(graph.SerializeToString())
    back = convert.plan_from_graph(wire, 10, BOTH)
    # the roles Plan reported come back pinned: Expand runs each node where Plan said it would
    assert back.nodes == tuple(replace(n, role=r) for n, r in zip(plan.nodes, (Role.SMALL, Role.LARGE, Role.LARGE)))
    assert back.route is plan.route
    # small-only servers report the role a node will really run on
    assert {n.model_role for n in convert.graph_to_pb(plan, BASE, frozenset({Role.SMALL})).nodes} == {
        pb.MODEL_ROLE_SMALL}


def test_a_node_budget_travels_both_ways_and_is_bounded() -> None:
    plan = Plan.validated((Node(1, "Bubble sort in C++", max_tokens=50), Node(2, "Summary")), Route.PARALLEL)
    graph = convert.graph_to_pb(plan, BASE, BOTH)
    assert [n.max_tokens for n in graph.nodes] == [50, 0]
    back = convert.plan_from_graph(pb.Graph.FromString(graph.SerializeToString()), 10, BOTH, LIMITS.max_tokens)
    assert [n.max_tokens for n in back.nodes] == [50, 0]
    too_big = pb.Graph(nodes=[pb.Node(id=1, title="a", max_tokens=65), node(2)])
    with pytest.raises(PlanInvalid, match="at most 64") as err:
        convert.plan_from_graph(too_big, 10, BOTH, LIMITS.max_tokens)
    assert err.value.field == "graph.nodes[0].max_tokens"


def test_the_opening_and_closing_keep_their_part_both_ways() -> None:
    plan = Plan.validated(framed((Node(1, "A"), Node(2, "B"))), Route.PARALLEL)
    graph = convert.graph_to_pb(plan, BASE, BOTH)
    assert [n.part for n in graph.nodes] == [pb.NODE_PART_OPENING, pb.NODE_PART_POINT, pb.NODE_PART_POINT,
                                             pb.NODE_PART_CLOSING]
    back = convert.plan_from_graph(pb.Graph.FromString(graph.SerializeToString()), 2, BOTH)
    assert [n.part for n in back.nodes] == [Part.OPENING, Part.POINT, Part.POINT, Part.CLOSING]
    # a graph from a client that predates parts: every node a point
    assert convert.plan_from_graph(pb.Graph(nodes=[node(1), node(2)]), 10, BOTH).points == (
        Node(1, "point 1"), Node(2, "point 2"))


def test_unspecified_route_and_difficulty_take_their_documented_defaults() -> None:
    plan = convert.plan_from_graph(pb.Graph(nodes=[node(1, difficulty=pb.DIFFICULTY_UNSPECIFIED), node(2)]), 10, BOTH)
    assert plan.route is Route.PARALLEL and plan.nodes[0].difficulty is Difficulty.HARD
    plan = convert.plan_from_graph(pb.Graph(nodes=[node(1), node(2, deps=(1,))]), 10, BOTH)
    assert plan.route is Route.GRAPH


@pytest.mark.parametrize(("graph", "field", "words"), [
    (pb.Graph(nodes=[node(1, deps=(2,)), node(2, deps=(1,))], route=pb.ROUTE_GRAPH),
     "graph.nodes[0].depends_on", "cycle"),
    (pb.Graph(nodes=[node(1), node(2, deps=(7,))]), "graph.nodes[1].depends_on", "unknown node 7"),
    (pb.Graph(nodes=[node(i) for i in range(1, 12)]), "graph.nodes", "at most 10"),
    (pb.Graph(nodes=[]), "graph.nodes", "at least one"),
    (pb.Graph(nodes=[node(1), node(1)]), "graph.nodes[1].id", "used twice"),
    (pb.Graph(nodes=[node(0)]), "graph.nodes[0].id", "from 1"),
    (pb.Graph(nodes=[pb.Node(id=1, title="  ")]), "graph.nodes[0].title", "empty"),
    (pb.Graph(nodes=[node(1), node(2, deps=(1,))], route=pb.ROUTE_PARALLEL), "graph.nodes[1].depends_on",
     "no dependencies"),
    (pb.Graph(nodes=[node(1, difficulty=9)]), "graph.nodes[0].difficulty", "unknown value"),
    (pb.Graph(nodes=[node(1)], route=7), "graph.route", "unknown value"),
    (pb.Graph(nodes=[pb.Node(id=1, title="a", part=9)]), "graph.nodes[0].part", "unknown value"),
    (pb.Graph(nodes=[node(1), pb.Node(id=2, title="Opening", part=pb.NODE_PART_OPENING)]), "graph.nodes[1].part",
     "not the first"),
    (pb.Graph(nodes=[node(1), node(2, deps=(3,)), pb.Node(id=3, title="Closing", part=pb.NODE_PART_CLOSING)]),
     "graph.nodes[1].depends_on", "the answer's closing"),
])
def test_bad_graphs_raise_plan_invalid_naming_the_graph_field(graph: pb.Graph, field: str, words: str) -> None:
    with pytest.raises(PlanInvalid) as info:
        convert.plan_from_graph(graph, 10, BOTH)
    assert info.value.field == field
    assert words in str(info.value) and "plan." not in str(info.value)


def test_a_node_pinned_to_an_unloaded_role_is_a_failed_precondition() -> None:
    graph = pb.Graph(nodes=[node(1), node(2, role=pb.MODEL_ROLE_LARGE)])
    with pytest.raises(RoleNotLoaded, match=r"graph.nodes\[1\].model_role"):
        convert.plan_from_graph(graph, 10, frozenset({Role.SMALL}))
    plan = convert.plan_from_graph(graph, 10, BOTH)  # fine when loaded, and the choice is kept
    assert [n.role for n in plan.nodes] == [None, Role.LARGE]


def test_question_or_messages_bounded() -> None:
    assert convert.question_from("Why?", [], LIMITS) == ("Why?", NO_CONTEXT)
    msgs = [pb.ChatMessage(role="system", content="Be brief."), pb.ChatMessage(role="user", content="First?"),
            pb.ChatMessage(role="assistant", content="A."), pb.ChatMessage(role="user", content="Second?")]
    question, context = convert.question_from("", msgs, LIMITS)
    assert question == "Second?"
    assert context == Conversation("Be brief.", (Message("user", "First?"), Message("assistant", "A.")))
    cases = [(("", []), "question"), (("   ", []), "question"), (("x" * 101, []), "question"),
             (("Why?", msgs), "messages"), (("", [pb.ChatMessage(role="system", content="s")]), "messages[0].role"),
             (("", [pb.ChatMessage(role="robot", content="s")]), "messages[0].role"),
             (("", [pb.ChatMessage(role="robot", content="s"), pb.ChatMessage(role="user", content="q")]),
              "messages[0].role"),
             # the question must be last: a trailing assistant message is not silently dropped
             (("", [*msgs, pb.ChatMessage(role="assistant", content="B.")]), "messages[4].role"),
             (("", [pb.ChatMessage(role="user", content="")]), "messages[0].content")]
    for (question, messages), field in cases:
        with pytest.raises(InvalidRequest) as info:
            convert.question_from(question, messages, LIMITS)
        assert info.value.field == field, (question, messages)


def test_system_text_and_earlier_turns_are_bounded_naming_the_message_that_goes_over() -> None:
    limits = convert.Limits(max_question_chars=100, max_system_chars=10, max_history_chars=20)
    turn = pb.ChatMessage
    ok = [turn(role="system", content="x" * 6), turn(role="user", content="y" * 10),
          turn(role="system", content="x" * 4), turn(role="assistant", content="z" * 10), turn(role="user", content="q")]
    question, context = convert.question_from("", ok, limits)
    assert (question, context.system, len(context.history)) == ("q", "x" * 6 + "\n\n" + "x" * 4, 2)
    over_system = [*ok[:2], turn(role="system", content="x" * 5), turn(role="user", content="q")]
    over_history = [*ok[:4], turn(role="user", content="w"), turn(role="user", content="q")]
    for messages, field in ((over_system, "messages[2].content"), (over_history, "messages[4].content")):
        with pytest.raises(InvalidRequest) as info:
            convert.question_from("", messages, limits)
        assert info.value.field == field
    opened = convert.stream_open(pb.StreamOpen(system="In French.", history=ok[1:2]), DEFAULT_SETTINGS, limits)
    assert opened.context == Conversation("In French.", (Message("user", "y" * 10),))
    bad = [(pb.StreamOpen(system="s" * 11), "open.system"),
           (pb.StreamOpen(history=[turn(role="system", content="s")]), "open.history[0].role"),
           (pb.StreamOpen(history=[turn(role="user", content="y" * 21)]), "open.history[0].content")]
    for msg, field in bad:
        with pytest.raises(InvalidRequest) as info:
            convert.stream_open(msg, DEFAULT_SETTINGS, limits)
        assert info.value.field == field


def test_generation_settings_override_the_server_defaults() -> None:
    msg = pb.GenerationSettings(temperature=0.5, top_p=0.9, top_k=40, seed=7, point_max_tokens=12,
                                answer_max_tokens=20, max_points=3)
    s = convert.planner_settings(msg, BASE, LIMITS)
    assert math.isclose(s.sampling.temperature, 0.5) and math.isclose(s.sampling.top_p, 0.9, rel_tol=1e-6)
    assert (s.sampling.top_k, s.sampling.seed, s.point_max_tokens, s.direct_max_tokens, s.max_nodes) == (
        40, 7, 12, 20, 3)
    assert convert.planner_settings(pb.GenerationSettings(), BASE, LIMITS) is BASE  # unset = server default
    # an explicit 0 is a value, not "unset" (proto3 optional)
    assert convert.planner_settings(pb.GenerationSettings(temperature=0.0), PlannerSettings().replace(
        sampling=BASE.sampling.__class__(temperature=1.0)), LIMITS).sampling.temperature == 0.0


@pytest.mark.parametrize(("msg", "field"), [
    (pb.GenerationSettings(temperature=9), "settings.temperature"),
    (pb.GenerationSettings(temperature=float("nan")), "settings.temperature"),
    (pb.GenerationSettings(top_p=0), "settings.top_p"),
    (pb.GenerationSettings(top_k=-1), "settings.top_k"),
    (pb.GenerationSettings(point_max_tokens=0), "settings.point_max_tokens"),
    (pb.GenerationSettings(point_max_tokens=65), "settings.point_max_tokens"),  # over the server's cap
    (pb.GenerationSettings(answer_max_tokens=100000), "settings.answer_max_tokens"),
    (pb.GenerationSettings(max_points=1), "settings.max_points"),
    (pb.GenerationSettings(max_points=11), "settings.max_points"),
])
def test_bad_settings_name_the_proto_field(msg: pb.GenerationSettings, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        convert.planner_settings(msg, BASE, LIMITS)
    assert info.value.field == field and field in str(info.value)


def test_requests_convert_whole() -> None:
    call = convert.plan_request(pb.PlanRequest(question="Why?", mode=pb.MODE_SGD), BASE, LIMITS)
    assert (call.question, call.mode) == ("Why?", Mode.SGD)
    assert convert.mode_from(pb.MODE_UNSPECIFIED) is Mode.AUTO
    with pytest.raises(InvalidRequest, match="mode"):
        convert.plan_request(pb.PlanRequest(question="Why?", mode=42), BASE, LIMITS)
    req = pb.ExpandRequest(question="Why?", graph=pb.Graph(nodes=[node(i) for i in range(1, 5)]),
                           settings=pb.GenerationSettings(max_points=3))
    with pytest.raises(PlanInvalid, match="at most 3"):  # the request's own max_points bounds its graph
        convert.expand_request(req, BASE, LIMITS, BOTH)
    with pytest.raises(InvalidRequest) as info:
        convert.expand_request(pb.ExpandRequest(question="Why?"), BASE, LIMITS, BOTH)
    assert info.value.field == "graph"
    opened = convert.stream_open(pb.StreamOpen(mode=pb.MODE_DIRECT, settings=pb.GenerationSettings(top_k=3)),
                                 BASE, LIMITS)
    assert opened.mode is Mode.DIRECT and opened.settings.sampling.top_k == 3
    with pytest.raises(InvalidRequest) as info:
        convert.stream_open(pb.StreamOpen(settings=pb.GenerationSettings(top_k=-3)), BASE, LIMITS)
    assert info.value.field == "open.settings.top_k"


def test_prompt_buffer_appends_and_revises() -> None:
    buf = convert.PromptBuffer(LIMITS)
    buf.apply(pb.PromptPiece(text="What is the capital "))
    buf.apply(pb.PromptPiece(text="of Frence?"))
    buf.apply(pb.PromptPiece(text="France?", revise=True, revise_from=23))
    assert buf.question() == "What is the capital of France?"
    buf.apply(pb.PromptPiece(text="Ünïcödé", revise=True, revise_from=0))  # offsets are code points
    buf.apply(pb.PromptPiece(text="!", revise=True, revise_from=7))
    assert buf.text == "Ünïcödé!"
    with pytest.raises(InvalidRequest) as info:
        buf.apply(pb.PromptPiece(text="x", revise=True, revise_from=9))
    assert info.value.field == "piece.revise_from"
    with pytest.raises(InvalidRequest) as info:
        buf.apply(pb.PromptPiece(text="x" * 100))
    assert info.value.field == "piece.text" and buf.text == "Ünïcödé!"  # a refused piece changes nothing
    with pytest.raises(InvalidRequest):
        convert.PromptBuffer(LIMITS).question()  # nothing arrived


def test_events_convert_to_answer_events() -> None:
    plan = Plan.validated((Node(1, "A"), Node(2, "B", (1,), Difficulty.EASY)), Route.GRAPH, reason="why")
    usage = ev.Usage((ev.RoleUsage(Role.SMALL, 2, 30, 10, 8),))
    events = [
        ev.PlanReady(plan, 0.5), ev.NodeStarted(2, Role.SMALL, (1,)), ev.NodeDelta(2, "hi", 1),
        ev.NodeFinished(2, "hi", 1, FinishReason.LENGTH, 0.1), ev.NodeFailed(1, "boom", "EngineFault", "par"),
        ev.AnswerDone("1. A\n2. B hi", Route.GRAPH, usage, ev.Timings(0.1, 0.5, None, 0.9), (1,)),
    ]
    out = [convert.event_to_pb(e, EASY_SMALL, BOTH) for e in events]
    assert [o.WhichOneof("event") for o in out] == ["plan_ready", "node_started", "node_delta", "node_finished",
                                                    "node_failed", "answer_done"]
    assert out[0].plan_ready.reason == "why" and out[0].plan_ready.graph.nodes[1].model_role == pb.MODEL_ROLE_SMALL
    assert list(out[1].node_started.parents) == [1] and out[1].node_started.model_role == pb.MODEL_ROLE_SMALL
    assert out[3].node_finished.finish_reason == pb.FINISH_REASON_LENGTH
    assert out[4].node_failed.error == "EngineFault" and out[4].node_failed.partial_text == "par"
    done = out[5].answer_done
    assert done.route == pb.ROUTE_GRAPH and list(done.failed_node_ids) == [1]
    assert (done.usage[0].model_role, done.usage[0].reused_tokens, done.usage[0].completion_tokens) == (
        pb.MODEL_ROLE_SMALL, 10, 8)
    assert done.timings.first_token_s == 0.0 and done.timings.total_s == pytest.approx(0.9)
    with pytest.raises(TypeError):
        convert.event_to_pb("not an event", BASE, BOTH)  # type: ignore[arg-type]


def test_speculation_setting_maps_to_the_planner_and_refuses_unknown_values() -> None:
    from espalier.planner.engine import Speculation

    base = PlannerSettings()
    assert base.speculation is Speculation.DEFAULT
    out = convert.planner_settings(pb.GenerationSettings(speculation=pb.SPECULATION_OFF), base, convert.Limits())
    assert out.speculation is Speculation.OFF
    assert convert.planner_settings(pb.GenerationSettings(), base, convert.Limits()) is base
    with pytest.raises(InvalidRequest) as err:
        convert.planner_settings(pb.GenerationSettings(speculation=42), base, convert.Limits())  # type: ignore[arg-type]
    assert err.value.field == "settings.speculation"
