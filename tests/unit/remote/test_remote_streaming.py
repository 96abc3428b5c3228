"""RemoteEngine against scripted HTTP servers on the loopback: streaming, retries before the first
token only, error mapping, timeouts, and connections closed when a sequence is closed or cancelled."""

from __future__ import annotations

import asyncio

import pytest
from remote_fakes import (
    Received,
    ScriptedServer,
    dead_url,
    drain,
    end_stream,
    endless,
    engine_for,
    event,
    hang,
    send_chunk,
    start_stream,
    status,
    stream_of,
)

from espalier.planner.engine import (
    EngineClosed,
    EngineFault,
    Exhausted,
    FinishReason,
    GenerateRequest,
    InvalidRequest,
    Message,
    Role,
    RoleNotLoaded,
    Sampling,
)
from espalier.service.remote.remote_engine import RemoteEngine, RemotePrefix

HELLO = [event("Hel"), event("lo"), event(" world", "stop",
                                          usage={"prompt_tokens": 7, "completion_tokens": 5,
                                                 "prompt_tokens_details": {"cached_tokens": 3}})]


def request(prompt: str = "Say hello", **kw: object) -> GenerateRequest:
    return GenerateRequest(prompt, Role.LARGE, Sampling(max_tokens=8), **kw)  # type: ignore[arg-type]


async def test_streams_text_and_takes_counts_from_usage() -> None:
    async with ScriptedServer(stream_of(HELLO)) as server:
        engine = engine_for(server.url, model="qwen", api_key="k3y")
        prefix = engine.prefix(Role.LARGE, "<|im_start|>user\n")
        assert await prefix.ready() == 0
        chunks = await drain(engine.generate(request("Say hello", prefix=prefix)))
    assert "".join(c.text for c in chunks) == "Hello world"
    assert [c.finish for c in chunks] == [None, None, FinishReason.STOP]
    assert sum(c.tokens for c in chunks) == 5  # the server's count, not the three events
    assert (chunks[-1].prompt_tokens, chunks[-1].reused_tokens) == (7, 3)
    (req,) = server.received
    assert (req.method, req.path) == ("POST", "/v1/completions")
    assert req.headers["authorization"] == "Bearer k3y"
    assert req.body["prompt"] == "<|im_start|>user\nSay hello" and req.body["model"] == "qwen"
    assert req.body["stream"] is True and req.body["max_tokens"] == 8 and req.body["cache_prompt"] is True
    stats = engine.stats().role(Role.LARGE)
    assert stats is not None
    assert (stats.generated_tokens, stats.prefilled_tokens, stats.reused_tokens, stats.slots_busy) == (5, 4, 3, 0)


async def test_usage_in_its_own_event_after_the_finish() -> None:
    pieces = [event("A"), event("", "length"),
              b'data: {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}\n\n']
    async with ScriptedServer(stream_of(pieces)) as server:
        chunks = await drain(engine_for(server.url).generate(request()))
    assert "".join(c.text for c in chunks) == "A"
    assert chunks[-1].finish is FinishReason.LENGTH and chunks[-1].prompt_tokens == 4
    assert sum(c.tokens for c in chunks) == 2


async def test_refused_server_is_skipped_and_then_passed_over() -> None:
    dead = dead_url()
    async with ScriptedServer(stream_of(HELLO)) as server:
        engine = engine_for(dead, server.url)
        for _ in range(2):
            chunks = await drain(engine.generate(request()))
            assert "".join(c.text for c in chunks) == "Hello world"
        pool = engine._roles[Role.LARGE].pool
    assert [e.errors for e in pool.endpoints] == [1, 0]
    assert [e.requests for e in pool.endpoints] == [1, 2]  # ejected after its failure: not tried again
    assert len(server.received) == 2 and pool.outstanding == 0


async def test_busy_server_is_retried_elsewhere_and_all_busy_is_exhausted() -> None:
    async with ScriptedServer(status(503, {"error": {"message": "loading model"}})) as busy, \
            ScriptedServer(stream_of(HELLO)) as live:
        chunks = await drain(engine_for(busy.url, live.url).generate(request()))
        assert chunks[-1].finish is FinishReason.STOP
        with pytest.raises(Exhausted, match="loading model"):
            await drain(engine_for(busy.url, dead_url()).generate(request()))
        with pytest.raises(EngineFault, match=r"no large server answered \(2 tried\)"):
            await drain(engine_for(dead_url(), dead_url()).generate(request()))


