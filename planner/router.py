"""The router: which route (parallel points, a graph of points, or a direct answer) suits a question.

Owns the order of the deciders: the near-certain rules, then the learned router (espalier.planner.router_model)
where its weights fit the loaded model; without it the cheap rules (code, math, estimates, creative
writing, role-play, short facts and small talk go direct; counterfactuals, how-tos and "what are the
ways/factors/differences" questions get a skeleton), then the one-token prompting router on the small
model if allowed. Also the scoring of routing decisions against labels (`scores`, `evaluate_rules` on
(label, question) rows, 1 = suits a skeleton, 0 = does not; files are read by the service).

Measured (accuracy of skeleton vs direct): the rules alone, with `direct` for questions they leave
open, score 0.95 on vicuna80_router.csv and 0.77 on lima_router.csv (the rules were written with
both sets in view). The learned router with the near-certain rules: 0.90 on vicuna80 (trained on LIMA
only) and 0.81 on LIMA by nested 5-fold cross-validation (`espalier router eval`). The one-letter
prompting router on the 0.5B small model answers "A" almost always (0.51 on vicuna80), so
settings.use_router_model is off by default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from espalier.planner.conversation import NO_CONTEXT, Conversation
from espalier.planner.decode import collect, resolve_role
from espalier.planner.engine import Engine, GenerateRequest, Priority, Sampling
from espalier.planner.events import Meter
from espalier.planner.plan import Route
from espalier.planner.prompts import ROUTER_LETTERS, router_prompt
from espalier.planner.router_model import LearnedRouter, learned_router
from espalier.planner.settings import DEFAULT_SETTINGS, PlannerSettings


@dataclass(frozen=True, slots=True)
class RouteDecision:
    route: Route
    source: str  # "rules", "model" or "default"
    detail: str  # which rule matched, or what the model wrote

    @property
    def reason(self) -> str:
        return f"{self.source}: {self.detail}"


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


_LANG = (
    r"(?:python|java|javascript|typescript|js|c\+\+|c#|golang|rust|ruby|php|swift|kotlin|scala|haskell|"
    r"sql|bash|shell|html|css|matlab|perl|r\b|c\b)"
)
_TECH = (
    r"\b(?:python|c#|c\+\+|javascript|typescript|java|sql|git|linux|windows|android|ios|excel|api|html|css|"
    r"php|json|xml|regex|bash|unix|ubuntu|docker|node\.?js|react|django|kotlin|swift|golang|rust|matlab|"
    r"latex|cmake|jquery|postgres(?:ql)?|mysql)\b"
)
_D, _P, _G = Route.DIRECT, Route.PARALLEL, Route.GRAPH
# Checked in order; the first match decides. Strong "direct" signals first, then questions that
# plainly want a list, then weaker "direct" signals (technical how-tos, yes/no, short facts).
_RULES: tuple[tuple[str, Route, re.Pattern[str]], ...] = (
    (
        "code",
        _D,
        _rx(
            r"```|^\s*(?:def|class|import|#include|public|function|SELECT)\b|\w+\([^()]*\)\s*[{;]|"
            r"Traceback \(most recent|\b(?:implement|debug|refactor)\b"
        ),
    ),
    (
        "code",
        _D,
        _rx(
            r"\b(?:write|create|develop|code|build|give me)\b[^.?!]{0,60}\b(?:program|function|script|"
            r"class|method|algorithm|code|regex|regular expression|query|snippet|api)\b"
        ),
    ),
    (
        "code",
        _D,
        _rx(
            rf"\b(?:in|using|with)\s+{_LANG}[^.?!]{{0,40}}\b(?:program|function|script|code|loop)\b|"
            rf"\b{_LANG}\s+(?:program|function|script|code|snippet)\b"
        ),
    ),
    (
        "math",
        _D,
        _rx(
            r"\b(?:solve|simplify|calculate|compute|evaluate|integrate|differentiate|derivative|"
            r"factorize|prove)\b[^.?!]{0,60}[\d=^]|\bf\(x\)|\d\s*[-+*/^×÷]\s*\(?\d|\bx\s*[=+\-^]\s*\d|"
            r"\((?:\s*-?\d+(?:\.\d+)?\s*,){1,2}\s*-?\d+(?:\.\d+)?\s*\)|"
            r"\b(?:equation|percent(?:age)? of|probability that|sum of|how (?:much|many) \w+ (?:does|did|"
            r"will|would) \w+ (?:have|get|earn|make|pay|spend))\b"
        ),
    ),
    ("estimate", _D, _rx(r"^\s*(?:how many|how much|how long|how far|how often)\b")),
    (
        "writing",
        _D,
        _rx(
            r"^\s*(?:please\s+|now\s+|can you\s+|could you\s+)?(?:help me\s+)?(?:write|draft|compose|"
            r"rewrite|paraphrase|summari[sz]e|translate|create|generate|give me|tell me|make|"
            r"come up with|design|structure|use an appropriate format)\b[^.?!]{0,80}\b(?:story|poem|"
            r"haiku|limerick|song|lyrics|letter|e-?mail|essay|article|post|blog|review|script|speech|"
            r"announcement|ad|advert|advertisement|slogan|tweet|joke|riddle|dialogue|conversation|"
            r"chapter|novel|scene|description|bio|biography|cover letter|resume|proposal|message|"
            r"toast|eulogy|summary|translation|title|headline|name|names|sentence|paragraph|rap|"
            r"sonnet|ballad|tale|fable|outline|caption|invitation|recipe|menu|quiz|puzzle)s?\b"
        ),
    ),
    (
        "writing",
        _D,
        _rx(
            r"^\s*(?:please\s+)?(?:write|draft|compose|rewrite|paraphrase|summari[sz]e|translate|"
            r"correct|fix|edit|proofread|rephrase)\b"
        ),
    ),
    (
        "roleplay",
        _D,
        _rx(
            r"^\s*(?:as an? |pretend (?:to be|you(?:'re| are))|you are an? |you're an? |"
            r"imagine you(?:'re| are) an? |if you were an? |act as|role-?play|play the role|"
            r"how would you introduce yourself)"
        ),
    ),
    (
        "chit-chat",
        _D,
        _rx(
            r"^\s*(?:hi|hello|hey|thanks|thank you|good (?:morning|evening|night)|how are you|"
            r"who are you|what(?:'s| is) your name|tell me a joke)\b[^?]{0,30}[.!?]?\s*$"
        ),
    ),
    ("what-if", _P, _rx(r"^\s*(?:what if|what would happen if|imagine (?:if|a world))\b")),
    (
        "compare",
        _P,
        _rx(
            r"\b(?:compare|contrast|differences? between|pros and cons|advantages and "
            r"disadvantages)\b"
        ),
    ),
    ("technical", _D, _rx(_TECH)),
    (
        "list of aspects",
        _P,
        _rx(
            r"\b(?:what|which) (?:are|were) (?:the |some )?(?:\w+ ){0,4}(?:ways?|tips|factors|differences|"
            r"benefits|advantages|disadvantages|pros|cons|challenges|strategies|reasons|causes|effects|"
            r"implications|consequences|features|characteristics|steps|methods|techniques|examples|types|"
            r"kinds|signs|clues|risks|impacts|applications|uses|options|alternatives|principles|"
            r"considerations|best practices)\b"
        ),
    ),
    ("why might", _P, _rx(r"^\s*why (?:might|would)\b")),
    (
        "factors",
        _P,
        _rx(
            r"\bwhat (?:factors|aspects|considerations)\b|\bhow (?:do|does|can|might|could) [^?]{0,80}"
            r"\b(?:influence|affect|impact|shape)\b"
        ),
    ),
    (
        "how-to",
        _G,
        _rx(
            r"^\s*(?:how (?:to|can|do|should|could) (?:i|you|we|one|a|an|people|someone)?\b|"
            r"what (?:is|are) the (?:best )?(?:steps|process|way) to|steps to)"
        ),
    ),
    ("explain", _G, _rx(r"^\s*(?:explain|describe|discuss|outline|walk me through)\b[^\n]{20,}")),
    ("explain", _G, _rx(r"^\s*can you (?:explain|describe|tell me about|give me an overview)\b")),
    (
        "yes/no",
        _D,
        _rx(
            r"^\s*(?:is|are|was|were|do|does|did|will|would|should|has|have|had|am)\b|"
            r"^\s*(?:can|could) (?!you\b)"
        ),
    ),
    (
        "short fact",
        _D,
        _rx(r"^\s*(?:who|when|where|which|what year|what date|what time)\b[^\n]{0,60}\??\s*$"),
    ),
    (
        "short fact",
        _D,
        _rx(
            r"^\s*(?:what|who) (?:is|was|are|were) (?:the )?(?:capital|population|height|"
            r"length|distance|date|name|author|inventor|founder|meaning|definition)\b"
        ),
    ),
)


def rules_route(question: str) -> RouteDecision | None:
    """The cheap rules alone; None when they do not decide."""
    q = " ".join(question.split())
    if len(q.split()) <= 3:
        return RouteDecision(Route.DIRECT, "rules", "very short")
    for name, chosen, pattern in _RULES:
        if pattern.search(q):
            return RouteDecision(chosen, "rules", name)
    return None


def rules_only_route(question: str, default: Route = Route.DIRECT) -> RouteDecision:
    return rules_route(question) or RouteDecision(default, "default", "no rule matched")


def parse_router_answer(text: str) -> Route | None:
    """The route named by the model's one-letter answer (A/B/C), tolerating spaces, quotes, '(A)', 'A.'."""
    m = re.match(r"^[\s\"'*(\[]*([ABCabc])(?![a-zA-Z])", text)
    if m:
        return ROUTER_LETTERS[m.group(1).upper()]
    return None


