"""Stub runner and judge for the bench's unit tests; the fake engine is the shared one (tests/engine_fakes.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from espalier.service.bench.answers import RunResult
from espalier.service.bench.checklist import Graded


class StubRunner:
    """Answers from a table: seconds[(question, mode)]; logs the order it was asked in."""

    def __init__(self, seconds: dict[tuple[str, str], float], routes: dict[str, str] | None = None,
                 fail: set[tuple[str, str]] | None = None) -> None:
        self.seconds = seconds
        self.routes = routes or {}
        self.fail = fail or set()
        self.log: list[tuple[str, str]] = []

    async def answer(self, question: str, mode: str) -> RunResult:
        self.log.append((question, mode))
        if (question, mode) in self.fail:
            return RunResult(0.5, error="EngineFault: injected")
        route = self.routes.get(question, "parallel") if mode == "auto" else \
            {"direct": "direct", "sot": "parallel", "sgd": "graph"}[mode]
        secs = self.seconds[(question, mode)]
        return RunResult(secs, secs / 4, tokens=int(secs * 10), answer=f"{mode} answer to {question}", route=route)

    async def route(self, question: str) -> tuple[str, str]:
        return self.routes.get(question, "parallel"), "stub"


class StubJudge:
    """Replies from a function of (answer_a, answer_b); records every call."""

    name = "stub judge"

    def __init__(self, decide: Callable[[str, str], str]) -> None:
        self.decide = decide
        self.calls: list[tuple[str, str, str]] = []

    async def reply(self, question: str, answer_a: str, answer_b: str) -> str:
        self.calls.append((question, answer_a, answer_b))
        return self.decide(answer_a, answer_b)


class StubMarginJudge(StubJudge):
    """Margins from a function of (answer_a, answer_b), None for no margin; text replies as StubJudge."""

    def __init__(self, margin: Callable[[str, str], float | None],
                 decide: Callable[[str, str], str] = lambda a, b: "A") -> None:
        super().__init__(decide)
        self.margin_of = margin
        self.margin_calls: list[tuple[str, str, str]] = []

    async def margin(self, question: str, answer_a: str, answer_b: str) -> float | None:
        self.margin_calls.append((question, answer_a, answer_b))
        return self.margin_of(answer_a, answer_b)


class StubGrader(StubJudge):
    """Grades from a function of the answer (None for no grade); records every grading."""

    def __init__(self, grade: Callable[[str], float | None]) -> None:
        super().__init__(lambda a, b: "A")
        self.grade_of = grade
        self.graded: list[str] = []

    async def grade(self, question: str, answer: str) -> float | None:
        self.graded.append(answer)
        return self.grade_of(answer)


class StubChecklistJudge:
    """Checklist grades from a function of (answer, item) -> P(yes) or None; records every answer graded."""

    name = "stub checklist judge"

    def __init__(self, grade: Callable[[str, str], float | None]) -> None:
        self.grade_of = grade
        self.graded: list[tuple[str, tuple[str, ...]]] = []

    async def grade_items(self, question: str, answer: str, items: Sequence[str]) -> Graded:
        self.graded.append((answer, tuple(items)))
        return Graded(tuple(self.grade_of(answer, item) for item in items))
