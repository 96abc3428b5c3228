"""Training the learned router: it reads the label file, is deterministic, and its figures add up."""

from __future__ import annotations

import numpy as np
import pytest
from engine_fakes import FakeEmbeddingEngine, FakeEngine

from espalier.planner.engine import ModelIdentity, Pooling, Role
from espalier.planner.router import scores
from espalier.planner.router_model import RouterWeights, feature_prompt
from espalier.planner.settings import PlannerSettings
from espalier.service.router_training import Recipe, evaluate, fit_logistic, out_of_fold, train

MODEL = ModelIdentity("tiny.gguf", "ab" * 32)
LIST_WORDS = ("ways", "tips", "steps", "ideas", "benefits", "reasons")


def featurize(text: str) -> list[float]:
    """A made-up hidden state: word counts the labels follow, plus a deterministic nuisance feature."""
    words = text.lower().split()
    return [sum(w.strip("?,.") in LIST_WORDS for w in words), len(words) / 10, (sum(map(ord, text)) % 7) / 7]


@pytest.fixture
def labels_csv(tmp_path):
    rows = ["label;request"]
    topics = ("sleep", "cooking", "saving money", "learning French", "running", "gardening", "writing", "chess")
    for i, topic in enumerate(topics * 3):
        rows.append(f"1;What are some {LIST_WORDS[i % 6]} for getting better at {topic}?")
        rows.append(f"0;Who first wrote about {topic} in a book, and when?")
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


async def test_training_reads_the_labels_and_is_deterministic(labels_csv) -> None:
    engine = FakeEmbeddingEngine(featurize, MODEL)
    first = await train(engine, labels_csv, Recipe())
    second = await train(FakeEmbeddingEngine(featurize, MODEL), labels_csv, Recipe())
    assert first.to_json() == second.to_json()
    assert first.trained["n"] == 48 and first.trained["positives"] == 24 and first.trained["labels"] == "labels.csv"
    assert len(engine.embedded) == 48 and all("What are some" in t or "Who first" in t for t in engine.embedded)
    assert first.model == MODEL and first.role is Role.SMALL
    assert first.trained["cross_validated"]["accuracy"] == 1.0  # separable by the first feature
    loaded = RouterWeights.from_json(first.to_json())

    def p(question: str) -> float:  # as routing computes it: the feature of the question's prompt
        prompt = feature_prompt(engine, loaded.role, question, loaded.instruction, loaded.max_question_chars)
        return loaded.probability(featurize(prompt))
    assert p("What are some tips for getting better at chess?") >= loaded.threshold
    assert p("Who first wrote about chess in a book, and when?") < loaded.threshold


async def test_training_on_two_models_appends_the_second_state_and_names_its_model(labels_csv) -> None:
    large = ModelIdentity("large.gguf", "ef" * 32)
    engine = FakeEmbeddingEngine(featurize, MODEL, identities={Role.LARGE: large})
    recipe = Recipe(also=((Role.LARGE, Pooling.LAST, 0.5),))
    weights = await train(engine, labels_csv, recipe)
    assert [(s.model, s.role, s.depth) for s in weights.sources()] == [(MODEL, Role.SMALL, 0.75), (large, Role.LARGE, 0.5)]
    assert len(weights.coef) == 2 * len(featurize("x"))  # both states, side by side
    assert engine.embedded_roles == [Role.SMALL] * 48 + [Role.LARGE] * 48
    assert weights.trained["cross_validated"]["accuracy"] == 1.0
    assert RouterWeights.from_json(weights.to_json()) == weights


async def test_training_needs_an_engine_that_embeds(labels_csv) -> None:
    with pytest.raises(TypeError, match="no embeddings"):
        await train(FakeEngine(), labels_csv, Recipe())


def test_logistic_regression_finds_the_separating_direction_and_shrinks_with_c() -> None:
    x = np.array([[-2.0, 0.1], [-1.0, -0.2], [1.0, 0.3], [2.0, -0.1]] * 5)
    y = np.array([0, 0, 1, 1] * 5, dtype=float)
    loose, _ = fit_logistic(x, y, c=10.0)
    tight, _ = fit_logistic(x, y, c=0.01)
    assert loose[0] > abs(loose[1]) and 0 < tight[0] < loose[0]
    p = out_of_fold(x, y, c=1.0)
    assert ((p >= 0.5) == (y == 1)).all()


def test_scores_count_the_confusion_matrix() -> None:
    s = scores([1, 1, 1, 0, 0, 0, 0, 0], [True, False, False, True, False, False, False, False])
    assert (s["tp"], s["fn"], s["fp"], s["tn"], s["n"]) == (1, 2, 1, 4, 8)
    assert s["accuracy"] == 0.625 and s["precision"] == 0.5 and s["recall"] == round(1 / 3, 4)
    assert s["balanced_accuracy"] == round((1 / 3 + 4 / 5) / 2, 4)


async def test_evaluation_reads_the_labels_and_reports_who_decided(labels_csv, tmp_path) -> None:
    weights = await train(FakeEmbeddingEngine(featurize, MODEL), labels_csv, Recipe())
    path = tmp_path / "weights.json"
    path.write_text(weights.to_json(), encoding="utf-8")
    extra = labels_csv.read_text(encoding="utf-8") + "0;Write a short poem about the sea in spring.\n"
    labels_csv.write_text(extra, encoding="utf-8")  # one question a near-certain rule decides
    result = await evaluate(FakeEmbeddingEngine(featurize, MODEL), labels_csv,
                            PlannerSettings(router_weights=str(path)))
    assert result["n"] == 49 and result["accuracy"] == 1.0 and result["balanced_accuracy"] == 1.0
    assert result["decided_by"] == {"classifier": 48, "rules": 1}
    assert result["rule_override_rate"] == round(1 / 49, 4)
    assert result["rules_alone"]["n"] == 49 and len(result["questions"]) == 49
    # weights of another model: the rules decide every question, and the evaluation says so
    other = await evaluate(FakeEmbeddingEngine(featurize, ModelIdentity("x.gguf", "00" * 32)), labels_csv,
                           PlannerSettings(router_weights=str(path)))
    assert "classifier" not in other["decided_by"]
    reasons = [q["reason"] for q in other["questions"] if q["reason"] != "rules: writing"]
    assert len(reasons) == 48 and all("were trained for tiny.gguf" in r for r in reasons), reasons[:2]


def test_router_train_reads_another_model_state_as_role_depth_and_pooling() -> None:
    import argparse

    from espalier.service.router_cli import _also

    assert _also("large:0.5") == (Role.LARGE, Pooling.LAST, 0.5)
    assert _also("small:1:mean") == (Role.SMALL, Pooling.MEAN, 1.0)
    for bad in ("large", "huge:0.5", "large:half", "large:0.5:max", "large:0", "large:1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="ROLE:DEPTH"):
            _also(bad)
