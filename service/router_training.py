"""Training and evaluating the learned router (`espalier router train / eval`).

Owns the features of a labelled question set (one engine.embed call per question, with progress),
the L2-regularised logistic regression (Newton's method on standardised features: deterministic, no
random start), the choice of regularisation and threshold by 5-fold cross-validation, and the
figures a reader needs to trust a router on skewed data: accuracy, precision, recall, balanced
accuracy and the confusion counts. numpy only (a dependency of llama-cpp-python already).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from espalier.planner.engine import Embedder, Engine, ModelIdentity, Pooling, Role
from espalier.planner.plan import Route
from espalier.planner.router import route, rules_only_route, scores
from espalier.planner.router_model import FEATURE_INSTRUCTION, FeatureSource, RouterWeights, feature_prompt
from espalier.planner.settings import PlannerSettings
from espalier.service.bench.questions import label_rows

FOLDS = 5
# Regularisation strengths tried (inverse: smaller is stronger); ~900 features from ~1,000 questions
# overfit without it. The one with the best cross-validated accuracy is kept.
C_GRID = (0.0003, 0.001, 0.003, 0.01, 0.03)
THRESHOLDS = tuple(round(0.2 + 0.025 * i, 3) for i in range(25))  # 0.2 .. 0.8
MAX_QUESTION_CHARS = 1500


@dataclass(frozen=True)
class Recipe:
    """How a question becomes a feature vector."""

    role: Role = Role.SMALL
    pooling: Pooling = Pooling.LAST
    # Three quarters down the model: on the LIMA labels (5-fold) the 0.5B model's inner layers read
    # 0.81 to 0.82 accurate, its final layer 0.80 (layers 6 to 21 compared, dev run 2026-12-01).
    depth: float = 0.75
    instruction: str = FEATURE_INSTRUCTION
    max_question_chars: int = MAX_QUESTION_CHARS
    # Further (role, pooling, depth) states of the same prompt, appended to the first one's.
    also: tuple[tuple[Role, Pooling, float], ...] = ()

    def parts(self) -> tuple[Recipe, ...]:
        """One recipe per model state the feature joins, the first one first."""
        one = dataclasses.replace(self, also=())
        return (one, *(dataclasses.replace(one, role=r, pooling=p, depth=d) for r, p, d in self.also))


async def features(engine: Engine, recipe: Recipe, questions: Sequence[str],
                   progress: Callable[[int, int], None] | None = None,
                   cache_dir: Path | None = None) -> np.ndarray:
    """One row per question: the engine's pooled final state of the feature prompt. With cache_dir,
    kept there under a key of the model's sha256, the recipe and the questions (minutes per thousand
    questions on 2 cores: training again with other settings should not pay them twice)."""
    if not isinstance(engine, Embedder):
        raise TypeError("this engine gives no embeddings (the embedded llama.cpp engine does)")
    if recipe.also:
        return np.hstack([await features(engine, part, questions, progress, cache_dir) for part in recipe.parts()])
    cached = None
    if cache_dir is not None:
        identity = await engine.model_identity(recipe.role)
        key = hashlib.sha256(json.dumps([identity.sha256, recipe.pooling.value, recipe.depth, recipe.instruction,
                                         recipe.max_question_chars, list(questions)]).encode()).hexdigest()
        cached = cache_dir / f"features-{key[:24]}.npy"
        if cached.exists():
            return np.load(cached)
    rows = []
    for i, question in enumerate(questions):
        text = feature_prompt(engine, recipe.role, question, recipe.instruction, recipe.max_question_chars)
        rows.append((await engine.embed(recipe.role, [text], recipe.pooling, recipe.depth))[0])
        if progress is not None:
            progress(i + 1, len(questions))
    x = np.asarray(rows, dtype=np.float64)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached, x)
    return x


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float, iterations: int = 50) -> tuple[np.ndarray, float]:
    """Coefficients and bias minimising log-loss + |coef|^2 / (2c) on standardised x (Newton steps)."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    penalty = np.full(d + 1, 1.0 / c)
    penalty[-1] = 0.0  # the bias is not shrunk
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -30, 30)))
        gradient = xb.T @ (p - y) + penalty * w
        hessian = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return w[:-1], float(w[-1])


def _standardise(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return train.mean(axis=0), train.std(axis=0) + 1e-6


def _probabilities(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, bias: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(((x - mean) / scale) @ coef + bias, -30, 30)))


def out_of_fold(x: np.ndarray, y: np.ndarray, c: float, folds: int = FOLDS) -> np.ndarray:
    """Each question's probability from a model trained on the other folds (fold = index mod folds)."""
    p = np.zeros(len(y))
    for fold in range(folds):
        held = np.arange(len(y)) % folds == fold
        mean, scale = _standardise(x[~held])
        coef, bias = fit_logistic((x[~held] - mean) / scale, y[~held], c)
        p[held] = _probabilities(x[held], mean, scale, coef, bias)
    return p