# Rules that stay in front of the learned router because they are near-certain: on the LIMA labels
# (which the rules were written beside, so this flatters them a little) math 22/22 and creative
# writing 96/96 are right (122 of 122 with small talk and very short questions); the other rules are
# 60% to 85% right there and leave the decision to the classifier.
NEAR_CERTAIN = frozenset({"math", "writing", "chit-chat", "very short"})


async def route(
    engine: Engine, question: str, settings: PlannerSettings = DEFAULT_SETTINGS, meter: Meter | None = None,
    context: Conversation = NO_CONTEXT,
) -> RouteDecision:
    """Near-certain rules first; then the learned router (planner.router_weights) where its weights fit
    the loaded model; without it every rule, then, if allowed, the prompting router model, else
    settings.router_default. Engine errors propagate (the service maps them).

    The rules read the question alone (its own words decide: "write a poem" stays a poem after any
    conversation); the learned router reads it after the user's previous turn, the router model after
    the whole conversation, so a follow-up ("And the second one?") is placed by what it refers to."""
    decided = rules_route(question)
    if decided is not None and decided.detail in NEAR_CERTAIN:
        return decided
    learned = await learned_router(engine, settings.router_weights)
    if isinstance(learned, LearnedRouter):
        p = await learned.probability(engine, context.about(question))  # type: ignore[arg-type]
        threshold = learned.weights.threshold
        if p < threshold:
            return RouteDecision(Route.DIRECT, "classifier", f"P(skeleton) {p:.2f} < {threshold:.2f}")
        # the rules' shape when they named one (how-tos as a graph), else independent points
        shape = decided.route if decided is not None and decided.route is not Route.DIRECT else Route.PARALLEL
        return RouteDecision(shape, "classifier", f"P(skeleton) {p:.2f} >= {threshold:.2f}")
    if decided is not None:
        return RouteDecision(decided.route, "rules", f"{decided.detail} (no learned router: {learned})")
    if not settings.use_router_model:
        return RouteDecision(settings.router_default, "default", f"router model off (no learned router: {learned})")
    return await model_route(engine, question, settings, meter, context)


