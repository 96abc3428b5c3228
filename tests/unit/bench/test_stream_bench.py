"""The streaming benchmark without a model: simulated typing, the paired accuracy figures, the summary."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from engine_fakes import FakeEngine

from espalier.planner.live import StreamedPrompt
from espalier.planner.plan import Mode
from espalier.planner.settings import PlannerSettings
from espalier.service.bench.stream_bench import (
    StreamBenchOptions,
    _summarise,
    paired_accuracy,
    summary_lines,
    type_prompt,
)

PROMPT = "The shop opens at nine. It closes at five. How long is it open?\nA) 8 hours\nB) 9 hours\n"


async def test_typing_skips_the_time_in_which_the_work_is_idle() -> None:
    engine = FakeEngine(delay=0.01, default_reply="a short note")
    notes: list[str] = []
    cps = len(PROMPT) / 20.0  # 20 seconds of typing
    t0 = time.perf_counter()
    async with StreamedPrompt(engine, Mode.LIVE, PlannerSettings()) as sp:
        typing_s, skipped_s = await type_prompt(sp, PROMPT, cps, notes)
        await sp.end()
    real = time.perf_counter() - t0
    assert typing_s == pytest.approx(20.0, abs=0.05)  # the set pace, to the last word
    assert real < 5 and skipped_s > typing_s - real  # nearly all of it skipped
    # As when typed in real time: a note on each of the five parts (two sentences, the question and
    # two option lines), each written before the next part is in.
    assert notes == ["a short note"] * 5


async def test_typing_waits_in_real_time_while_the_work_is_busy() -> None:
    engine = FakeEngine(delay=0.05, default_reply="one two three four five six")  # ~0.3 s a note
    notes: list[str] = []
    prompt = "One. Two."
    async with StreamedPrompt(engine, Mode.LIVE, PlannerSettings()) as sp:
        t0 = time.perf_counter()
        typing_s, skipped_s = await type_prompt(sp, prompt, len(prompt) / 1.0, notes)  # 1 second
        real = time.perf_counter() - t0
        await sp.end()
    # "One." is noted while "Two." is typed: that time passes for real; the rest is skipped.
    assert real >= 0.25 and typing_s == pytest.approx(1.0, abs=0.05)
    assert skipped_s == pytest.approx(typing_s - real, abs=0.05)


async def test_real_time_typing_skips_nothing() -> None:
    async with StreamedPrompt(FakeEngine(), Mode.DIRECT, PlannerSettings()) as sp:
        t0 = time.perf_counter()
        typing_s, skipped_s = await type_prompt(sp, "Ab. Cd. Ef.", 11 / 0.3, [], skip_idle=False)
        real = time.perf_counter() - t0
    assert skipped_s == 0 and real >= 0.3 and typing_s == pytest.approx(real, abs=1e-3)


def test_paired_accuracy_figures() -> None:
    whole = [True] * 6 + [False] * 4
    live = [True] * 5 + [False, True, False, False, False]  # item 6 lost, item 7 won
    got = paired_accuracy(whole, live)
    assert got["points"] == 0.0 and got["base_only"] == 1 and got["other_only"] == 1
    half = 1.96 * math.sqrt(2 / 9) / math.sqrt(10)  # differences: one -1, one +1, eight 0
    assert got["ci95_points"] == [round(-100 * half, 1), round(100 * half, 1)]
    assert got["mcnemar_p"] == 1.0
    worse = paired_accuracy([True] * 10, [False] * 6 + [True] * 4)
    assert worse["points"] == -60.0 and worse["base_only"] == 6 and worse["other_only"] == 0
    assert worse["mcnemar_p"] == round(2 / 2**6, 4)  # both tails of 6 fair coin flips all one way
    assert worse["ci95_points"][1] < 0  # type: ignore[index]
    same = paired_accuracy([True, False, True], [True, False, True])
    assert same == {"points": 0.0, "ci95_points": [0.0, 0.0], "base_only": 0, "other_only": 0, "mcnemar_p": 1.0}
    assert paired_accuracy([True], [False])["ci95_points"] is None  # one item: no interval
    with pytest.raises(ValueError):
        paired_accuracy([True], [True, False])


def _row(latency: float, correct: bool) -> dict[str, object]:
    return {"latency_after_end_s": latency, "first_token_after_end_s": latency / 2, "answer": "A", "correct": correct}


def test_the_summary_keeps_its_keys_and_adds_n_and_the_comparison_with_whole() -> None:
    items = [{"id": f"x{n}", "whole": _row(4.0, w), "plain": _row(1.0, w), "live": _row(2.0, lv)}
             for n, (w, lv) in enumerate([(True, True), (True, False), (False, False), (True, True)])]
    out = _summarise(items, StreamBenchOptions())  # type: ignore[arg-type]
    whole, plain, live = out["whole"], out["plain"], out["live"]
    assert whole == {"latency_after_end_s": 4.0, "first_token_after_end_s": 2.0, "accuracy": 0.75, "correct": 3, "n": 4}
    assert plain["latency_reduction"] == 0.75 and out["latency_reduction"] == 0.75  # type: ignore[index]
    assert live["accuracy"] == 0.5 and live["accuracy_vs_whole"]["points"] == -25.0  # type: ignore[index]
    assert live["accuracy_vs_whole"]["base_only"] == 1  # type: ignore[index]
    lines = summary_lines(out, ("whole", "plain", "live"))
    assert lines[0].startswith("whole: 4.00 s after the end (median)") and "accuracy 0.750 (3/4)" in lines[0]
    assert "latency reduction 0.500" in lines[2]
    assert lines[3].startswith("plain minus whole: +0.0 accuracy points")
    assert lines[4].startswith("live minus whole: -25.0 accuracy points (paired 95% interval -74.0 to +24.0)")
    assert lines[4].endswith("right only whole 1, only live 0 (exact McNemar p 1.000)")


async def test_typing_can_be_cancelled() -> None:
    async with StreamedPrompt(FakeEngine(delay=0.05), Mode.LIVE, PlannerSettings()) as sp:
        task = asyncio.create_task(type_prompt(sp, PROMPT, 1.0, []))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
