"""`espalier bench load` over a real grpc.aio server with the scripted fake engine: every scenario runs,
every bad input is refused with INVALID_ARGUMENT naming a field, the server is idle at the end; and
the stream check catches what it exists to catch."""

from __future__ import annotations

import asyncio

import pytest
from service_fakes import engine_with_skeletons, running, settings

from espalier.service.bench.load import (
    BAD_INPUTS,
    DEFAULT_MIX,
    LoadOptions,
    LoadRun,
    Problem,
    StreamCheck,
    ok,
)
from espalier.v1 import espalier_pb2 as pb


async def test_a_short_load_run_passes_and_every_bad_input_is_refused_with_its_field() -> None:
    config = settings(max_in_flight=2, max_waiting=2)  # small: some calls must wait for a slot
    async with running(config, engine_with_skeletons(delay=0.002)) as srv, asyncio.timeout(60):
        mix = {**DEFAULT_MIX, "bad-input": 6}
        run = LoadRun(LoadOptions(target="", clients=12, duration_s=4.0, mix=mix, seed=3), srv.channel,
                      progress=lambda line: None)
        summary = await run.run()
        # every kind of bad input, once each, refused the right way
        for name, make in BAD_INPUTS:
            record = await run._bad_input_named(name)
            assert record.outcome == "refused_ok", (name, record.detail)
    assert summary["failures"] == 0 and summary["lost_or_mixed"] == 0, summary["problems"]
    assert summary["still_answers"] and not summary["health_problems"]
    assert ok(summary)
    assert summary["outcomes"].get("answered", 0) > 0 and summary["outcomes"].get("refused_ok", 0) > 0
    assert set(summary["by_scenario"]) >= {"answer:direct", "cancel", "bad-input"}


def event(**kw: object) -> pb.AnswerEvent:
    return pb.AnswerEvent(**kw)


GRAPH = pb.Graph(route=pb.ROUTE_PARALLEL, nodes=[pb.Node(id=1, title="a"), pb.Node(id=2, title="b")])


def whole_answer() -> list[pb.AnswerEvent]:
    return [event(plan_ready=pb.PlanReady(graph=GRAPH)),
            event(node_started=pb.NodeStarted(node_id=1)), event(node_started=pb.NodeStarted(node_id=2)),
            event(node_delta=pb.NodeDelta(node_id=1, text="Hel")), event(node_delta=pb.NodeDelta(node_id=2, text="B")),
            event(node_delta=pb.NodeDelta(node_id=1, text="lo")),
            event(node_finished=pb.NodeFinished(node_id=1, text="Hello")),
            event(node_finished=pb.NodeFinished(node_id=2, text="B")),
            event(answer_done=pb.AnswerDone(text="Hello B"))]


def test_the_stream_check_passes_a_whole_answer() -> None:
    check = StreamCheck()
    for e in whole_answer():
        check.feed(e)
    check.complete()


@pytest.mark.parametrize(("broken", "words"), [
    (lambda es: es[:4] + [event(node_delta=pb.NodeDelta(node_id=9, text="x"))] + es[4:], "never planned"),
    (lambda es: es[:6] + [event(node_finished=pb.NodeFinished(node_id=1, text="Help"))] + es[7:], "do not join"),
    (lambda es: es + [event(node_delta=pb.NodeDelta(node_id=1, text="x"))], "after answer_done"),
    (lambda es: es[:7] + es[8:], "never ended"),
    (lambda es: es[:1] + es[3:], "before it started"),
    (lambda es: es[:1] + es, "a second plan_ready"),
], ids=["another call's node", "text that does not add up", "after the end", "a node never ended",
        "delta before start", "two plans"])
def test_the_stream_check_catches_a_broken_stream(broken, words) -> None:
    check = StreamCheck()
    with pytest.raises(Problem, match=words):
        for e in broken(whole_answer()):
            check.feed(e)
        check.complete()


async def test_a_full_server_is_waited_for_as_it_asks_and_nothing_counts_as_lost() -> None:
    # one request at a time and no queue: most calls are refused with a retry hint, some trailers-only
    config = settings(max_in_flight=1, max_waiting=0)
    async with running(config, engine_with_skeletons(delay=0.01)) as srv, asyncio.timeout(60):
        run = LoadRun(LoadOptions(target="", clients=6, duration_s=3.0, mix={"answer:direct": 1, "answer:sot": 1},
                                  seed=5), srv.channel, progress=lambda line: None)
        summary = await run.run()
    assert summary["busy_retries"] > 0 and summary["retry_after_ms_mean"] is not None
    assert summary["failures"] == 0 and summary["lost_or_mixed"] == 0, summary["problems"]
    assert summary["outcomes"].get("answered", 0) > 0