def _best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold with the best accuracy; among equals, the one nearest 0.5."""
    return max(THRESHOLDS, key=lambda t: (scores(y.tolist(), (p >= t).tolist())["accuracy"], -abs(t - 0.5)))


def fit_router(x: np.ndarray, y: np.ndarray, recipe: Recipe, models: Sequence[ModelIdentity],
               trained_on: str) -> RouterWeights:
    """Choose regularisation and threshold by cross-validation, then fit on every question. models: the
    model of each of the recipe's parts, in order."""
    results = []
    for c in C_GRID:
        p = out_of_fold(x, y, c)
        threshold = _best_threshold(y, p)
        results.append((scores(y.tolist(), (p >= threshold).tolist()), c, threshold))
    cv, c, threshold = max(results, key=lambda r: (r[0]["accuracy"], r[0]["balanced_accuracy"]))
    mean, scale = _standardise(x)
    coef, bias = fit_logistic((x - mean) / scale, y, c)
    also = tuple(FeatureSource(m, part.role, part.pooling, part.depth)
                 for m, part in zip(models[1:], recipe.parts()[1:], strict=True))
    return RouterWeights(
        model=models[0], also=also, role=recipe.role, pooling=recipe.pooling, depth=recipe.depth, instruction=recipe.instruction,
        max_question_chars=recipe.max_question_chars, mean=tuple(mean.tolist()), scale=tuple(scale.tolist()),
        coef=tuple(coef.tolist()), bias=bias, threshold=threshold,
        trained={"labels": Path(trained_on).name, "n": len(y), "positives": int(y.sum()), "c": c,
                 "folds": FOLDS, "cross_validated": cv,
                 "grid": [{"c": c_, "threshold": t_, **s} for s, c_, t_ in results],
                 "date": time.strftime("%Y-%m-%d")},
    )


async def train(engine: Engine, labels_path: str | Path, recipe: Recipe,
                progress: Callable[[int, int], None] | None = None, cache_dir: Path | None = None) -> RouterWeights:
    if not isinstance(engine, Embedder):
        raise TypeError("this engine gives no embeddings (the embedded llama.cpp engine does)")
    rows = label_rows(labels_path)
    x = await features(engine, recipe, [q for _, q in rows], progress, cache_dir)
    y = np.asarray([label for label, _ in rows], dtype=np.float64)
    models = [await engine.model_identity(part.role) for part in recipe.parts()]
    return fit_router(x, y, recipe, models, str(labels_path))


def nested_cross_validation(x: np.ndarray, y: np.ndarray, ruled: Sequence[bool | None], recipe: Recipe,
                            folds: int = FOLDS) -> dict[str, float | int]:
    """The router as it runs (near-certain rules first, then the classifier), scored on each fold by
    a router trained, regularisation and threshold chosen, on the other folds alone: an estimate
    that never sees its test questions. ruled: a near-certain rule's decision per question, or None."""
    chosen = [False] * len(y)
    for fold in range(folds):
        held = np.arange(len(y)) % folds == fold
        weights = fit_router(x[~held], y[~held], recipe,
                             [ModelIdentity("a cross-validation fold", "")] * len(recipe.parts()), "")
        for i in np.where(held)[0]:
            rule = ruled[i]
            chosen[i] = rule if rule is not None else weights.probability(x[i].tolist()) >= weights.threshold
    return scores(y.astype(int).tolist(), chosen)


async def evaluate(engine: Engine, labels_path: str | Path, settings: PlannerSettings,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, object]:
    """The router as `auto` runs it (espalier.planner.router.route with these settings) on a labelled set,
    beside the rules alone: the scores, who decided, how often a near-certain rule overrode the
    classifier, the time to route, and every question's decision."""
    rows = label_rows(labels_path)
    decisions, seconds = [], []
    for i, (_, question) in enumerate(rows):
        t0 = time.perf_counter()
        decisions.append(await route(engine, question, settings))
        seconds.append(time.perf_counter() - t0)
        if progress is not None:
            progress(i + 1, len(rows))
    labels = [label for label, _ in rows]
    chosen = [d.route is not Route.DIRECT for d in decisions]
    by_source = {source: scores(*zip(*[(y, c) for y, c, d in zip(labels, chosen, decisions, strict=True)
                                       if d.source == source], strict=True))
                 for source in sorted({d.source for d in decisions})}
    return {
        **scores(labels, chosen),
        "labels": str(labels_path),
        "decided_by": {source: s["n"] for source, s in by_source.items()},
        "by_source": by_source,
        "rule_override_rate": round(sum(d.source == "rules" for d in decisions) / len(rows), 4) if rows else 0.0,
        "rules_alone": scores(labels, [rules_only_route(q).route is not Route.DIRECT for _, q in rows]),
        "route_seconds_median": round(statistics.median(seconds), 4) if seconds else 0.0,
        "route_seconds_p90": round(float(np.percentile(seconds, 90)), 4) if seconds else 0.0,
        "questions": [{"label": y, "route": d.route.value, "reason": d.reason, "request": q[:200]}
                      for (y, q), d in zip(rows, decisions, strict=True)],
    }
