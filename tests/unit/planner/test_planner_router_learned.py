"""The learned router as `auto` runs it: the classifier decides where its weights fit the loaded model,
near-certain rules stay in front, and weights of another model (or none) fall back to the rules."""

from __future__ import annotations

import dataclasses
import json

import pytest
from engine_fakes import FakeEmbeddingEngine, FakeEngine

from espalier.planner.engine import ModelIdentity, Pooling, Role
from espalier.planner.plan import Route
from espalier.planner.router import route
from espalier.planner.router_model import FEATURE_INSTRUCTION, FeatureSource, RouterWeights
from espalier.planner.settings import PlannerSettings
from espalier.service.engine.models import MODELS

MODEL = ModelIdentity("tiny.gguf", "ab" * 32)
OTHER = ModelIdentity("other.gguf", "cd" * 32)
LARGE = ModelIdentity("large.gguf", "ef" * 32)


def listy(text: str) -> list[float]:
    """A stand-in hidden state: does the question ask for ways or tips (1) or not (0)."""
    return [1.0 if any(w in text.lower() for w in ("ways", "tips")) else 0.0, 0.5]


def weights(**kw: object) -> RouterWeights:
    base = RouterWeights(model=MODEL, role=Role.SMALL, pooling=Pooling.LAST, depth=1.0,
                         instruction=FEATURE_INSTRUCTION,
                         max_question_chars=200, mean=(0.5, 0.5), scale=(0.5, 1.0), coef=(4.0, 0.0), bias=0.0,
                         threshold=0.6)
    return dataclasses.replace(base, **kw)


@pytest.fixture
def weights_file(tmp_path):
    def write(w: RouterWeights) -> PlannerSettings:
        path = tmp_path / "router.json"
        path.write_text(w.to_json(), encoding="utf-8")
        return PlannerSettings(router_weights=str(path))
    return write


async def test_the_classifier_decides_where_its_weights_fit_the_model(weights_file) -> None:
    settings = weights_file(weights())
    engine = FakeEmbeddingEngine(listy, MODEL)
    yes = await route(engine, "What are some ways to sleep better at night?", settings)
    no = await route(engine, "Who painted the ceiling of the Sistine Chapel in Rome?", settings)
    assert (yes.route, yes.source) == (Route.PARALLEL, "classifier") and "0.98 >= 0.60" in yes.reason
    assert (no.route, no.source) == (Route.DIRECT, "classifier") and "0.02 < 0.60" in no.reason
    # the feature is the model's state after the instruction, the question cut to max_question_chars
    assert all(FEATURE_INSTRUCTION in text for text in engine.embedded)


async def test_a_rule_named_shape_is_kept_when_the_classifier_says_skeleton(weights_file) -> None:
    engine = FakeEmbeddingEngine(listy, MODEL)
    decision = await route(engine, "How can I find ways to improve my time management skills?", weights_file(weights()))
    assert (decision.route, decision.source) == (Route.GRAPH, "classifier")  # the how-to rule's graph


async def test_near_certain_rules_stay_in_front_of_the_classifier(weights_file) -> None:
    engine = FakeEmbeddingEngine(listy, MODEL)
    decision = await route(engine, "Write a poem with tips and ways to enjoy the rain in spring.", weights_file(weights()))
    assert (decision.route, decision.source, decision.detail) == (Route.DIRECT, "rules", "writing")
    assert engine.embedded == []  # no model call for a question the rules are sure of


async def test_weights_of_another_model_fall_back_to_the_rules_and_say_why(weights_file, caplog) -> None:
    engine = FakeEmbeddingEngine(listy, OTHER)
    settings = weights_file(weights())
    decision = await route(engine, "What are some ways to sleep better at night?", settings)
    assert decision.source in ("rules", "default") and "trained for tiny.gguf" in decision.reason
    assert "not the loaded other.gguf" in decision.reason and engine.embedded == []
    assert any("routing by rules only" in r.getMessage() for r in caplog.records)


async def test_an_engine_without_embeddings_or_no_weights_routes_by_rules() -> None:
    decision = await route(FakeEngine(), "How can I improve my time management skills?",
                           PlannerSettings(router_weights="none"))
    assert (decision.route, decision.source) == (Route.GRAPH, "rules") and "learned router off" in decision.reason
    decision = await route(FakeEngine(), "How can I improve my time management skills?")
    assert decision.source == "rules" and "no embeddings" in decision.reason


def test_weights_survive_a_round_trip_and_refuse_a_wrong_shape() -> None:
    w = weights(trained={"n": 3})
    assert RouterWeights.from_json(w.to_json()) == w
    assert w.probability([1.0, 0.5]) == pytest.approx(1 / (1 + 2.718281828459045 ** -4.0))
    with pytest.raises(ValueError):
        w.probability([1.0])
    with pytest.raises(ValueError, match="differ in length"):
        RouterWeights.from_json(weights(coef=(1.0,)).to_json())


def two_models(**kw: object) -> RouterWeights:
    """Weights over the small model's state and the large one's, appended: four numbers."""
    return weights(also=(FeatureSource(LARGE, Role.LARGE, Pooling.LAST, 0.5),), mean=(0.5, 0.5, 0.5, 0.5),
                   scale=(0.5, 1.0, 0.5, 1.0), coef=(2.0, 0.0, 2.0, 0.0), **kw)


async def test_weights_over_two_models_read_both_states_in_order(weights_file) -> None:
    engine = FakeEmbeddingEngine(listy, MODEL, identities={Role.LARGE: LARGE})
    yes = await route(engine, "What are some ways to sleep better at night?", weights_file(two_models()))
    assert (yes.route, yes.source) == (Route.PARALLEL, "classifier") and "0.98 >= 0.60" in yes.reason
    assert engine.embedded_roles == [Role.SMALL, Role.LARGE]  # the first model's state first


async def test_weights_over_two_models_need_both_loaded_and_matching(weights_file) -> None:
    settings = weights_file(two_models())
    small_only = FakeEmbeddingEngine(listy, MODEL, roles=(Role.SMALL,))
    decision = await route(small_only, "What are some ways to sleep better at night?", settings)
    assert decision.source in ("rules", "default") and "need the large model" in decision.reason
    wrong_large = FakeEmbeddingEngine(listy, MODEL, identities={Role.LARGE: OTHER})
    decision = await route(wrong_large, "What are some ways to sleep better at night?", settings)
    assert "trained for large.gguf" in decision.reason and wrong_large.embedded == []


def test_weights_over_two_models_survive_a_round_trip_and_one_model_files_still_read() -> None:
    w = two_models(trained={"n": 3})
    assert RouterWeights.from_json(w.to_json()) == w
    assert [s.role for s in w.sources()] == [Role.SMALL, Role.LARGE]
    assert json.loads(w.to_json())["format"] == 2
    record = json.loads(weights().to_json())
    assert record["format"] == 1 and "also" not in record  # one model: as builds before `also` read them
    assert RouterWeights.from_json(json.dumps(record)) == weights()


def test_the_packaged_weights_fit_the_default_small_model() -> None:
    packaged = RouterWeights.load()
    assert packaged.role is Role.SMALL and packaged.also == ()  # routing needs only the small model
    assert packaged.model.sha256 == MODELS["small"].sha256  # checked against the loaded model's
