"""The gRPC server end to end on the real small model: a real grpc.aio server on port 0, the generated
stubs over an insecure channel, a small-only LlamaEngine with 4 slots.

One engine is loaded per module (with the planner's resident prefixes); each test builds its own
server around it in its own event loop (building is cheap; the engine's worker threads serve any
loop). Budgets are tiny so that the module stays short on a shared 2-core CPU: skeletons of 48
tokens, points of 12, direct answers of 16.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from metric_samples import at, samples

from espalier.planner.settings import PlannerSettings
from espalier.service import errors
from espalier.service.engine.config import ContextConfig, EngineConfig
from espalier.service.engine.llama_engine import LlamaEngine
from espalier.service.server import Server, build, serve, warm_up
from espalier.service.settings import ServerSettings
from espalier.v1 import espalier_pb2 as pb
from espalier.v1 import espalier_pb2_grpc

pytestmark = pytest.mark.model

C = grpc.StatusCode
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PLANNER = PlannerSettings(point_max_tokens=12, skeleton_max_tokens=48, direct_max_tokens=16, max_nodes=4)
CONFIG = ServerSettings(port=0, metrics_port=-1, small_only=True, planner=PLANNER, max_in_flight=4,
                        max_waiting=16, max_question_chars=2000).validate()
QUESTION = "How can I improve my time management skills?"
LONG = "Write a long, detailed story about a dragon who learns to bake bread."
TIMEOUT = 240  # the CPU is shared with other work; these bound a hang, not a speed


def engine_config(model: Path, slots: int = 4, n_ctx: int = 4096) -> EngineConfig:
    return EngineConfig(small=ContextConfig(model=str(model), slots=slots, n_ctx=n_ctx, n_batch=256, threads=2))


@pytest.fixture(scope="module")
def engine(small_model: Path) -> Iterator[LlamaEngine]:
    async def load() -> LlamaEngine:
        loaded = await LlamaEngine.load(engine_config(small_model))
        await warm_up(loaded, CONFIG.planner)
        return loaded

    loaded = asyncio.run(load())
    yield loaded
    asyncio.run(loaded.aclose(0))


@dataclass
class Live:
    parts: Server
    stub: espalier_pb2_grpc.EspalierServiceStub
    health: health_pb2_grpc.HealthStub


@asynccontextmanager
async def serving(engine: LlamaEngine, **changes: Any) -> AsyncIterator[Live]:
    parts = await build(dataclasses.replace(CONFIG, **changes), engine)
    await parts.set_serving(True)
    await parts.server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{parts.port}") as channel:
            yield Live(parts, espalier_pb2_grpc.EspalierServiceStub(channel), health_pb2_grpc.HealthStub(channel))
    finally:
        await parts.server.stop(0)
        await parts.servicer.wait_idle(30)


async def settle(live: Live, engine: LlamaEngine, timeout: float = 60) -> None:
    """Wait until the engine has no busy slot and no queue, and admission is empty."""
    async with asyncio.timeout(timeout):
        while True:
            stats = engine.stats()
            if stats.slots_busy == 0 and stats.queue_depth == 0 and live.parts.servicer.admission.stats().idle:
                break
            await asyncio.sleep(0.05)
        assert await live.parts.servicer.wait_idle(timeout)


def kind(response: pb.ExpandResponse | pb.StreamResponse) -> str:
    return str(response.event.WhichOneof("event"))


async def read_all(call: Any) -> list[Any]:
    return [r async for r in call]


def check_answer(events: list[Any], graph: pb.Graph) -> pb.AnswerDone:
    """PlanReady first, AnswerDone last; per node Started, Deltas, Finished; deltas add up to the text."""
    assert kind(events[0]) == "plan_ready" and kind(events[-1]) == "answer_done"
    ready = events[0].event.plan_ready.graph
    assert [(n.id, n.title, list(n.depends_on)) for n in ready.nodes] == [
        (n.id, n.title, list(n.depends_on)) for n in graph.nodes]
    for n in graph.nodes:
        mine = [e for e in events[1:-1] if getattr(e.event, kind(e)).node_id == n.id]
        assert kind(mine[0]) == "node_started" and mine[0].event.node_started.model_role == pb.MODEL_ROLE_SMALL
        assert kind(mine[-1]) == "node_finished", [kind(e) for e in mine]
        assert all(kind(e) == "node_delta" for e in mine[1:-1])
        assert "".join(e.event.node_delta.text for e in mine[1:-1]) == mine[-1].event.node_finished.text
    done = events[-1].event.answer_done
    assert not done.failed_node_ids and done.text.strip()
    return done


# --- each RPC end to end ------------------------------------------------------------------------------


async def test_plan_then_expand_an_edited_graph(engine: LlamaEngine) -> None:
    async with serving(engine) as live, asyncio.timeout(TIMEOUT):
        call = live.stub.Plan(pb.PlanRequest(question=QUESTION, mode=pb.MODE_SOT,
                                             settings=pb.GenerationSettings(max_points=3)),
                              metadata=((errors.REQUEST_ID_KEY, "plan-1"),))
        plan = await call
        assert dict(await call.initial_metadata())[errors.REQUEST_ID_KEY] == "plan-1"
        assert plan.timings.plan_s > 0
        if plan.graph.route == pb.ROUTE_PARALLEL:
            points = [n for n in plan.graph.nodes if n.part == pb.NODE_PART_POINT]
            assert 2 <= len(points) <= 3 and plan.skeleton.startswith("1.")
            # an opening, then the points (a closing only with planner.closing on)
            assert [n.part for n in plan.graph.nodes] == [pb.NODE_PART_OPENING, *[n.part for n in points]]
            titles = [n.title for n in points[:2]]
        else:  # the small model wrote no usable skeleton: still a valid plan, edit a graph of our own
            assert plan.graph.route == pb.ROUTE_DIRECT and len(plan.graph.nodes) == 1
            titles = ["Set priorities", "Plan the day"]
        # the caller's edit: two points, the second renamed and building on the first
        graph = pb.Graph(route=pb.ROUTE_GRAPH, nodes=[
            pb.Node(id=1, title=titles[0], difficulty=pb.DIFFICULTY_EASY),
            pb.Node(id=2, title=f"{titles[1]} in practice", depends_on=[1]),
        ])
        events = await read_all(live.stub.Expand(pb.ExpandRequest(question=QUESTION, graph=graph)))
        done = check_answer(events, graph)
        started = [e.event.node_started for e in events if kind(e) == "node_started"]
        assert [list(s.parents) for s in started] == [[], [1]]  # node 2 saw node 1's text
        assert f"2. **{titles[1]} in practice**" in done.text
        assert done.route == pb.ROUTE_GRAPH
        small = next(u for u in done.usage if u.model_role == pb.MODEL_ROLE_SMALL)
        assert small.completion_tokens > 0 and small.calls == 2
        await settle(live, engine)


async def test_stream_plans_and_expands_after_the_end_marker(engine: LlamaEngine) -> None:
    async with serving(engine) as live, asyncio.timeout(TIMEOUT):
        call = live.stub.Stream()
        await call.write(pb.StreamRequest(open=pb.StreamOpen(mode=pb.MODE_DIRECT)))
        for piece in (pb.PromptPiece(text="What is the capital "), pb.PromptPiece(text="of Itly?"),
                      pb.PromptPiece(text="Italy?", revise=True, revise_from=23)):
            await call.write(pb.StreamRequest(piece=piece))
        await call.write(pb.StreamRequest(end=pb.StreamEnd()))
        await call.done_writing()
        events = []
        while (r := await call.read()) is not grpc.aio.EOF:
            events.append(r)
        assert kind(events[0]) == "prompt_progress"
        assert events[0].event.prompt_progress.chars_received == len("What is the capital of Italy?")
        done = check_answer(events[1:], pb.Graph(nodes=[pb.Node(id=1, title="Answer")]))
        assert done.route == pb.ROUTE_DIRECT and done.timings.first_token_s > 0
        await settle(live, engine)


# --- every status code, provoked on purpose ---------------------------------------------------------


async def expect(code: grpc.StatusCode, awaitable: Any, words: str = "") -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    assert info.value.code() is code, info.value.details()
    assert words in (info.value.details() or ""), info.value.details()
    return info.value


async def test_bad_requests_are_refused_with_the_documented_codes(engine: LlamaEngine) -> None:
    def graph(*nodes: pb.Node, route: int = pb.ROUTE_UNSPECIFIED) -> pb.Graph:
        return pb.Graph(nodes=nodes, route=route)

    n = pb.Node
    async with serving(engine) as live, asyncio.timeout(TIMEOUT):
        s = live.stub
        await expect(C.INVALID_ARGUMENT, s.Plan(pb.PlanRequest(question="  ")), "question must not be empty")
        err = await expect(C.INVALID_ARGUMENT, s.Plan(pb.PlanRequest(question="x" * 2001)), "longer than 2000")
        assert (errors.FIELD_KEY, "question") in tuple(err.trailing_metadata())
        await expect(C.INVALID_ARGUMENT, s.Plan(pb.PlanRequest(
            question=QUESTION, settings=pb.GenerationSettings(temperature=9.5))), "settings.temperature")
        await expect(C.INVALID_ARGUMENT, s.Plan(pb.PlanRequest(
            question=QUESTION, settings=pb.GenerationSettings(top_p=0))), "settings.top_p")
        cases = [
            (graph(n(id=1, title="A", depends_on=[2]), n(id=2, title="B", depends_on=[1])),
             "graph.nodes[0].depends_on: dependencies form a cycle"),
            (graph(n(id=1, title="A"), n(id=2, title="B", depends_on=[9])),
             "graph.nodes[1].depends_on: node 2 depends on unknown node 9"),
            (graph(*(n(id=i, title=f"P{i}") for i in range(1, 6))), "at most 4 points"),
        ]
        for bad, words in cases:
            await expect(C.INVALID_ARGUMENT, read_all(s.Expand(pb.ExpandRequest(question=QUESTION, graph=bad))),
                         words)
        await expect(C.FAILED_PRECONDITION, read_all(s.Expand(pb.ExpandRequest(
            question=QUESTION, graph=graph(n(id=1, title="A", model_role=pb.MODEL_ROLE_LARGE))))),
            "the large model is not loaded")

        # Stream: a piece before open, and a piece after the end (the answer has started by then)
        call = s.Stream()
        await call.write(pb.StreamRequest(piece=pb.PromptPiece(text="Hi")))
        await expect(C.INVALID_ARGUMENT, call.read(), "piece: the first message must be open")
        call = s.Stream()
        # a long answer, so it is still being written when the stray piece arrives (16 tokens were not)
        opened = pb.StreamOpen(mode=pb.MODE_DIRECT, settings=pb.GenerationSettings(answer_max_tokens=400))
        for m in (pb.StreamRequest(open=opened),
                  pb.StreamRequest(piece=pb.PromptPiece(text=LONG)), pb.StreamRequest(end=pb.StreamEnd())):
            await call.write(m)
        assert kind(await call.read()) == "prompt_progress"  # the prompt is complete, the answer starts
        await call.write(pb.StreamRequest(piece=pb.PromptPiece(text=" And a cat.")))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            while await call.read() is not grpc.aio.EOF:
                pass
        assert info.value.code() is C.INVALID_ARGUMENT
        assert info.value.details().startswith("piece: nothing may follow the end marker")
        await settle(live, engine)


async def test_a_full_admission_queue_is_resource_exhausted_with_a_retry_hint(engine: LlamaEngine) -> None:
    async with serving(engine, max_in_flight=1, max_waiting=0) as live, asyncio.timeout(TIMEOUT):
        long = live.stub.Expand(pb.ExpandRequest(
            question=LONG, graph=pb.Graph(nodes=[pb.Node(id=1, title="Answer")], route=pb.ROUTE_DIRECT),
            settings=pb.GenerationSettings(answer_max_tokens=400)))
        assert kind(await long.read()) == "plan_ready"  # admitted and running
        err = await expect(C.RESOURCE_EXHAUSTED, live.stub.Plan(pb.PlanRequest(question=QUESTION,
                                                                               mode=pb.MODE_DIRECT)))
        assert int(dict(err.trailing_metadata())[errors.RETRY_AFTER_KEY]) > 0
        long.cancel()
        await settle(live, engine)
        # the slot is back: the same call now succeeds
        plan = await live.stub.Plan(pb.PlanRequest(question=QUESTION, mode=pb.MODE_DIRECT))
        assert plan.graph.route == pb.ROUTE_DIRECT


async def test_a_client_deadline_mid_stream_and_a_client_cancel_free_the_slots(engine: LlamaEngine) -> None:
    # a direct answer: a point ends at its first line, which may come before the deadline
    request = pb.ExpandRequest(question=LONG, graph=pb.Graph(nodes=[pb.Node(id=1, title="Answer")],
                                                             route=pb.ROUTE_DIRECT),
                               settings=pb.GenerationSettings(answer_max_tokens=400))
    async with serving(engine) as live, asyncio.timeout(TIMEOUT):
        call = live.stub.Expand(request, timeout=4)
        got: list[str] = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for r in call:
                got.append(kind(r))
        assert info.value.code() is C.DEADLINE_EXCEEDED and got[0] == "plan_ready" and "answer_done" not in got
        await settle(live, engine)

        call = live.stub.Expand(request)
        async for r in call:
            if kind(r) == "node_delta":
                break
        assert engine.stats().slots_busy > 0
        call.cancel()
        await settle(live, engine)


async def test_twenty_concurrent_expands_stay_apart_and_the_server_returns_to_idle(engine: LlamaEngine) -> None:
    codes = [f"K{i:02d}X" for i in range(20)]

    async def one(live: Live, code: str) -> tuple[str, pb.AnswerDone]:
        question = f"Reply with only this code and nothing else: {code}"
        graph = pb.Graph(nodes=[pb.Node(id=1, title="Answer")], route=pb.ROUTE_DIRECT)
        events = await read_all(live.stub.Expand(pb.ExpandRequest(
            question=question, graph=graph, settings=pb.GenerationSettings(answer_max_tokens=8))))
        done = check_answer(events, graph)
        finished = next(e.event.node_finished for e in events if kind(e) == "node_finished")
        assert done.text == finished.text.strip()
        return code, done

    async with serving(engine) as live, asyncio.timeout(TIMEOUT):
        results = await asyncio.gather(*(one(live, code) for code in codes))
        for code, done in results:
            others = [c for c in codes if c != code and c in done.text]
            assert not others, (code, done.text)  # no stream carries another stream's text
        echoed = sum(code in done.text for code, done in results)
        assert echoed >= 15, [d.text for _, d in results]  # the model follows; a slip or two is the model's
        reused = sum(u.reused_tokens for _, d in results for u in d.usage)
        assert reused > 0  # the resident template prefix was forked, not prefilled 20 times
        await settle(live, engine)
        stats = live.parts.servicer.admission.stats()
        assert stats.admitted == 20 and stats.rejected == 0
        got = samples(live.parts.metrics.registry.render())
        assert got[at("espalier_requests_total", method="Expand", code="OK")] == 20
        assert got[at("espalier_engine_slots_busy", role="small")] == 0 and got[at("espalier_requests_waiting")] == 0


# --- health while loading -------------------------------------------------------------------------------


async def test_health_is_not_serving_while_the_models_load(small_model: Path) -> None:
    release, stop = asyncio.Event(), asyncio.Event()
    ports: dict[str, int] = {}
    loaded: list[LlamaEngine] = []

    async def load(_settings: ServerSettings) -> LlamaEngine:
        await release.wait()  # the model load, held until the test has looked
        engine = await LlamaEngine.load(engine_config(small_model, slots=1, n_ctx=1024))
        loaded.append(engine)
        return engine

    config = dataclasses.replace(CONFIG, resident_prefixes=False)
    task = asyncio.create_task(serve(config, load_engine=load, stop=stop, install_signals=False,
                                     on_listening=lambda port, _m: ports.update(port=port)))
    async with asyncio.timeout(TIMEOUT):
        while not ports:
            await asyncio.sleep(0.01)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['port']}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = espalier_pb2_grpc.EspalierServiceStub(channel)
            assert (await health.Check(health_pb2.HealthCheckRequest())).status == NOT_SERVING
            await expect(C.UNAVAILABLE, stub.Plan(pb.PlanRequest(question=QUESTION)), "loading")
            release.set()
            while (await health.Check(health_pb2.HealthCheckRequest())).status != SERVING:
                await asyncio.sleep(0.05)
            events = await read_all(stub.Expand(pb.ExpandRequest(
                question="Say hi.", graph=pb.Graph(nodes=[pb.Node(id=1, title="Answer")], route=pb.ROUTE_DIRECT),
                settings=pb.GenerationSettings(answer_max_tokens=4))))
            assert kind(events[-1]) == "answer_done"
        stop.set()
        assert await task == 0
    assert loaded and not loaded[0].roles()  # shut down: the engine was drained and closed


async def test_a_fault_inside_one_sequence_fails_that_request_alone(engine: LlamaEngine, monkeypatch) -> None:
    """An exception while sampling one sequence (injected for the request with seed 4242) fails that
    request's node, reported in its own stream (node_failed, then answer_done listing it: a failing
    point never takes down a call); the requests decoding in the same batches finish untouched, and
    the server goes on answering."""
    from espalier.service.engine import worker

    sample = worker.ContextWorker._sample

    def faulty(self: Any, job: Any, index: int) -> None:
        if job.sampling.seed == 4242:
            raise RuntimeError("injected fault")
        sample(self, job, index)

    monkeypatch.setattr(worker.ContextWorker, "_sample", faulty)

    def ask(seed: int) -> Any:
        settings = pb.GenerationSettings(seed=seed, answer_max_tokens=24)
        return read_all(live.stub.Answer(pb.AnswerRequest(question="Name a colour.", mode=pb.MODE_DIRECT,
                                                          settings=settings), timeout=120))

    async with serving(engine) as live, asyncio.timeout(180):
        fine_1, faulted, fine_2 = await asyncio.gather(ask(1), ask(4242), ask(2))
        kinds = [kind(r) for r in faulted]
        assert "node_failed" in kinds and "node_finished" not in kinds, kinds
        assert list(faulted[-1].event.answer_done.failed_node_ids) == [1]
        for answer in (fine_1, fine_2):
            assert "node_failed" not in [kind(r) for r in answer]
            assert kind(answer[-1]) == "answer_done" and answer[-1].event.answer_done.text.strip()
            assert not answer[-1].event.answer_done.failed_node_ids
        again = await ask(3)
        assert kind(again[-1]) == "answer_done" and not again[-1].event.answer_done.failed_node_ids
        await settle(live, engine)
