"""`espalier bench stream`: how much sooner an answer comes when the prompt is streamed, measured.

Owns the streaming benchmark: each multiple-choice prompt is answered three ways on the same
embedded engine, interleaved per prompt so machine noise hits all alike: sent whole (the baseline:
nothing happens before the last word), typed word by word at a set pace with sentence-wise prefill
(plain), and typed with notes written after each sentence (live). Latency is measured from the end
marker to the first answer token and to the last; accuracy is graded against the known letters.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

from planner import pipeline
from planner.engine import Role
from planner.events import AnswerDone, Event, NodeDelta
from planner.live import StreamedPrompt
from planner.plan import Mode
from planner.settings import PlannerSettings
from service.bench.stream_set import MCItem, grade, load_mc

WAYS = ("whole", "plain", "live")


@dataclass(frozen=True)
class StreamBenchOptions:
    set_path: Path | None = None  # None: the packaged multiple-choice set
    limit: int | None = 8
    pace_cpm: float = 240.0  # typing pace in characters per minute (LiveMind's setting)
    ways: tuple[str, ...] = WAYS
    answer_tokens: int = 16
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


def _progress(msg: str) -> None:
    print(f"[bench stream] {msg}", file=sys.stderr, flush=True)


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


async def _typed(engine: object, item: MCItem, settings: PlannerSettings, mode: Mode, cps: float) -> Outcome:
    notes: list[str] = []
    async with StreamedPrompt(engine, mode, settings) as sp:  # type: ignore[arg-type]
        text = ""
        for word in _words(item.prompt):
            text += word
            sp.update(text)
            await asyncio.sleep(len(word) / cps)
            while not sp.progress.empty():
                p = sp.progress.get_nowait()
                if p is not None and p.note:
                    notes.append(p.note)
        t_end = time.perf_counter()  # the end marker: the last word is in
        await sp.end()
        summary = sp.summary()
        answer: Callable[[], AsyncIterator[Event]] = (
            (lambda: sp.answer(item.prompt)) if mode is Mode.LIVE
            else (lambda: pipeline.answer(engine, item.prompt, Mode.DIRECT, settings)))  # type: ignore[arg-type]
        out, first, total = await _answer(answer(), t_end)
    return Outcome(total, first, out, grade(out, item), notes, summary.sentences, summary.tokens_prefilled)


async def run_stream_bench(opts: StreamBenchOptions) -> dict[str, object]:
    from service.engine.config import ContextConfig, EngineConfig
    from service.engine.llama_engine import LlamaEngine

    items = load_mc(opts.set_path)[: opts.limit]
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
    _progress(f"loading {', '.join(roles)}; {len(items)} prompts typed at {opts.pace_cpm:.0f} characters a minute")
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
                    got[way] = await _typed(engine, item, settings, Mode.LIVE if way == "live" else Mode.DIRECT, cps)
                o = got[way]
                _progress(f"{n + 1}/{len(items)} {item.id} {way:>5}: {o.latency_s:6.2f} s after the end"
                          f"{'' if o.correct else ' (wrong)'}")
            per_item.append({"id": item.id, "answer": item.answer, "chars": len(item.prompt),
                             **{w: _outcome_json(o) for w, o in got.items()}})
    finally:
        await engine.aclose()
    return _summarise(per_item, opts)


def _outcome_json(o: Outcome) -> dict[str, object]:
    return {"latency_after_end_s": round(o.latency_s, 3),
            "first_token_after_end_s": None if o.first_token_s is None else round(o.first_token_s, 3),
            "answer": o.answer, "correct": o.correct, "notes": o.notes, "sentences": o.sentences,
            "tokens_prefilled": o.tokens_prefilled}


def _summarise(items: list[dict[str, object]], opts: StreamBenchOptions) -> dict[str, object]:
    out: dict[str, object] = {"set": str(opts.set_path or "packaged multiple-choice set (written for Espalier)"),
                              "prompts": len(items), "pace_cpm": opts.pace_cpm,
                              "live_answer_role": opts.live_answer_role, "items": items}
    for way in opts.ways:
        rows = [i[way] for i in items]  # type: ignore[index]
        out[way] = {
            "latency_after_end_s": round(statistics.median(r["latency_after_end_s"] for r in rows), 3),  # type: ignore[index]
            "first_token_after_end_s": _median([r["first_token_after_end_s"] for r in rows]),  # type: ignore[index]
            "accuracy": round(sum(1 for r in rows if r["correct"]) / len(rows), 3),  # type: ignore[index]
        }
        if way != "whole":
            ratios = [i[way]["latency_after_end_s"] / i["whole"]["latency_after_end_s"] for i in items]  # type: ignore[index]
            out[way]["latency_reduction"] = round(1 - statistics.median(ratios), 3)  # type: ignore[index]
    if "plain" in opts.ways:  # the headline figure: sentence-wise prefill alone
        out["latency_reduction"] = out["plain"]["latency_reduction"]  # type: ignore[index]
    return out


def _median(values: list[float | None]) -> float | None:
    have = [v for v in values if v is not None]
    return round(statistics.median(have), 3) if have else None
