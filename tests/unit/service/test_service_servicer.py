"""EspalierServicer over the scripted fake engine, through a real grpc.aio server on port 0.

Covers each RPC end to end, the status of every failure the servicer maps (engine fault, unexpected
exception, loading, full queue, role not loaded, Stream protocol errors), request ids, and that a
cancelled call frees the engine's sequences and its admission slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from grpc_health.v1 import health_pb2
from metric_samples import at, samples
from service_fakes import QUESTION, FakeEngine, engine_with_skeletons, running, settings

from espalier.planner.engine import EngineFault, Role
from espalier.service import errors
from espalier.v1 import espalier_pb2 as pb

C = grpc.StatusCode


def kinds(responses: Sequence[pb.ExpandResponse | pb.StreamResponse]) -> list[str]:
    return [r.event.WhichOneof("event") for r in responses]


async def collect(call: AsyncIterator[pb.ExpandResponse]) -> list[pb.ExpandResponse]:
    return [r async for r in call]


async def idle(servicer: object, engine: FakeEngine, timeout: float = 3.0) -> None:
    """Wait until no engine sequence is open and admission is empty."""
    async with asyncio.timeout(timeout):
        while engine.open_sequences or not servicer.admission.stats().idle:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)
        assert await servicer.wait_idle(timeout)  # type: ignore[attr-defined]  # handlers returned, metrics in


async def test_plan_then_expand_an_edited_graph_then_stream() -> None:
    engine = engine_with_skeletons()
    async with running(settings(), engine) as srv, asyncio.timeout(10):
        call = srv.stub.Plan(pb.PlanRequest(question=QUESTION, mode=pb.MODE_SGD),
                             metadata=((errors.REQUEST_ID_KEY, "client-id-1"),))
        plan = await call
        assert (errors.REQUEST_ID_KEY, "client-id-1") in tuple(await call.initial_metadata())
        assert plan.graph.route == pb.ROUTE_GRAPH and [n.title for n in plan.graph.nodes] == [
            "Opening", "Thrill of fear", "Brain chemistry", "Personality differences"]  # no closing by default
        assert [n.part for n in plan.graph.nodes] == [pb.NODE_PART_OPENING] + [pb.NODE_PART_POINT] * 3
        assert plan.skeleton.startswith("1. Thrill") and plan.timings.plan_s > 0
        # every point on the large model by default, the easy one too
        assert [n.model_role for n in plan.graph.nodes] == [pb.MODEL_ROLE_LARGE] * 4

        graph = pb.Graph()
        graph.CopyFrom(plan.graph)
        del graph.nodes[3]  # edit: drop the last point, rename one
        graph.nodes[2].title = "How the brain reacts"
        call = srv.stub.Expand(pb.ExpandRequest(question=QUESTION, graph=graph))
        events = await collect(call)
        rid = dict(await call.initial_metadata())[errors.REQUEST_ID_KEY]
        assert len(rid) == 16  # generated when the caller sent none
        assert kinds(events)[0] == "plan_ready" and kinds(events)[-1] == "answer_done"
        assert [n.title for n in events[0].event.plan_ready.graph.nodes] == [
            "Opening", "Thrill of fear", "How the brain reacts"]
        done = events[-1].event.answer_done
        assert "2. **How the brain reacts**" in done.text and "Personality" not in done.text
        assert done.text.startswith("Some helpful text.\n\n1. **Thrill of fear**: ")  # the opening, kept
        assert not done.failed_node_ids and sum(u.completion_tokens for u in done.usage) > 0

        stream = srv.stub.Stream()
        await stream.write(pb.StreamRequest(open=pb.StreamOpen(mode=pb.MODE_DIRECT)))
        await stream.write(pb.StreamRequest(piece=pb.PromptPiece(text="What is the capital of Frence")))
        await stream.write(pb.StreamRequest(piece=pb.PromptPiece(text="France?", revise=True, revise_from=23)))
        await stream.write(pb.StreamRequest(end=pb.StreamEnd()))
        await stream.done_writing()
        out = [r async for r in stream]
        assert kinds(out)[:2] == ["prompt_progress", "plan_ready"] and kinds(out)[-1] == "answer_done"
        assert out[0].event.prompt_progress.chars_received == len("What is the capital of France?")
        assert out[-1].event.answer_done.route == pb.ROUTE_DIRECT
        assert any(c.full_prompt.count("What is the capital of France?") for c in engine.calls)
        await idle(srv.servicer, engine)


async def test_an_engine_fault_fails_that_request_with_internal_and_the_server_keeps_serving() -> None:
    engine = engine_with_skeletons()
    engine.scripts.insert(0, engine.script("BREAK-ME", "never", fail_after=0, error=EngineFault("decode -3")))
    engine.scripts.pop()  # script() also appended it; keep it first only
    engine.scripts.insert(1, engine.script("BOOM-ME", "never", fail_after=0, error=RuntimeError("/secret/path")))
    engine.scripts.pop()
    async with running(settings(), engine) as srv, asyncio.timeout(10):
        for marker, words in (("BREAK-ME", "decoder failed"), ("BOOM-ME", "internal error")):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await srv.stub.Plan(pb.PlanRequest(question=f"{QUESTION} {marker}", mode=pb.MODE_SOT))
            assert info.value.code() is C.INTERNAL
            assert words in info.value.details() and "secret" not in info.value.details()
            assert "-3" not in info.value.details()
        ok = await srv.stub.Plan(pb.PlanRequest(question=QUESTION, mode=pb.MODE_SOT))
        assert len(ok.graph.nodes) == 3 + 1  # and the opening
        health = await srv.health.Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        await idle(srv.servicer, engine)
        got = samples(srv.parts.metrics.registry.render())
        assert got[at("espalier_requests_total", method="Plan", code="INTERNAL")] == 2
        assert got[at("espalier_requests_total", method="Plan", code="OK")] == 1


async def test_a_failing_point_is_reported_in_the_stream_not_as_a_call_error() -> None:
    engine = engine_with_skeletons()
    engine.script_point(2, "half a", fail_after=1)
    graph = pb.Graph(nodes=[pb.Node(id=1, title="Thrill of fear"), pb.Node(id=2, title="Brain chemistry")])
    async with running(settings(), engine) as srv, asyncio.timeout(10):
        events = await collect(srv.stub.Expand(pb.ExpandRequest(question=QUESTION, graph=graph)))
        failed = [e.event.node_failed for e in events if e.event.WhichOneof("event") == "node_failed"]
        assert [f.node_id for f in failed] == [2] and failed[0].error == "EngineFault"
        assert list(events[-1].event.answer_done.failed_node_ids) == [2]


@pytest.mark.parametrize(("request_", "field"), [
    (pb.PlanRequest(question=""), "question"),
    (pb.PlanRequest(question="x" * 200), "question"),
    (pb.PlanRequest(question="Why?", settings=pb.GenerationSettings(temperature=7)), "settings.temperature"),
    (pb.PlanRequest(question="Why?", mode=99), "mode"),
])
async def test_bad_plan_requests_are_invalid_argument_naming_the_field(request_: pb.PlanRequest,
                                                                       field: str) -> None:
    engine = engine_with_skeletons()
    async with running(settings(max_question_chars=100), engine) as srv, asyncio.timeout(10):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await srv.stub.Plan(request_)
        assert info.value.code() is C.INVALID_ARGUMENT
        assert info.value.details().startswith(field)
        assert (errors.FIELD_KEY, field) in tuple(info.value.trailing_metadata())
        assert engine.calls == []  # refused before any work


async def test_a_node_on_an_unloaded_role_is_failed_precondition() -> None:
    engine = FakeEngine(roles=(Role.SMALL,))
    graph = pb.Graph(nodes=[pb.Node(id=1, title="A"), pb.Node(id=2, title="B", model_role=pb.MODEL_ROLE_LARGE)])
    async with running(settings(small_only=True), engine) as srv, asyncio.timeout(10):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(srv.stub.Expand(pb.ExpandRequest(question=QUESTION, graph=graph)))
        assert info.value.code() is C.FAILED_PRECONDITION and "large" in info.value.details()


async def test_calls_while_loading_are_unavailable() -> None:
    async with running(settings(), None, serving=False) as srv, asyncio.timeout(10):
        health = await srv.health.Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        for call in (srv.stub.Plan(pb.PlanRequest(question=QUESTION)),
                     collect(srv.stub.Expand(pb.ExpandRequest(question=QUESTION)))):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() is C.UNAVAILABLE and "loading" in info.value.details()


async def test_a_full_admission_queue_is_resource_exhausted_with_a_retry_hint() -> None:
    engine = engine_with_skeletons()
    hold = asyncio.Event()
    engine.scripts.insert(0, engine.script("HOLD", " A\n2. B\n", hold=hold))
    engine.scripts.pop()
    async with running(settings(max_in_flight=1, max_waiting=1), engine) as srv, asyncio.timeout(10):
        held = [asyncio.ensure_future(srv.stub.Plan(pb.PlanRequest(question=f"{QUESTION} HOLD", mode=pb.MODE_SOT)))
                for _ in range(2)]
        while srv.servicer.admission.stats().waiting < 1:
            await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await srv.stub.Plan(pb.PlanRequest(question=QUESTION, mode=pb.MODE_SOT))
        assert info.value.code() is C.RESOURCE_EXHAUSTED
        retry = dict(info.value.trailing_metadata())[errors.RETRY_AFTER_KEY]
        assert int(retry) > 0
        hold.set()
        for plan in await asyncio.gather(*held):
            assert [n.title for n in plan.graph.nodes] == ["Opening", "A", "B"]
        await idle(srv.servicer, engine)
        assert srv.servicer.admission.stats().rejected == 1


async def test_client_cancel_and_deadline_free_the_engine_and_the_slot() -> None:
    engine = engine_with_skeletons(delay=0.02, default_reply=" ".join(["word"] * 500))
    graph = pb.Graph(nodes=[pb.Node(id=1, title="A"), pb.Node(id=2, title="B")])
    config = settings(planner=settings().planner.replace(point_max_tokens=1000))
    async with running(config, engine) as srv, asyncio.timeout(10):
        call = srv.stub.Expand(pb.ExpandRequest(question=QUESTION, graph=graph))
        async for response in call:
            if response.event.WhichOneof("event") == "node_delta":
                break
        assert engine.open_sequences > 0
        call.cancel()
        await idle(srv.servicer, engine)

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(srv.stub.Expand(pb.ExpandRequest(question=QUESTION, graph=graph), timeout=0.3))
        assert info.value.code() is C.DEADLINE_EXCEEDED
        await idle(srv.servicer, engine)
        assert all(c.closed for c in engine.calls)
        requests = srv.parts.metrics.requests
        # the server tells a deadline from a cancel by the time left, which network delay blurs
        assert requests.value("Expand", "CANCELLED") >= 1
        assert requests.value("Expand", "CANCELLED") + requests.value("Expand", "DEADLINE_EXCEEDED") == 2


async def _stream_status(srv, messages: Sequence[pb.StreamRequest], *, close: bool = True,  # type: ignore[no-untyped-def]
                         pause: float = 0.0) -> tuple[grpc.StatusCode, str, list[str]]:
    call = srv.stub.Stream()
    for m in messages:
        await call.write(m)
        if pause:
            await asyncio.sleep(pause)
    if close:
        await call.done_writing()
    got: list[str] = []
    try:
        async for r in call:
            got.append(r.event.WhichOneof("event"))
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", got
    return await call.code(), "", got


async def test_stream_protocol_errors_are_invalid_argument() -> None:
    engine = engine_with_skeletons(delay=0.05)
    o = pb.StreamRequest(open=pb.StreamOpen(mode=pb.MODE_DIRECT))
    p = pb.StreamRequest(piece=pb.PromptPiece(text="Why is the sky blue?"))
    e = pb.StreamRequest(end=pb.StreamEnd())
    async with running(settings(max_question_chars=100), engine) as srv, asyncio.timeout(20):
        cases = [
            ([p, o, e], "piece: the first message must be open"),
            ([e], "end: the first message must be open"),
            ([pb.StreamRequest()], "open: the first message must be open"),
            ([o, p, o, e], "open: the stream is already open"),
            ([o, p], "end: the stream closed before its end marker"),
            ([o, e], "piece.text must not be empty"),
            ([o, pb.StreamRequest(piece=pb.PromptPiece(text="x" * 101))], "piece.text: the prompt is longer"),
            ([o, p, pb.StreamRequest(piece=pb.PromptPiece(text="a", revise=True, revise_from=999))],
             "piece.revise_from"),
            ([pb.StreamRequest(open=pb.StreamOpen(settings=pb.GenerationSettings(top_p=2)))], "open.settings.top_p"),
        ]
        for messages, words in cases:
            code, details, _ = await _stream_status(srv, messages)
            assert code is C.INVALID_ARGUMENT and details.startswith(words), (messages, details)
        # a piece after the end: the answer has started; it is cut short and the call fails
        code, details, got = await _stream_status(srv, [o, p, e, p], pause=0.05)
        assert code is C.INVALID_ARGUMENT and details.startswith("piece: nothing may follow the end marker")
        assert "answer_done" not in got
        await idle(srv.servicer, engine)
        assert srv.servicer.streams.stats().idle


async def test_stream_after_end_may_half_close_late() -> None:
    # a client that keeps its side open after the end marker (but sends nothing) still gets its answer
    engine = engine_with_skeletons()
    o = pb.StreamRequest(open=pb.StreamOpen(mode=pb.MODE_DIRECT))
    async with running(settings(), engine) as srv, asyncio.timeout(10):
        code, _, got = await _stream_status(
            srv, [o, pb.StreamRequest(piece=pb.PromptPiece(text="Why?")), pb.StreamRequest(end=pb.StreamEnd())],
            close=False)
        assert code is C.OK and got[-1] == "answer_done"


async def test_the_servers_own_time_limit_is_deadline_exceeded_and_frees_the_engine() -> None:
    engine = engine_with_skeletons(delay=0.05, default_reply=" ".join(["word"] * 500))
    config = settings(max_request_s=0.3, planner=settings().planner.replace(point_max_tokens=1000))
    graph = pb.Graph(nodes=[pb.Node(id=1, title="A"), pb.Node(id=2, title="B")])
    async with running(config, engine) as srv, asyncio.timeout(10):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(srv.stub.Expand(pb.ExpandRequest(question=QUESTION, graph=graph)))
        assert info.value.code() is C.DEADLINE_EXCEEDED and "max_request_s" in info.value.details()
        await idle(srv.servicer, engine)


async def test_answer_streams_the_outline_then_the_points_in_one_call() -> None:
    engine = engine_with_skeletons(delay=0.002)
    async with running(settings(), engine) as srv, asyncio.timeout(10):
        call = srv.stub.Answer(pb.AnswerRequest(question=QUESTION, mode=pb.MODE_SOT),
                               metadata=((errors.REQUEST_ID_KEY, "answer-1"),))
        events = [r.event async for r in call]
        assert dict(await call.initial_metadata())[errors.REQUEST_ID_KEY] == "answer-1"
        kinds_seen = [e.WhichOneof("event") for e in events]
        assert kinds_seen[:4] == ["node_planned"] * 3 + ["plan_ready"] and kinds_seen[-1] == "answer_done"
        outline = [e.node_planned for e in events[:3]]
        assert [(p.position, p.node.title) for p in outline] == [
            (1, "Thrill of fear"), (2, "Brain chemistry"), (3, "Personality differences")]
        assert all(p.node.model_role == pb.MODEL_ROLE_LARGE and p.elapsed_s > 0 for p in outline)
        points = [n for n in events[3].plan_ready.graph.nodes if n.part == pb.NODE_PART_POINT]
        assert [(n.id, n.title) for n in points] == [(p.node.id, p.node.title) for p in outline]
        assert "1. **Thrill of fear**" in events[-1].answer_done.text
        # a bad request is refused before any work, as Plan refuses it
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(srv.stub.Answer(pb.AnswerRequest(question="  ")))
        assert info.value.code() is C.INVALID_ARGUMENT
        await idle(srv.servicer, engine)
        assert samples(srv.parts.metrics.registry.render())[at("espalier_requests_total", method="Answer", code="OK")] == 1


async def test_points_started_while_the_skeleton_is_written_are_counted() -> None:
    engine = engine_with_skeletons(delay=0.002)
    engine.scripts.insert(0, engine.script("You are an organizer", " Thrill of fear\n2. Brain chemistry\n"
                                           "3. Personality differences\n", delay=0.03))
    engine.scripts.pop()
    planner = settings().planner.replace(early_points=2)
    async with running(settings(planner=planner), engine) as srv, asyncio.timeout(10):
        events = [r.event async for r in srv.stub.Answer(pb.AnswerRequest(question=QUESTION, mode=pb.MODE_SOT))]
        kinds_seen = [e.WhichOneof("event") for e in events]
        ready = kinds_seen.index("plan_ready")
        assert kinds_seen[:ready].count("node_started") == 2  # before the plan: the outline's first two points
        assert "2 point(s) started while the skeleton was written" in events[ready].plan_ready.reason
        await idle(srv.servicer, engine)
        assert samples(srv.parts.metrics.registry.render())[at("espalier_points_started_early_total",
                                                              method="Answer")] == 2