async def test_retries_are_bounded() -> None:
    async with ScriptedServer(status(502, {})) as a, ScriptedServer(status(502, {})) as b, \
            ScriptedServer(status(502, {})) as c:
        with pytest.raises(EngineFault, match=r"\(2 tried\)"):
            await drain(engine_for(a.url, b.url, c.url, retries=1).generate(request()))
        assert len(a.received) + len(b.received) + len(c.received) == 2


async def test_bad_request_is_invalid_and_not_retried() -> None:
    body = {"error": {"message": "the prompt is longer than the context", "type": "invalid_request_error"}}
    async with ScriptedServer(status(400, body)) as a, ScriptedServer(status(400, body)) as b:
        with pytest.raises(InvalidRequest, match="longer than the context"):
            await drain(engine_for(a.url, b.url).generate(request()))
        assert len(a.received) + len(b.received) == 1


async def test_failure_after_text_is_not_retried() -> None:
    async def two_then_reset(req: Received, writer: asyncio.StreamWriter) -> None:
        start_stream(writer)
        for text in ("one", " two"):
            send_chunk(writer, event(text))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    async with ScriptedServer(two_then_reset) as broken, ScriptedServer(stream_of(HELLO)) as live:
        got: list[str] = []
        with pytest.raises(EngineFault, match="connection|HTTP"):
            async for chunk in engine_for(broken.url, live.url).generate(request()):
                got.append(chunk.text)
        assert got == ["one", " two"] and live.received == []


async def test_first_byte_timeout_moves_on_and_frees_the_slow_server() -> None:
    async with ScriptedServer(hang) as slow, ScriptedServer(stream_of(HELLO)) as live:
        chunks = await drain(engine_for(slow.url, live.url, first_byte_timeout_s=0.3).generate(request()))
        assert chunks[-1].finish is FinishReason.STOP
        await asyncio.wait_for(slow.received[0].gone.wait(), 2)  # our connection to it was closed


async def test_idle_timeout_fails_the_sequence() -> None:
    async with ScriptedServer(stream_of([event("a"), event("b")], end=False)) as server:
        stream = engine_for(server.url, idle_timeout_s=0.2).generate(request())
        with pytest.raises(EngineFault, match="idle_timeout_s=0.2s after 2 tokens"):
            await drain(stream)
        await asyncio.wait_for(server.received[0].gone.wait(), 2)


async def test_closing_the_iterator_closes_the_connection() -> None:
    async with ScriptedServer(endless) as server:
        engine = engine_for(server.url)
        stream = engine.generate(request())
        async for _ in stream:
            break
        assert engine.stats().slots_busy == 1
        await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(server.received[0].gone.wait(), 1)
        assert engine.stats().slots_busy == 0 and engine.free_slots(Role.LARGE) == 4


async def test_cancelling_the_consumer_closes_the_connection() -> None:
    async with ScriptedServer(endless) as server:
        engine = engine_for(server.url)
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in engine.generate(request()):
                started.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.received[0].gone.wait(), 1)
        assert engine.stats().slots_busy == 0


async def test_stream_ending_without_a_finish_reason_is_a_fault() -> None:
    # what llama-cpp-python's server sends a request that a newer one interrupted
    async with ScriptedServer(stream_of([event("partial")])) as server:
        with pytest.raises(EngineFault, match="without a finish reason"):
            await drain(engine_for(server.url).generate(request()))


async def test_server_error_inside_the_stream_is_a_fault() -> None:
    async def fails(req: Received, writer: asyncio.StreamWriter) -> None:
        start_stream(writer)
        send_chunk(writer, event("a"))
        send_chunk(writer, b'error: {"code": 500, "message": "KV cache full"}\n\n')
        end_stream(writer)

    async with ScriptedServer(fails) as server:
        with pytest.raises(EngineFault, match="KV cache full"):
            await drain(engine_for(server.url).generate(request()))


async def test_a_json_answer_is_not_taken_for_a_stream() -> None:
    async with ScriptedServer(status(200, {"choices": [{"text": "all at once"}]})) as server:
        with pytest.raises(EngineFault, match="not an event stream"):
            await drain(engine_for(server.url).generate(request()))


