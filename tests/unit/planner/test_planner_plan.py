"""Plan validation (the rules the service relies on for INVALID_ARGUMENT) and settings validation."""

from __future__ import annotations

from typing import Any

import pytest

from espalier.planner.engine import EngineError, InvalidRequest, Role, Sampling
from espalier.planner.plan import Difficulty, Mode, Node, Part, Plan, PlanInvalid, Route, framed
from espalier.planner.settings import PlannerSettings


def n(i: int, *deps: int, title: str = "", d: Difficulty = Difficulty.HARD) -> Node:
    return Node(i, title or f"Point {i}", tuple(deps), d)


def test_valid_graph_and_topological_order() -> None:
    plan = Plan.validated([n(1), n(2, 3), n(3, 1), n(4)], Route.GRAPH)
    order = plan.topological_order()
    assert order == (1, 3, 2, 4)
    assert plan.position(3) == 3 and plan.node(2).depends_on == (3,)


def test_edge_free_plan_keeps_skeleton_order() -> None:
    plan = Plan.validated([n(5), n(2), n(9)], Route.PARALLEL)
    assert plan.topological_order() == (5, 2, 9)


@pytest.mark.parametrize(
    "nodes,route,field",
    [
        ([], Route.GRAPH, "plan.nodes"),
        ([n(1), n(1)], Route.GRAPH, "plan.nodes[1].id"),
        ([n(0)], Route.GRAPH, "plan.nodes[0].id"),
        ([n(1), n(2, 7)], Route.GRAPH, "plan.nodes[1].depends_on"),
        ([n(1, 1)], Route.GRAPH, "plan.nodes[0].depends_on"),
        ([n(1), n(2, 1, 1)], Route.GRAPH, "plan.nodes[1].depends_on"),
        ([n(1, 3), n(2, 1), n(3, 2)], Route.GRAPH, "plan.nodes[0].depends_on"),
        ([n(1), n(2, 1)], Route.PARALLEL, "plan.nodes[1].depends_on"),
        ([n(1), n(2)], Route.DIRECT, "plan.nodes"),
        ([Node(1, "  ")], Route.GRAPH, "plan.nodes[0].title"),
        ([Node(1, "x" * 301)], Route.GRAPH, "plan.nodes[0].title"),
        ([Node(1, "a", (), "easy")], Route.GRAPH, "plan.nodes[0].difficulty"),  # type: ignore[arg-type]
        ([n(i) for i in range(1, 12)], Route.PARALLEL, "plan.nodes"),
        ([n(1)], "tree", "plan.route"),
        # the frame: an opening first and needing nothing, a closing last, nothing needing either
        ([n(1), Node(2, "Opening", part=Part.OPENING)], Route.PARALLEL, "plan.nodes[1].part"),
        ([Node(2, "Closing", part=Part.CLOSING), n(1)], Route.PARALLEL, "plan.nodes[0].part"),
        ([Node(2, "Opening", (1,), part=Part.OPENING), n(1)], Route.GRAPH, "plan.nodes[0].depends_on"),
        ([n(1), n(2, 3), Node(3, "Closing", part=Part.CLOSING)], Route.GRAPH, "plan.nodes[1].depends_on"),
        ([Node(1, "Opening", part=Part.OPENING), Node(2, "Closing", part=Part.CLOSING)], Route.PARALLEL,
         "plan.nodes"),  # no point at all
        ([Node(1, "a", part="intro")], Route.PARALLEL, "plan.nodes[0].part"),  # type: ignore[arg-type]
        ([Node(1, "Opening", part=Part.OPENING)], Route.DIRECT, "plan.nodes"),
    ],
)
def test_invalid_plans_name_the_field(nodes: list[Node], route: Route, field: str) -> None:
    with pytest.raises(PlanInvalid) as info:
        Plan.validated(nodes, route)
    assert info.value.field == field
    assert isinstance(info.value, InvalidRequest) and isinstance(info.value, EngineError)


