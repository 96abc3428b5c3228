"""Checklist grading for `espalier bench answers --judge-mode checklist` (the RocketEval method, ICLR 2025).

Owns the checklist files (per question, 5 to 8 yes/no items that a strong model wrote once, such as
../shared/data/vicuna80_checklists.jsonl), the item prompt, and turning a judge's first reply token into
the probability that the answer satisfies an item.

Why: a 1.5B judge cannot rank two long answers (its pairwise margins barely move even against an
off-topic answer), but it can answer one narrow question about one answer: "does it mention X?". So
each answer is graded item by item, each item alone (so one item's verdict cannot sway the next), and
an item's grade is the judge's probability of "yes" among yes and no at its first reply token, not its
greedy word: a small judge's words are nearly always "yes", its probabilities still move with the text.
An answer's score is the mean grade of its items, 0 to 100. Per question, a mode's score minus direct's,
against a tie band in score points, gives win, tie or lose (espalier.service.bench.answers).

The item prompt puts the question and the answer first and the item last, so the engine prefills the
answer once and forks it for every item (a checklist costs one answer's prefill, not eight).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from espalier.planner import decode
from espalier.planner.engine import (
    MAX_TOP_LOGPROBS,
    Engine,
    EngineError,
    GenerateRequest,
    Message,
    Prefix,
    Role,
    Sampling,
)
from espalier.planner.prompts import SPLIT, render
from espalier.service.bench.judge import (
    DEFAULT_MAX_ANSWER_CHARS,
    JUDGE_TOP_LOGPROBS,
    JudgeError,
    OpenAIJudge,
    absent_bound,
    cut_answer,
    first_top_logprobs,
    label_logprob,
)
from espalier.service.bench.questions import QuestionSetError, jsonl_objects, normalize

CHECK_SYSTEM = (
    "You are a careful, strict grader. You will see a question, an answer to it, and one yes/no question "
    "about that answer. Read the answer and decide whether it really does what the yes/no question asks: "
    "say yes only if the answer clearly does so, correctly; a vague mention, a wrong claim or a missing "
    "part is no. Reply with one word: yes or no."
)
DEFAULT_TIE_BAND = 5.0  # score points (of 100) of difference below which a mode ties direct
MIN_LABEL_MASS = 0.2  # yes and no together must carry this much probability for a grade


def checklist_method(band: float) -> str:
    """How checklist-graded pairs are decided, as the report and the settings state it."""
    return f"checklist grades (mean P(yes) per item, 0-100), tie band ±{band:g} points"


def load_checklists(path: str | Path) -> dict[str, tuple[str, ...]]:
    """{normalized question: items} from JSONL lines `{"request": ..., "checklist": [...]}`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise QuestionSetError(f"{p}: cannot read ({exc.strerror or exc})") from None
    out: dict[str, tuple[str, ...]] = {}
    for line, obj in jsonl_objects(text, str(p)):
        question = (obj.get("request") or obj.get("question")) if isinstance(obj, dict) else None
        items = obj.get("checklist") if isinstance(obj, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise QuestionSetError(f"{p}:{line}: no `request` text")
        if not isinstance(items, list) or not items or not all(isinstance(i, str) and i.strip() for i in items):
            raise QuestionSetError(f"{p}:{line}: `checklist` must be a non-empty list of strings")
        out[normalize(question)] = tuple(i.strip() for i in items)
    if not out:
        raise QuestionSetError(f"{p}: no checklists")
    return out


def checklist_for(checklists: Mapping[str, tuple[str, ...]], question: str) -> tuple[str, ...] | None:
    return checklists.get(normalize(question))


def item_messages(question: str, answer: str, item: str,
                  max_chars: int = DEFAULT_MAX_ANSWER_CHARS) -> list[Message]:
    """The item prompt; SPLIT marks where the item starts (everything before it is shared)."""
    user = (f"Question:\n{question.strip()}\n\n[Answer]\n{cut_answer(answer, max_chars)}\n[End of Answer]\n\n"
            f"{SPLIT}Yes/no question about the answer: {item.strip()}\nReply with yes or no.")
    return [Message("system", CHECK_SYSTEM), Message("user", user)]


def yes_probability(top: Sequence[tuple[str, float]]) -> float | None:
    """P(yes) / (P(yes) + P(no)) at the first reply token ("Yes", " yes", "YES" all count); a label missing
    from the top entries gets the bound of judge.absent_bound. None when neither label is listed, or
    both together carry under MIN_LABEL_MASS (the judge is not answering yes or no)."""
    yes, no = label_logprob(top, "yes"), label_logprob(top, "no")
    if yes is None and no is None:
        return None
    floor = absent_bound(top)
    py, pn = math.exp(yes if yes is not None else floor), math.exp(no if no is not None else floor)
    if py + pn < MIN_LABEL_MASS:
        return None
    return py / (py + pn)


@dataclass(frozen=True, slots=True)
class Graded:
    """One answer's checklist: a grade per item (None where the judge gave no yes/no), and the score."""

    grades: tuple[float | None, ...]

    @property
    def score(self) -> float | None:
        """Mean grade x 100 over the items graded; None when none was."""
        known = [g for g in self.grades if g is not None]
        return 100 * sum(known) / len(known) if known else None


class ChecklistJudge(Protocol):
    @property
    def name(self) -> str: ...

    async def grade_items(self, question: str, answer: str, items: Sequence[str]) -> Graded: ...


@dataclass
class EngineChecklistJudge:
    """A loaded model role of the embedded engine: one token with its top logprobs per item, all items
    of an answer forked from one prefilled prefix (the question and the answer)."""

    engine: Engine
    role: Role
    name: str = "embedded"
    max_chars: int = DEFAULT_MAX_ANSWER_CHARS

    async def grade_items(self, question: str, answer: str, items: Sequence[str]) -> Graded:
        tops = await self._tops([item_messages(question, answer, item, self.max_chars) for item in items])
        return Graded(tuple(yes_probability(top) if top else None for top in tops))

    async def _tops(self, prompts: Sequence[Sequence[Message]]) -> list[list[tuple[str, float]]]:
        """The first reply token's top entries of each prompt, all forked from their shared prefix."""
        rendered = [render(self.engine, self.role, messages, "") for messages in prompts]
        shared = rendered[0].prefix
        if shared and all(r.prefix == shared for r in rendered):
            async with self.engine.prefix(self.role, shared) as prefix:
                return list(await asyncio.gather(*(self._first_top(r.tail, prefix) for r in rendered)))
        # no shareable prefix (a template that moves text): whole prompts, the same grades
        return list(await asyncio.gather(*(self._first_top(r.full, None) for r in rendered)))

    async def _first_top(self, prompt: str, prefix: Prefix | None) -> list[tuple[str, float]]:
        request = GenerateRequest(prompt=prompt, role=self.role, prefix=prefix, top_logprobs=MAX_TOP_LOGPROBS,
                                  sampling=Sampling(temperature=0.0, max_tokens=1))
        entries = [e for c in await decode.chunks(self.engine, request) for e in c.logprobs]
        if not entries:
            raise EngineError("the checklist judge's engine gave no logprobs (it needs a local model)")
        return list(entries[0].top)


@dataclass
class EndpointChecklistJudge:
    """Checklist grading by any OpenAI-compatible chat endpoint that returns `top_logprobs` (llama-server,
    vLLM): a stronger judge than the embedded 1.5B model, served anywhere. One one-token completion per
    item; the server's own prompt cache shares the question and answer between an answer's items."""

    endpoint: OpenAIJudge

    @property
    def name(self) -> str:
        return self.endpoint.name

    async def grade_items(self, question: str, answer: str, items: Sequence[str]) -> Graded:
        tops = [await self._first_top(item_messages(question, answer, item, self.endpoint.max_chars))
                for item in items]
        return Graded(tuple(yes_probability(top) if top else None for top in tops))

    async def _first_top(self, messages: Sequence[Message]) -> list[tuple[str, float]]:
        clean = [Message(m.role, m.content.replace(SPLIT, "")) for m in messages]
        got = await self.endpoint.send(clean, max_tokens=1, logprobs=True, top_logprobs=JUDGE_TOP_LOGPROBS)
        top = first_top_logprobs(got["logprobs"])
        if top is None:
            raise JudgeError(f"{self.endpoint.name} sent no top_logprobs: checklist grading needs them")
        return top
