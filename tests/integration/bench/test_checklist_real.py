"""The checklist judge on the real small model: a yes/no item about one answer, graded by P(yes)."""

from __future__ import annotations

import asyncio

import pytest

from espalier.planner.engine import Role
from espalier.service.bench.checklist import EngineChecklistJudge

pytestmark = pytest.mark.model

QUESTION = "What is the capital of France, and what river runs through it?"
ITEMS = ("Does the response name Paris as the capital?", "Does it name the Seine as the river?")


async def test_an_answer_that_does_what_an_item_asks_scores_higher_than_one_that_does_not(small_engine):
    judge = EngineChecklistJudge(small_engine, Role.SMALL, name="small")
    async with asyncio.timeout(240):
        right = await judge.grade_items(QUESTION, "The capital of France is Paris, and the Seine runs through it.",
                                        ITEMS)
        wrong = await judge.grade_items(QUESTION, "Bananas are yellow and grow in bunches.", ITEMS)
    assert all(g is not None and 0.0 <= g <= 1.0 for g in right.grades + wrong.grades)
    assert right.score is not None and wrong.score is not None
    assert right.score > wrong.score, (right, wrong)
    # the items of one answer fork one prefilled prefix (the question and the answer) and leave nothing open
    assert small_engine.stats().slots_busy == 0