def test_cycle_message_shows_the_path() -> None:
    with pytest.raises(PlanInvalid, match=r"cycle: 1 -> 3 -> 2 -> 1"):
        Plan.validated([n(1, 3), n(2, 1), n(3, 2)], Route.GRAPH)


def test_max_nodes_is_configurable() -> None:
    nodes = [n(i) for i in range(1, 13)]
    assert len(Plan.validated(nodes, Route.PARALLEL, max_nodes=12).nodes) == 12
    with pytest.raises(PlanInvalid):
        Plan.validated(nodes[:3], Route.PARALLEL, max_nodes=2)


def test_the_frame_surrounds_the_points_and_is_not_counted_or_numbered() -> None:
    nodes = framed([n(1), n(2, 1), n(3, d=Difficulty.EASY)])
    assert [(x.id, x.part, x.difficulty) for x in nodes] == [
        (4, Part.OPENING, Difficulty.HARD), (1, Part.POINT, Difficulty.HARD), (2, Part.POINT, Difficulty.HARD),
        (3, Part.POINT, Difficulty.EASY), (5, Part.CLOSING, Difficulty.HARD)]  # the frame is the large model's
    plan = Plan.validated(nodes, Route.GRAPH, max_nodes=3)  # max_nodes counts points only
    assert [x.id for x in plan.points] == [1, 2, 3]
    assert [plan.position(i) for i in (4, 1, 2, 3, 5)] == [0, 1, 2, 3, 0]
    with pytest.raises(KeyError):
        plan.position(9)
    # a closing may be written after the points it sums up
    Plan.validated([*nodes[:-1], Node(5, "Closing", (1, 3), part=Part.CLOSING)], Route.GRAPH)


def test_direct_plan_and_modes() -> None:
    plan = Plan.direct("why")
    assert Plan.validated(plan.nodes, plan.route) == Plan(plan.nodes, Route.DIRECT)
    assert Mode("sgd").forced_route is Route.GRAPH and Mode.AUTO.forced_route is None
    assert Mode.SOT.forced_route is Route.PARALLEL and Mode.DIRECT.forced_route is Route.DIRECT


def test_settings_validate() -> None:
    s = PlannerSettings()
    assert s.validate() is s
    assert s.replace(point_max_tokens=24).point_max_tokens == 24
    cases: list[tuple[dict[str, Any], str]] = [
        ({"point_max_tokens": 0}, "planner.point_max_tokens"),
        ({"max_nodes": 100}, "planner.max_nodes"),
        ({"min_nodes": 5, "max_nodes": 4}, "planner.min_nodes"),
        ({"easy_role": "tiny"}, "planner.easy_role"),
        ({"use_router_model": 1}, "planner.use_router_model"),
        ({"sampling": Sampling(temperature=9.0)}, "planner.sampling.temperature"),
        ({"max_concurrency": True}, "planner.max_concurrency"),
    ]
    for changes, field in cases:
        with pytest.raises(InvalidRequest) as info:
            s.replace(**changes)
        assert info.value.field == field
    assert PlannerSettings(skeleton_role=Role.SMALL).validate().skeleton_role is Role.SMALL


def test_max_depth_cuts_chains_keeping_shallow_parents() -> None:
    chain = Plan.validated((Node(1, "a"), Node(2, "b", (1,)), Node(3, "c", (2,)), Node(4, "d", (2, 3)),
                            Node(5, "e", (1,))), Route.GRAPH)
    cut = chain.with_max_depth(2)
    assert [n.depends_on for n in cut.nodes] == [(), (1,), (), (3,), (1,)]
    assert [n.depends_on for n in chain.with_max_depth(1).nodes] == [()] * 5
    assert chain.with_max_depth(4) == chain


def test_depth_counts_the_stages_of_the_longest_chain() -> None:
    plan = Plan.validated([Node(1, "a"), Node(2, "b", (1,)), Node(3, "c", (2,)), Node(4, "d")], Route.GRAPH)
    assert plan.depth() == 3 and plan.with_max_depth(2).depth() == 2
    assert Plan.direct().depth() == 1
