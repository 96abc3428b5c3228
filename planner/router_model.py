"""The learned router: a logistic regression over a model's hidden state of the question.

Owns the classifier's weights file (which model and feature recipe they belong to, the scaler, the
coefficients, the decision threshold and how they were measured), the prompt whose final state is the
feature, and the probability. Pure Python: a dot product over ~900 numbers costs microseconds. The
weights are fitted by `espalier router train` (service/router_training.py); the default ones for the
default small model ship in planner/data/.
"""

from __future__ import annotations

import json
import logging
import math
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from espalier.planner.engine import Embedder, Engine, EngineError, Message, ModelIdentity, Pooling, Role

# What the feature asks: the state after it is what the model would answer, so a linear read of it
# carries the model's own yes/no view of the question together with what the question is about. The
# instruction comes first so every router prompt starts alike and only the question is decoded anew.
FEATURE_SYSTEM = "You are a helpful assistant."
FEATURE_INSTRUCTION = ("Could a good answer to the request below be written as a list of several independent "
                       "points, each explained on its own? Answer yes or no.")
DEFAULT_WEIGHTS = "router_weights.json"  # in planner/data/, for the default small model
FORMAT = 2
READS = (1, 2)  # format 1: one model's state, no `also` (still written for those)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSource:
    """One model's state of the feature prompt: which model (the weights fit its states only), the role
    that holds it, and where and how the state is read (Embedder.embed)."""

    model: ModelIdentity
    role: Role
    pooling: Pooling
    depth: float

    def fits(self, identity: ModelIdentity) -> bool:
        return identity.sha256 == self.model.sha256


@dataclass(frozen=True)
class RouterWeights:
    model: ModelIdentity  # the weights fit this model's states only
    role: Role  # the role whose model computes the feature
    pooling: Pooling
    depth: float  # where in the model the state is read (Embedder.embed)
    instruction: str
    max_question_chars: int  # the question is cut to this many characters before the instruction
    mean: tuple[float, ...]  # standardisation, then a linear score: sum(coef * (x - mean) / scale) + bias
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    bias: float
    threshold: float  # probability at or above which a skeleton is chosen (chosen by cross-validation)
    trained: dict[str, object] = field(default_factory=dict)  # data, regularisation, cross-validated figures
    # Further models' states of the same prompt, appended to the first one's in this order.
    also: tuple[FeatureSource, ...] = ()

    def sources(self) -> tuple[FeatureSource, ...]:
        return (FeatureSource(self.model, self.role, self.pooling, self.depth), *self.also)

    def probability(self, vector: Sequence[float]) -> float:
        if len(vector) != len(self.coef):
            raise ValueError(f"a feature of {len(vector)} numbers for weights of {len(self.coef)}")
        z = self.bias + math.fsum(c * (x - m) / s for c, x, m, s in zip(self.coef, vector, self.mean, self.scale,
                                                                        strict=True))
        return 1.0 / (1.0 + math.exp(-z)) if z >= -700 else 0.0

    def to_json(self) -> str:
        record = asdict(self)
        record["role"], record["pooling"] = self.role.value, self.pooling.value
        for source in record["also"]:
            source["role"], source["pooling"] = source["role"].value, source["pooling"].value
        if not self.also:  # one model's weights stay readable by builds from before `also`
            del record["also"]
        record["format"] = FORMAT if self.also else 1
        return json.dumps(record, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RouterWeights:
        record = json.loads(text)
        if record.pop("format", None) not in READS:
            raise ValueError(f"router weights of another format (this build reads formats {READS})")
        record["model"] = ModelIdentity(**record["model"])
        record["role"], record["pooling"] = Role(record["role"]), Pooling(record["pooling"])
        record["also"] = tuple(FeatureSource(ModelIdentity(**a["model"]), Role(a["role"]), Pooling(a["pooling"]),
                                             float(a["depth"])) for a in record.get("also", ()))
        for key in ("mean", "scale", "coef"):
            record[key] = tuple(float(x) for x in record[key])
        weights = cls(**record)
        if not len(weights.mean) == len(weights.scale) == len(weights.coef) > 0:
            raise ValueError("router weights: mean, scale and coef differ in length")
        return weights

    @classmethod
    def load(cls, path: str | Path | None = None) -> RouterWeights:
        """From a file, or the packaged default weights when path is None."""
        if path is None:
            return cls.from_json(resources.files("espalier.planner.data").joinpath(DEFAULT_WEIGHTS).read_text("utf-8"))
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def feature_prompt(engine: Engine, role: Role, question: str, instruction: str, max_question_chars: int) -> str:
    """The text whose final state is the question's feature (the same in training and routing)."""
    question = question.strip()[:max_question_chars]  # line breaks kept: code looks like code
    messages = [Message("system", FEATURE_SYSTEM), Message("user", f"{instruction}\n\nRequest: {question}")]
    return engine.chat_prompt(role, messages, add_generation_prompt=True)


class LearnedRouter:
    """Weights that fit the engine's model: the probability that a question suits a skeleton."""

    def __init__(self, weights: RouterWeights) -> None:
        self.weights = weights

    async def probability(self, engine: Embedder, question: str) -> float:
        w = self.weights
        vector: list[float] = []
        for source in w.sources():  # one after another: on a CPU the two passes share its cores anyway
            text = feature_prompt(engine, source.role, question, w.instruction,  # type: ignore[arg-type]
                                  w.max_question_chars)
            (state,) = await engine.embed(source.role, [text], source.pooling, source.depth)
            vector.extend(state)
        return w.probability(vector)


# Per engine, per weights source: the loaded router or why there is none (checked once, logged once).
_routers: weakref.WeakKeyDictionary[object, dict[str, LearnedRouter | str]] = weakref.WeakKeyDictionary()


async def learned_router(engine: Engine, source: str) -> LearnedRouter | str:
    """The learned router for this engine from `source` ("" = the packaged default weights, "none" =
    off, else a file), or the reason there is none: weights unreadable, no embeddings from this
    engine, the role not loaded, or weights trained for another model (the rules decide then)."""
    if source == "none":
        return "learned router off (planner.router_weights = none)"
    cache = _routers.setdefault(engine, {})
    if source not in cache:
        cache[source] = await _load(engine, source)
        if isinstance(cache[source], str):
            log.warning("routing by rules only: %s", cache[source])
    return cache[source]


async def _load(engine: Engine, source: str) -> LearnedRouter | str:
    name = source or "the packaged default"
    try:
        weights = RouterWeights.load(source or None)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"router weights {name} unreadable ({exc})"
    if not isinstance(engine, Embedder):
        return "this engine gives no embeddings"
    for part in weights.sources():
        if part.role not in engine.roles():
            return f"router weights {name} need the {part.role.value} model, which is not loaded"
        try:
            identity = await engine.model_identity(part.role)
        except EngineError as exc:  # NoEmbeddings from a mixed engine whose role is remote, or a file gone
            return f"no identity of the {part.role.value} model ({exc})"
        if not part.fits(identity):
            return (f"router weights {name} were trained for {part.model.name} "
                    f"(sha256 {part.model.sha256[:12]}), not the loaded {identity.name} (sha256 {identity.sha256[:12]})")
    return LearnedRouter(weights)
