"""`espalier bench stream`: how much sooner an answer comes when the prompt is streamed, measured.

Owns the streaming benchmark: each multiple-choice prompt is answered three ways on the same
embedded engine, interleaved per prompt so machine noise hits all alike: sent whole (the baseline:
nothing happens before the last word, so it does not wait for the typing), typed word by word at a
set pace with sentence-wise prefill (plain), and typed with notes written after each sentence (live).
Latency is measured from the end marker to the first answer token and to the last; accuracy is graded
against the known letters, and each streamed way's accuracy is compared with whole's item by item.

Typing is simulated on a clock that skips the time in which the streamed prompt's background work is
idle (caught up with the text, waiting for the next sentence): nothing happens then, so skipping it
changes neither what is prefilled or noted nor the state at the end marker, only how long the run
takes. While the work is busy the words arrive in real time, as a typist's would. `skip_idle=False`
types in real time throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from espalier.planner import pipeline
from espalier.planner.engine import Role
from espalier.planner.events import AnswerDone, Event, NodeDelta
from espalier.planner.live import StreamedPrompt
from espalier.planner.plan import Mode
from espalier.planner.settings import PlannerSettings
from espalier.service.bench.stream_set import MCItem, grade, load_mc
from espalier.service.console import progress_lines

WAYS = ("whole", "plain", "live")


@dataclass(frozen=True)
class StreamBenchOptions:
    set_path: Path | None = None  # None: the packaged multiple-choice set
    limit: int | None = 8  # None or 0: every item
    pace_cpm: float = 240.0  # typing pace in characters per minute (LiveMind's setting)
    ways: tuple[str, ...] = WAYS
    answer_tokens: int = 8  # the prompts ask for a letter alone; 8 leaves room for "B) The Q-350"
    skip_idle: bool = True  # skip the typing time in which the streamed work is idle (see the module doc)
    note_tokens: int = 40
    live_answer_role: str = "large"
    large: str = "large"
    small: str = "small"
    threads: int = 0
    gpu_layers: int = 0


@dataclass
class Outcome:
    latency_s: float  # end marker to the last answer token
    first_token_s: float | None  # end marker to the first answer token
    answer: str
    correct: bool
    notes: list[str] = field(default_factory=list)
    sentences: int = 0
    tokens_prefilled: int = 0
    typing_s: float = 0.0  # the prompt's typing time at the set pace (0 for whole)
    skipped_s: float = 0.0  # of it, idle time skipped rather than waited


_progress = progress_lines("bench stream")


def _words(text: str) -> list[str]:
    """Typing units: each word with the whitespace after it (joining them gives the text back)."""
    return re.findall(r"\S+\s*|\s+", text)


async def _answer(events: AsyncIterator[Event], t_end: float) -> tuple[str, float | None, float]:
    first: float | None = None
    done: AnswerDone | None = None
    async with aclosing(events) as stream:  # type: ignore[type-var]
        async for event in stream:
            if isinstance(event, NodeDelta) and first is None and event.text.strip():
                first = time.perf_counter() - t_end
            elif isinstance(event, AnswerDone):
                done = event
    assert done is not None
    return done.text, first, time.perf_counter() - t_end


async def _whole(engine: object, item: MCItem, settings: PlannerSettings) -> Outcome:
    t_end = time.perf_counter()
    text, first, total = await _answer(pipeline.answer(engine, item.prompt, Mode.DIRECT, settings), t_end)  # type: ignore[arg-type]
    return Outcome(total, first, text, grade(text, item))


async def _typed(engine: object, item: MCItem, settings: PlannerSettings, mode: Mode, cps: float,
                 skip_idle: bool) -> Outcome:
    notes: list[str] = []
    async with StreamedPrompt(engine, mode, settings) as sp:  # type: ignore[arg-type]
        typing_s, skipped_s = await type_prompt(sp, item.prompt, cps, notes, skip_idle)
        t_end = time.perf_counter()  # the end marker: the last word is in
        await sp.end()
        summary = sp.summary()
        answer: Callable[[], AsyncIterator[Event]] = (
            (lambda: sp.answer(item.prompt)) if mode is Mode.LIVE
            else (lambda: pipeline.answer(engine, item.prompt, Mode.DIRECT, settings)))  # type: ignore[arg-type]
        out, first, total = await _answer(answer(), t_end)
    return Outcome(total, first, out, grade(out, item), notes, summary.sentences, summary.tokens_prefilled,
                   typing_s, skipped_s)


async def type_prompt(sp: StreamedPrompt, prompt: str, cps: float, notes: list[str],
                      skip_idle: bool = True) -> tuple[float, float]:
    """Type `prompt` into `sp` word by word, each word taking its length / cps; the typing time and the
    idle time skipped. A word is due when the words before it have taken their time (late words do not
    push the later ones back); while waiting for it, idle time is skipped when `skip_idle`."""
    start = time.perf_counter()
    skipped = due = 0.0
    text = ""
    for word in _words(prompt):
        text += word
        sp.update(text)
        due += len(word) / cps
        while (wait := due - (time.perf_counter() - start + skipped)) > 0:
            if not skip_idle:
                await asyncio.sleep(wait)
            elif sp.idle:
                skipped += wait  # nothing would happen until the word is due
            else:
                with contextlib.suppress(TimeoutError):  # busy: real time passes until it is due or idle
                    await asyncio.wait_for(sp.wait_idle(), wait)
        while not sp.progress.empty():
            p = sp.progress.get_nowait()
            if p is not None and p.note:
                notes.append(p.note)
    return time.perf_counter() - start + skipped, skipped


async def run_stream_bench(opts: StreamBenchOptions) -> dict[str, object]:
    from espalier.service.engine.config import ContextConfig, EngineConfig
    from espalier.service.engine.llama_engine import LlamaEngine

    items = load_mc(opts.set_path)[: opts.limit or None]
    unknown = set(opts.ways) - set(WAYS)
    if unknown or "whole" not in opts.ways:
        raise ValueError(f"ways must include whole and come from {', '.join(WAYS)} (got {', '.join(opts.ways)})")
    cps = opts.pace_cpm / 60.0
    settings = PlannerSettings().replace(direct_role=Role.LARGE, live_answer_role=Role(opts.live_answer_role),
                                         direct_max_tokens=opts.answer_tokens, live_note_tokens=opts.note_tokens)
    roles = {"large": ContextConfig(model=opts.large, slots=4, n_ctx=8192, threads=opts.threads,
                                    n_gpu_layers=opts.gpu_layers)}
    if opts.live_answer_role == "small":
        roles["small"] = ContextConfig(model=opts.small, slots=4, n_ctx=8192, threads=opts.threads,
                                       n_gpu_layers=opts.gpu_layers)
    _progress(f"loading {', '.join(roles)}; {len(items)} prompts typed at {opts.pace_cpm:.0f} characters a minute"
              + ("" if opts.skip_idle else " in real time"))
    engine = await LlamaEngine.load(EngineConfig(**roles))  # type: ignore[arg-type]
    per_item: list[dict[str, object]] = []
    try:
        for n, item in enumerate(items):
            ways = opts.ways[n % len(opts.ways):] + opts.ways[: n % len(opts.ways)]  # rotate who goes first
            got: dict[str, Outcome] = {}
            for way in ways:
                if way == "whole":
                    got[way] = await _whole(engine, item, settings)
                else:
                    got[way] = await _typed(engine, item, settings, Mode.LIVE if way == "live" else Mode.DIRECT, cps,
                                            opts.skip_idle)
                o = got[way]
                _progress(f"{n + 1}/{len(items)} {item.id} {way:>5}: {o.latency_s:6.2f} s after the end"
                          f"{'' if o.correct else ' (wrong)'}"
                          + (f"; typed in {o.typing_s - o.skipped_s:.1f} of {o.typing_s:.1f} s" if o.typing_s else ""))
            per_item.append({"id": item.id, "answer": item.answer, "chars": len(item.prompt),
                             **{w: _outcome_json(o) for w, o in got.items()}})
    finally:
        await engine.aclose()
    return _summarise(per_item, opts)


def _outcome_json(o: Outcome) -> dict[str, object]:
    return {"latency_after_end_s": round(o.latency_s, 3),
            "first_token_after_end_s": None if o.first_token_s is None else round(o.first_token_s, 3),
            "answer": o.answer, "correct": o.correct, "notes": o.notes, "sentences": o.sentences,
            "tokens_prefilled": o.tokens_prefilled, "typing_s": round(o.typing_s, 3),
            "idle_skipped_s": round(o.skipped_s, 3)}


def _summarise(items: list[dict[str, object]], opts: StreamBenchOptions) -> dict[str, object]:
    out: dict[str, object] = {"set": str(opts.set_path or "packaged multiple-choice set (written for Espalier)"),
                              "prompts": len(items), "pace_cpm": opts.pace_cpm, "answer_tokens": opts.answer_tokens,
                              "note_tokens": opts.note_tokens, "idle_skipped": opts.skip_idle,
                              "live_answer_role": opts.live_answer_role, "items": items}
    right = {way: [bool(i[way]["correct"]) for i in items] for way in opts.ways}  # type: ignore[index]
    for way in opts.ways:
        rows = [i[way] for i in items]  # type: ignore[index]
        out[way] = {
            "latency_after_end_s": round(statistics.median(r["latency_after_end_s"] for r in rows), 3),  # type: ignore[index]
            "first_token_after_end_s": _median([r["first_token_after_end_s"] for r in rows]),  # type: ignore[index]
            "accuracy": round(sum(right[way]) / len(rows), 3),
            "correct": sum(right[way]),
            "n": len(rows),
        }
        if way != "whole":
            ratios = [i[way]["latency_after_end_s"] / i["whole"]["latency_after_end_s"] for i in items]  # type: ignore[index]
            out[way]["latency_reduction"] = round(1 - statistics.median(ratios), 3)  # type: ignore[index]
            out[way]["accuracy_vs_whole"] = paired_accuracy(right["whole"], right[way])  # type: ignore[index]
    if "plain" in opts.ways:  # the headline figure: sentence-wise prefill alone
        out["latency_reduction"] = out["plain"]["latency_reduction"]  # type: ignore[index]
    return out


def summary_lines(result: dict[str, object], ways: Sequence[str]) -> list[str]:
    """What `espalier bench stream` prints: per way latency and accuracy, then each streamed way against whole."""
    lines = []
    for way in ways:
        row: dict[str, Any] = result[way]  # type: ignore[assignment]
        lines.append(f"{way:>5}: {row['latency_after_end_s']:.2f} s after the end (median), first token "
                     f"{row['first_token_after_end_s']} s, accuracy {row['accuracy']:.3f} ({row['correct']}/{row['n']})"
                     + (f", latency reduction {row['latency_reduction']:.3f}" if "latency_reduction" in row else ""))
    for way in ways:
        vs = result[way].get("accuracy_vs_whole")  # type: ignore[attr-defined]
        if vs:
            ci = vs["ci95_points"]
            lines.append(f"{way} minus whole: {vs['points']:+.1f} accuracy points"
                         + (f" (paired 95% interval {ci[0]:+.1f} to {ci[1]:+.1f})" if ci else "")
                         + f"; right only whole {vs['base_only']}, only {way} {vs['other_only']}"
                         f" (exact McNemar p {vs['mcnemar_p']:.3f})")
    return lines


def paired_accuracy(base: list[bool], other: list[bool]) -> dict[str, object]:
    """`other`'s accuracy minus `base`'s on the same items, in points, with a paired 95% interval.

    The interval is the normal approximation on the per-item differences (-1, 0 or 1): mean +- 1.96
    standard errors; None below two items. The discordant counts are given too, with McNemar's exact
    two-sided p (the binomial test of base_only against other_only): with few discordant items the
    counts say more than the interval.
    """
    if len(base) != len(other) or not base:
        raise ValueError("paired accuracy needs the same, non-empty, items graded both ways")
    n = len(base)
    diffs = [int(o) - int(b) for b, o in zip(base, other, strict=True)]
    mean = sum(diffs) / n
    ci: list[float] | None = None
    if n >= 2:
        half = 1.96 * statistics.stdev(diffs) / math.sqrt(n)
        ci = [round(100 * (mean - half), 1), round(100 * (mean + half), 1)]
    base_only, other_only = diffs.count(-1), diffs.count(1)
    return {"points": round(100 * mean, 1), "ci95_points": ci, "base_only": base_only, "other_only": other_only,
            "mcnemar_p": round(_mcnemar_exact(base_only, other_only), 4)}


def _mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p: twice the smaller binomial tail of b + c fair coin flips, at most 1."""
    k, m = min(b, c), b + c
    return min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m)


def _median(values: list[float | None]) -> float | None:
    have = [v for v in values if v is not None]
    return round(statistics.median(have), 3) if have else None
