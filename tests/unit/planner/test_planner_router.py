"""The router: cheap rules, the one-letter model answer, and accuracy on the labelled sets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from engine_fakes import FakeEngine

from espalier.planner import router
from espalier.planner.engine import Role
from espalier.planner.plan import Route
from espalier.planner.settings import PlannerSettings
from espalier.service.bench.questions import label_rows

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


@pytest.mark.parametrize(
    "question,route",
    [
        ("Implement a binary search algorithm in Python.", Route.DIRECT),
        ("Solve for x in the equation 3x + 10 = 5(x - 2).", Route.DIRECT),
        ("How many atoms are in a grain of salt?", Route.DIRECT),
        ("Write a short poem about autumn leaves.", Route.DIRECT),
        ("Can you help me write a resignation letter to my employer?", Route.DIRECT),
        ("As a pirate captain, what would you say to your crew?", Route.DIRECT),
        ("hello there!", Route.DIRECT),
        ("Who wrote Hamlet?", Route.DIRECT),
        ("What if the Roman Empire had never fallen?", Route.PARALLEL),
        ("What are the most effective ways to deal with stress?", Route.PARALLEL),
        ("What are the differences between tea and coffee?", Route.PARALLEL),
        ("How to start a vegetable garden on a balcony?", Route.GRAPH),
    ],
)
def test_rules(question: str, route: Route) -> None:
    decided = router.rules_route(question)
    assert decided is not None and decided.route is route and decided.source == "rules"


def test_rules_leave_open_questions_to_the_model() -> None:
    assert (
        router.rules_route("Why do some people enjoy being scared by horror movies while others hate it?")
        is None
    )


@pytest.mark.parametrize(
    "text,route",
    [
        ("A", Route.PARALLEL),
        (" B", Route.GRAPH),
        ("C.", Route.DIRECT),
        ("(b)", Route.GRAPH),
        ("**A**", Route.PARALLEL),
        ("Answer", None),
        ("", None),
        ("D", None),
        ("Because", None),
    ],
)
def test_parse_router_answer(text: str, route: Route | None) -> None:
    assert router.parse_router_answer(text) is route


async def _route(
    engine: FakeEngine, question: str, settings: PlannerSettings | None = None
) -> router.RouteDecision:
    async with asyncio.timeout(5):
        return await router.route(engine, question, settings or PlannerSettings(use_router_model=True))


OPEN_QUESTION = "Why do some people enjoy being scared by horror movies while others hate it?"


async def test_model_router_one_greedy_token_on_the_small_role() -> None:
    engine = FakeEngine()
    engine.script("sort questions", "B\nbecause")
    decision = await _route(engine, OPEN_QUESTION)
    assert decision.route is Route.GRAPH and decision.source == "model"
    (call,) = engine.calls
    assert call.request.role is Role.SMALL
    assert call.request.sampling.temperature == 0 and call.request.sampling.max_tokens <= 2
    assert call.full_prompt.rstrip().endswith("<|im_start|>assistant")
    assert call.closed


async def test_model_router_falls_back_to_the_default() -> None:
    engine = FakeEngine(roles=[Role.LARGE])
    engine.script("sort questions", "Hmm")
    decision = await _route(engine, OPEN_QUESTION)
    assert decision.route is PlannerSettings().router_default and decision.source == "default"
    assert engine.calls[0].request.role is Role.LARGE  # the only loaded role
    off = await _route(
        FakeEngine(), OPEN_QUESTION, PlannerSettings(use_router_model=False, router_default=Route.PARALLEL)
    )
    assert off.route is Route.PARALLEL and off.source == "default"
    assert not PlannerSettings().use_router_model  # measured: the 0.5B router is worse than the default


async def test_rules_do_not_call_the_model() -> None:
    engine = FakeEngine()
    assert (await _route(engine, "Write a haiku about the sea.")).route is Route.DIRECT
    assert engine.calls == []


@pytest.mark.skipif(not (DATA / "vicuna80_router.csv").exists(), reason="shared data not present")
@pytest.mark.parametrize("name,floor", [("vicuna80_router.csv", 0.9), ("lima_router.csv", 0.72)])
def test_rules_only_accuracy(name: str, floor: float, capsys: pytest.CaptureFixture[str]) -> None:
    result = router.evaluate_rules(label_rows(DATA / name))
    with capsys.disabled():
        print(
            f"\nrules-only router on {name}: accuracy {result['accuracy']} (n={result['n']}, "
            f"tp={result['tp']} tn={result['tn']} fp={result['fp']} fn={result['fn']}, "
            f"by source {result['by_source']})"
        )
    accuracy = result["accuracy"]
    assert isinstance(accuracy, float) and accuracy >= floor
