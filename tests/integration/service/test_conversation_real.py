"""The caller's system text and conversation shape the answer: a real server on port 0, the small model,
the Python client. A system message asking for French gives French (direct, every point of a skeleton
answer, a streamed prompt); a follow-up is answered about what it refers to; a long conversation is
prefilled once per answer, not once per point.

Language is told by common function words (the small model's French is rough, but it is French).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest

from espalier.clients.python.client import EspalierClient, settings
from espalier.planner import prompts
from espalier.planner.conversation import Conversation
from espalier.planner.engine import Message, Role
from espalier.planner.plan import Node, Plan, Route
from espalier.planner.settings import PlannerSettings
from espalier.service.server import build
from espalier.service.settings import ServerSettings
from espalier.v1 import espalier_pb2 as pb

pytestmark = pytest.mark.model

PLANNER = PlannerSettings(point_max_tokens=28, skeleton_max_tokens=64, direct_max_tokens=40, max_nodes=4)
CONFIG = ServerSettings(port=0, metrics_port=-1, small_only=True, planner=PLANNER).validate()
FRENCH = "Always answer in French."
HEALTH = "What are some tips for staying healthy while working from home?"

_FR = {"le", "la", "les", "des", "est", "et", "pour", "une", "un", "vous", "de", "du", "en", "à", "dans", "que",
       "qui", "sur", "avec", "pas", "plus", "votre", "vos", "sont", "peut", "ce", "cette", "au", "aux", "faites"}
_EN = {"the", "and", "is", "to", "of", "for", "you", "your", "are", "with", "that", "in", "can", "it", "this",
       "on", "a", "an", "be", "or", "by", "as", "get", "stay", "take"}


def french(text: str) -> bool:
    words = re.findall(r"[a-zà-ÿ]+", text.lower())
    return sum(w in _FR for w in words) > sum(w in _EN for w in words)


@asynccontextmanager
async def client_of(engine) -> AsyncIterator[EspalierClient]:  # type: ignore[no-untyped-def]
    parts = await build(CONFIG, engine)
    await parts.set_serving(True)
    await parts.server.start()
    try:
        async with EspalierClient(f"127.0.0.1:{parts.port}") as client:
            yield client
    finally:
        await parts.server.stop(0)


def test_the_language_check_tells_french_from_english() -> None:
    assert french("Voici quelques conseils pour rester en bonne santé : faites des pauses.")
    assert not french("Here are some tips for staying healthy: take regular breaks.")


async def test_a_system_message_asking_for_french_gives_french_direct_and_in_every_point(small_engine) -> None:
    async with asyncio.timeout(300), client_of(small_engine) as client:
        direct = [e async for e in client.ask(HEALTH, mode="direct", system=FRENCH)]
        skeleton = [e async for e in client.ask(HEALTH, mode="sot", system=FRENCH)]
        plain = [e async for e in client.ask(HEALTH, mode="direct")]
    assert french(direct[-1].answer_done.text), direct[-1].answer_done.text
    assert not french(plain[-1].answer_done.text)  # the same question without it: English, so it was the message
    done = skeleton[-1].answer_done
    assert done.route == pb.ROUTE_PARALLEL and not done.failed_node_ids, done.text
    graph = next(e.plan_ready.graph for e in skeleton if e.WhichOneof("event") == "plan_ready")
    texts = {e.node_finished.node_id: e.node_finished.text for e in skeleton
             if e.WhichOneof("event") == "node_finished"}
    points = [n for n in graph.nodes if n.part == pb.NODE_PART_POINT]
    assert len(points) >= 2
    for node in points:  # the heading (the skeleton's title) and the text, each point as the reader sees it
        assert french(f"{node.title} {texts[node.id]}"), (node.title, texts[node.id])


async def test_a_follow_up_is_answered_about_what_the_previous_turn_named(small_engine) -> None:
    # The small model's answer to a follow-up about the two planets nearest the Sun flipped between Venus
    # and Mars with the cache's state (a prompt forked from a resident prefix computes its KV in another
    # batch); named in a list, the second painter is picked up either way.
    history = [("user", "Name two famous painters."), ("assistant", "1. Pablo Picasso\n2. Vincent van Gogh")]
    question = "And what about the second one? Where was he born?"
    async with asyncio.timeout(300), client_of(small_engine) as client:
        answered = [e async for e in client.ask(question, history=history)]
        alone = [e async for e in client.ask(question, mode="direct")]
    assert "gogh" in answered[-1].answer_done.text.lower(), answered[-1].answer_done.text
    assert "gogh" not in alone[-1].answer_done.text.lower()  # without the turn it cannot know


async def test_a_long_conversation_is_prefilled_once_for_all_points(small_engine) -> None:
    turn = "We are planting a small city balcony that gets sun only in the afternoon, and we water by hand. "
    history = [("user", (turn * 6)[:500]), ("assistant", (turn * 6)[:500])]  # 1,000 characters
    question = "What should we plant first?"
    titles = ["Pick hardy herbs", "Use light pots", "Water in the evening", "Add a trellis", "Feed the soil",
              "Watch for pests"]
    graph = pb.Graph(route=pb.ROUTE_PARALLEL, nodes=[pb.Node(id=i, title=t) for i, t in enumerate(titles, 1)])
    model = small_engine.model(Role.SMALL)
    history_tokens = len(model.tokenize("".join(content for _, content in history), add_bos=False))
    context = Conversation(history=tuple(Message(r, c) for r, c in history))
    plan = Plan.validated([Node(i, t) for i, t in enumerate(titles, 1)], Route.PARALLEL)
    shared = prompts.point_shared_prefix(small_engine, Role.SMALL, question, plan, context=context)
    shared_tokens = len(model.tokenize(shared, add_bos=False))
    async with asyncio.timeout(300), client_of(small_engine) as client:
        before = small_engine.stats().role(Role.SMALL)
        events = [e async for e in client.expand(question, graph, generation=settings(point_max_tokens=4, max_points=6),
                                                 history=history)]
        after = small_engine.stats().role(Role.SMALL)
    done = events[-1].answer_done
    assert not done.failed_node_ids and len({e.node_finished.node_id for e in events
                                             if e.WhichOneof("event") == "node_finished"}) == 6
    usage = next(u for u in done.usage if u.model_role == pb.MODEL_ROLE_SMALL)
    tails = usage.prompt_tokens - usage.reused_tokens  # what each point prefilled of its own
    assert usage.calls == 6 and usage.reused_tokens >= 6 * history_tokens  # every point forked the history
    assert tails < history_tokens  # all six points' own parts together: less than the history once
    prefilled = after.prefilled_tokens - before.prefilled_tokens
    assert prefilled <= shared_tokens + tails, (prefilled, shared_tokens, tails, history_tokens)


async def test_stream_open_system_is_honoured(small_engine) -> None:
    pieces = ["What are some tips for staying healthy ", "while working from home?"]
    async with asyncio.timeout(300), client_of(small_engine) as client:
        events = [e async for e in client.stream(pieces, mode="direct", system=FRENCH)]
    assert french(events[-1].answer_done.text), events[-1].answer_done.text


async def test_bad_conversations_are_invalid_argument_naming_the_message(small_engine) -> None:
    async with asyncio.timeout(120), client_of(small_engine) as client:
        for history, field in (([("robot", "hi")], "messages[0].role"),
                               ([("user", "x" * (CONFIG.max_history_chars + 1))], "messages[0].content")):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.plan("Why?", history=history)
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT and field in info.value.details()
        answered = [e async for e in client.ask("Why is the sky blue?", mode="direct")]  # the server goes on
    assert answered[-1].answer_done.text