async def model_route(
    engine: Engine, question: str, settings: PlannerSettings = DEFAULT_SETTINGS, meter: Meter | None = None,
    context: Conversation = NO_CONTEXT,
) -> RouteDecision:
    """The prompting router alone: one greedy letter from settings.router_role."""
    role = resolve_role(settings.router_role, engine.roles())
    request = GenerateRequest(
        prompt=router_prompt(engine, role, question, context),
        role=role,
        sampling=Sampling(temperature=0.0, max_tokens=settings.router_max_tokens, stop=("\n",)),
        priority=Priority.FIRST,  # the whole answer waits for it
    )
    out = await collect(engine, request, meter)
    chosen = parse_router_answer(out.text)
    if chosen is None:
        return RouteDecision(settings.router_default, "default", f"unreadable router answer {out.text!r}")
    return RouteDecision(chosen, "model", out.text.strip())


# --- evaluation ----------------------------------------------------------------------------------


def scores(labels: Sequence[int], chosen: Sequence[bool]) -> dict[str, float | int]:
    """Accuracy, precision, recall (of 'suits a skeleton'), balanced accuracy and the confusion counts
    of `chosen` (a skeleton chosen) against `labels` (1 = suits a skeleton)."""
    tp = sum(1 for y, c in zip(labels, chosen, strict=True) if y == 1 and c)
    tn = sum(1 for y, c in zip(labels, chosen, strict=True) if y == 0 and not c)
    fp = sum(1 for y, c in zip(labels, chosen, strict=True) if y == 0 and c)
    fn = sum(1 for y, c in zip(labels, chosen, strict=True) if y == 1 and not c)
    n = tp + tn + fp + fn
    recall = tp / (tp + fn) if tp + fn else 0.0
    specificity = tn / (tn + fp) if tn + fp else 0.0
    return {"n": n, "accuracy": round((tp + tn) / n, 4) if n else 0.0,
            "precision": round(tp / (tp + fp), 4) if tp + fp else 0.0, "recall": round(recall, 4),
            "balanced_accuracy": round((recall + specificity) / 2, 4), "tp": tp, "tn": tn, "fp": fp, "fn": fn}


def _score(pairs: Iterable[tuple[int, RouteDecision]]) -> dict[str, object]:
    pairs = list(pairs)
    by_source: dict[str, list[int]] = {}
    for label, d in pairs:
        ok = int((d.route is not Route.DIRECT) == (label == 1))
        by_source.setdefault(d.source, []).append(ok)
    return {
        **scores([label for label, _ in pairs], [d.route is not Route.DIRECT for _, d in pairs]),
        "routes": {r.value: sum(1 for _, d in pairs if d.route is r) for r in Route},
        "by_source": {
            s: {"n": len(v), "accuracy": round(sum(v) / len(v), 4)} for s, v in sorted(by_source.items())
        },
    }


def evaluate_rules(rows: Iterable[tuple[int, str]], default: Route = Route.DIRECT) -> dict[str, object]:
    """Scores of the rules alone on (label, question) rows (undecided questions get `default`); reading a
    labelled file is the service's (espalier.service.bench.questions.label_rows)."""
    return _score((label, rules_only_route(q, default)) for label, q in rows)