async def test_request_checks_and_roles() -> None:
    engine = engine_for("http://127.0.0.1:9/v1")
    assert engine.roles() == frozenset({Role.LARGE})
    with pytest.raises(RoleNotLoaded, match="small role has no remote servers"):
        await drain(engine.generate(GenerateRequest("x", Role.SMALL)))
    with pytest.raises(RoleNotLoaded):
        engine.chat_prompt(Role.SMALL, [])
    with pytest.raises(InvalidRequest, match="prompt is empty"):
        await drain(engine.generate(request("")))
    with pytest.raises(InvalidRequest, match="sampling.top_p"):
        await drain(engine.generate(GenerateRequest("x", Role.LARGE, Sampling(top_p=0))))
    with pytest.raises(InvalidRequest, match="token ids"):
        await drain(engine.generate(GenerateRequest([1, 2], Role.LARGE, prefix=RemotePrefix(Role.LARGE, "p"))))
    with pytest.raises(InvalidRequest, match="another engine or role"):
        await drain(engine.generate(request(prefix=RemotePrefix(Role.SMALL, "p"))))
    with pytest.raises(ValueError, match="URLs"):
        RemoteEngine({})


async def test_free_slots_and_stats_follow_open_sequences() -> None:
    async with ScriptedServer(endless) as a, ScriptedServer(endless) as b:
        engine = engine_for(a.url, b.url, slots=2)
        streams = [engine.generate(request()) for _ in range(3)]
        for s in streams:
            await anext(s)  # type: ignore[call-overload]
        stats = engine.stats().role(Role.LARGE)
        assert stats is not None and (stats.slots_total, stats.slots_busy, stats.queue_depth) == (4, 3, 0)
        assert engine.free_slots(Role.LARGE) == 1
        assert (len(a.received), len(b.received)) == (2, 1)  # spread by least outstanding
        for s in streams:
            await s.aclose()  # type: ignore[attr-defined]
        assert engine.free_slots(Role.LARGE) == 4


async def test_aclose_ends_open_sequences_and_refuses_new_ones() -> None:
    async with ScriptedServer(endless) as server:
        engine = engine_for(server.url)
        stream = engine.generate(request())
        await anext(stream)  # type: ignore[call-overload]
        await engine.aclose(0.1)
        with pytest.raises(EngineClosed):
            await drain(stream)
        with pytest.raises(EngineClosed):
            await drain(engine.generate(request()))
        await asyncio.wait_for(server.received[0].gone.wait(), 1)


async def test_probe_reports_each_server() -> None:
    models = status(200, {"data": [{"id": "m"}]})
    async with ScriptedServer(models) as server:
        dead = dead_url()
        found = await engine_for(server.url, dead).probe()
        assert found[server.url] == "ok" and "refused" in found[dead].lower()
    assert server.received[0].method == "GET" and server.received[0].path == "/v1/models"


def test_chat_templates() -> None:
    msgs = [Message("system", "Be brief."), Message("user", " Hi ")]
    chatml = engine_for("http://h/v1").chat_prompt(Role.LARGE, msgs)
    assert chatml == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi <|im_end|>\n"
                      "<|im_start|>assistant\n")
    llama3 = engine_for("http://h/v1", chat_template="llama3").chat_prompt(Role.LARGE, msgs,
                                                                             add_generation_prompt=False)
    assert llama3 == ("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>")


async def test_token_id_prompts_travel_as_a_list() -> None:
    async with ScriptedServer(stream_of(HELLO)) as server:
        await drain(engine_for(server.url).generate(GenerateRequest([1, 2, 3], Role.LARGE)))
    assert server.received[0].body["prompt"] == [1, 2, 3]


async def test_a_callers_system_text_and_earlier_turns_reach_the_remote_server() -> None:
    """The planner formats the conversation into the prompt (Engine.chat_prompt, the role's template), so a
    remote server receives the same turns the embedded engine decodes."""
    from contextlib import aclosing

    from espalier.planner import pipeline
    from espalier.planner.conversation import Conversation
    from espalier.planner.settings import PlannerSettings

    context = Conversation("Always answer in French.", (Message("user", "Name a planet."), Message("assistant", "Venus.")))
    async with ScriptedServer(stream_of(HELLO)) as server:
        engine = engine_for(server.url, model="qwen")
        settings = PlannerSettings(direct_role=Role.LARGE)
        async with aclosing(pipeline.answer(engine, "What is it like?", "direct", settings, context=context)) as events:
            [e async for e in events]
    (req,) = server.received
    prompt = req.body["prompt"]
    assert prompt.index("Always answer in French.") < prompt.index("<|im_start|>user\nName a planet.<|im_end|>") \
        < prompt.index("<|im_start|>assistant\nVenus.<|im_end|>") < prompt.index("What is it like?")


async def test_top_logprobs_are_checked_as_every_engine_checks_them() -> None:
    engine = engine_for("http://127.0.0.1:9/v1")
    with pytest.raises(InvalidRequest) as info:
        await drain(engine.generate(request(top_logprobs=999)))
    assert info.value.field == "top_logprobs"
