"""The live answer view, fed with events and written to a StringIO."""

from __future__ import annotations

import io

from espalier.clients.python.live_view import LiveView
from espalier.v1 import espalier_pb2 as pb


def events() -> list[pb.AnswerEvent]:
    graph = pb.Graph(route=pb.ROUTE_GRAPH, nodes=[pb.Node(id=1, title="Causes"),
                                                  pb.Node(id=2, title="Effects", depends_on=[1])])
    return [
        pb.AnswerEvent(plan_ready=pb.PlanReady(graph=graph, reason="test")),
        pb.AnswerEvent(node_started=pb.NodeStarted(node_id=1, model_role=pb.MODEL_ROLE_SMALL)),
        pb.AnswerEvent(node_delta=pb.NodeDelta(node_id=1, text="Heat ", tokens=1)),
        pb.AnswerEvent(node_delta=pb.NodeDelta(node_id=1, text="rises.", tokens=2)),
        pb.AnswerEvent(node_finished=pb.NodeFinished(node_id=1, text="Heat rises.", tokens=3)),
        pb.AnswerEvent(node_started=pb.NodeStarted(node_id=2, model_role=pb.MODEL_ROLE_LARGE, parents=[1])),
        pb.AnswerEvent(node_failed=pb.NodeFailed(node_id=2, reason="cancelled", partial_text="Ice")),
        pb.AnswerEvent(answer_done=pb.AnswerDone(route=pb.ROUTE_GRAPH, failed_node_ids=[2],
                                                 usage=[pb.RoleUsage(model_role=pb.MODEL_ROLE_SMALL,
                                                                     completion_tokens=3)],
                                                 timings=pb.Timings(plan_s=0.5, first_token_s=0.7, total_s=1.5))),
    ]


def test_live_view_redraws_in_place_then_prints_the_answer():
    out = io.StringIO()
    view = LiveView(out, live=True)
    for ev in events()[:4]:
        view.update(ev)
    live = view.live_lines()
    assert any("1. Causes" in line and "[small]" in line for line in live)
    assert any("2. Effects (after 1)" in line for line in live)
    assert any("Heat rises." in line for line in live)
    for ev in events()[4:]:
        view.update(ev)
    view.finish()
    text = out.getvalue()
    assert "\x1b[" in text  # redrawn in place
    final = text.rsplit("\x1b[J", 1)[-1]
    assert "1. Causes\nHeat rises." in final
    assert "Ice [failed: cancelled]" in final
    assert "mode: point graph | 2 point(s) | wall 1.5s" in final and "3 tokens, 2.0 tok/s" in final
    assert "1 point(s) failed" in final


def test_without_a_terminal_only_the_answer_is_printed():
    out = io.StringIO()
    view = LiveView(out, live=False)
    for ev in events():
        view.update(ev)
    view.finish()
    assert "\x1b[" not in out.getvalue()
    assert out.getvalue().startswith("1. Causes\nHeat rises.\n")


def test_the_opening_and_closing_are_paragraphs_without_a_number():
    graph = pb.Graph(route=pb.ROUTE_PARALLEL, nodes=[
        pb.Node(id=3, title="Opening", part=pb.NODE_PART_OPENING), pb.Node(id=1, title="Causes"),
        pb.Node(id=2, title="Effects"), pb.Node(id=4, title="Closing", part=pb.NODE_PART_CLOSING)])
    out = io.StringIO()
    view = LiveView(out, live=False)
    view.update(pb.AnswerEvent(plan_ready=pb.PlanReady(graph=graph)))
    for node_id, text in ((3, "In short:"), (1, "Heat."), (2, "Ice."), (4, "So it goes.")):
        view.update(pb.AnswerEvent(node_finished=pb.NodeFinished(node_id=node_id, text=text, tokens=1)))
    assert any(line.endswith(" Opening") for line in view.live_lines())
    view.update(pb.AnswerEvent(answer_done=pb.AnswerDone(route=pb.ROUTE_PARALLEL, timings=pb.Timings(total_s=1))))
    view.finish()
    assert out.getvalue().startswith("In short:\n\n1. Causes\nHeat.\n\n2. Effects\nIce.\n\nSo it goes.\n")
    assert "| 2 point(s) |" in out.getvalue()


def test_wrapping_keeps_line_breaks_lists_and_code_blocks() -> None:
    from espalier.clients.python.live_view import wrap_text

    text = ("Bubble sort swaps neighbours until the list is sorted, which takes quadratic time on average.\n"
            "```cpp\nvoid sort(std::vector<int>& v) {   // a line longer than the width stays whole\n}\n```\n"
            "\n- first item of a list that is long enough to wrap onto a second line\n- second")
    lines = wrap_text(text, 40)
    assert lines[0].startswith("Bubble sort") and all(len(x) <= 40 for x in lines if "//" not in x)
    assert "void sort(std::vector<int>& v) {   // a line longer than the width stays whole" in lines
    assert "```cpp" in lines and "" in lines  # the fence and the blank line are kept
    item = lines.index("- first item of a list that is long")
    assert lines[item + 1].startswith("  ") and lines[-1] == "- second"  # a wrapped item hangs under its text


def test_the_outline_grows_before_the_plan_is_ready() -> None:
    view = LiveView(io.StringIO(), live=False)
    view.update(pb.AnswerEvent(node_planned=pb.NodePlanned(node=pb.Node(id=1, title="Causes"), position=1)))
    assert [line for line in view.live_lines()[1:]] == [".. 1. Causes"]
    view.update(pb.AnswerEvent(node_planned=pb.NodePlanned(node=pb.Node(id=2, title="Effects", depends_on=[1]),
                                                           position=2)))
    assert view.live_lines()[0].endswith("planning") and view.live_lines()[2] == ".. 2. Effects (after 1)"
    for event in events():  # the plan replaces the outline with the final graph
        view.update(event)
    assert "1. Causes" in view.final_lines() and "2. Effects" in view.final_lines()


def test_a_point_started_before_the_plan_keeps_its_text() -> None:
    view = LiveView(io.StringIO(), live=False)
    view.update(pb.AnswerEvent(node_planned=pb.NodePlanned(node=pb.Node(id=1, title="Causes"), position=1)))
    view.update(pb.AnswerEvent(node_started=pb.NodeStarted(node_id=1, model_role=pb.MODEL_ROLE_LARGE)))
    view.update(pb.AnswerEvent(node_delta=pb.NodeDelta(node_id=1, text="Heat ", tokens=1)))
    view.update(events()[0])  # plan_ready
    point = view.state.points[1]
    assert (point.status, point.text, point.number, point.role) == ("writing", "Heat ", 1, "large")
