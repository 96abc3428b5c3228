"""`espalier bench answers`: each answer mode over a question set, timed, judged and summarised.

Owns the orchestration: runners that answer one question in one mode (embedded: the planner over
an in-process LlamaEngine; target: a running server through EspalierClient), the interleaved order
(question i starts at mode i mod n, so drift and noise of the machine hit every mode alike), the
pairwise judging of each mode against direct in both orders, router accuracy against labels, the
statistics and the result JSON. Rendering lives in espalier.service.bench.report.

Judging (espalier.service.bench.judge says how and why): a pair is scored by logprob margins when the
judge gives them, since the small embedded judge is so position-biased that its text verdicts
make every pair a tie; otherwise by text verdicts. With --judge-mode single each answer is graded
alone instead (direct's once per question). Each pair records its method, and for margins or grades
both values and the preference p; settings.judge_method states the method of the run.

Statistics: median; p90 by linear interpolation between the closest ranks (numpy's default
method); speed-up of a mode on a question = direct's seconds / the mode's seconds, summarised by
median and geometric mean over the questions both answered; net win rate = (wins - losses) / judged;
mean preference = mean p over the pairs scored by margins (nats) or by single-answer grades (grade
points, the mode's grade minus direct's).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from espalier.planner import pipeline, router
from espalier.planner.engine import Engine, EngineError, GenerateRequest, Message, Role, Sampling, Speculation
from espalier.planner.events import AnswerDone, NodeDelta, NodeFailed, NodeFinished, NodePlanned, PlanReady
from espalier.planner.plan import Mode, PointLength, Route
from espalier.planner.router import scores
from espalier.planner.settings import DEFAULT_SETTINGS, PlannerSettings
from espalier.service.bench import judge as judging
from espalier.service.bench.checklist import (
    DEFAULT_TIE_BAND,
    ChecklistJudge,
    EndpointChecklistJudge,
    EngineChecklistJudge,
    checklist_for,
    checklist_method,
    load_checklists,
)
from espalier.service.bench.questions import Question, load_labels, load_questions, match_labels, normalize
from espalier.service.bench.stats import PERCENTILE_METHOD, geomean, median, percentile
from espalier.service.console import progress_lines

MODES: tuple[str, ...] = tuple(m.value for m in Mode)  # auto, direct, sot, sgd
BASELINE = "direct"
VARIANT_MODES = ("sot", "sgd", "auto")  # modes that write a skeleton: these take `:` variants
_VARIANT_TYPES: dict[str, Callable[[str], Any]] = {
    "Role": Role, "Route": Route, "Speculation": Speculation, "PointLength": PointLength, "int": int, "float": float,
    "bool": lambda v: {"true": True, "false": False}[v.lower()],
}


def split_mode(mode: str) -> tuple[str, dict[str, Any]]:
    """A mode and its planner-setting changes, so one run compares settings on the same questions:
    `sgd:small` (the skeleton written by the small model) -> ("sgd", {"skeleton_role": Role.SMALL});
    `sgd:easy_role=large:point_max_tokens=96` -> two changes; a plain mode -> (mode, {}).
    ValueError for an unknown setting or a value of the wrong kind."""
    name, *parts = mode.split(":")
    kinds = {f.name: f.type for f in dataclasses.fields(PlannerSettings)}
    changes: dict[str, Any] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq:
            key, value = "skeleton_role", part
        convert = _VARIANT_TYPES.get(str(kinds.get(key)))
        if convert is None:
            raise ValueError(f"unknown mode {mode!r}: {key!r} is not a planner setting a variant can change")
        try:
            changes[key] = convert(value)
        except (ValueError, KeyError):
            raise ValueError(f"unknown mode {mode!r}: {value!r} is not a value of {key}") from None
    return name, changes

def rotated(modes: Sequence[str], index: int) -> list[str]:
    """The order of modes for question `index`: start at mode index mod n, wrap around."""
    if not modes:
        return []
    k = index % len(modes)
    return list(modes[k:]) + list(modes[:k])


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


# --- progress ------------------------------------------------------------------------------------


def _clock_str(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressBar:
    """A one-line bar redrawn with \\r on a terminal; one line per item otherwise (logs, CI)."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, width: int = 24) -> None:
        self.total = max(total, 0)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.width = width
        self.done = 0
        self.t0 = clock()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._drawn = 0

    def line(self, note: str = "") -> str:
        elapsed = self.clock() - self.t0
        frac = self.done / self.total if self.total else 1.0
        filled = round(frac * self.width)
        eta = "?" if self.done == 0 else _clock_str(elapsed / self.done * (self.total - self.done))
        bar = "#" * filled + "-" * (self.width - filled)
        text = (f"[{self.label}] |{bar}| {self.done}/{self.total} {frac * 100:3.0f}% "
                f"{_clock_str(elapsed)} elapsed, ETA {eta}")
        return f"{text}  {note}" if note else text

    def step(self, note: str = "") -> None:
        self.done += 1
        self.show(note)

    def show(self, note: str = "") -> None:
        text = self.line(note)
        if self.tty:
            cols = shutil.get_terminal_size((100, 20)).columns - 1
            text = text[:cols]
            self.stream.write("\r" + text.ljust(self._drawn))
            self._drawn = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = 0


# --- runners -------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One question answered in one mode."""

    seconds: float
    ttft_s: float | None = None  # first text of the answer (any point)
    first_visible_s: float | None = None  # first thing a reader sees: an outline point or text
    tokens: int = 0  # generated tokens, every model role and stage (router, skeleton, points)
    answer: str = ""
    route: str = ""
    nodes: int = 0
    failed_nodes: int = 0
    reason: str = ""
    error: str | None = None
    points: list[str] = field(default_factory=list)  # each numbered point's text (failed ones: their partial)
    skeleton: str = ""  # the skeleton text the model wrote (skeleton modes, embedded runner)
    stages: int = 0  # dependency stages of the plan: 1 = every point at once (embedded runner)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.ok and self.seconds > 0 else None


class Runner(Protocol):
    async def answer(self, question: str, mode: str) -> RunResult: ...

    async def route(self, question: str) -> tuple[str, str]:
        """(route, how it was decided) as the planner's router sees it."""
        ...


class EmbeddedRunner:
    """The planner over an in-process engine: `pipeline.answer`, the same settings for every mode."""

    def __init__(self, engine: Engine, settings: PlannerSettings,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.engine = engine
        self.settings = settings.validate()
        self.clock = clock

    async def warm_up(self) -> None:
        """One short decode per role, so the first timed request does not pay for first-touch costs."""
        for role in sorted(self.engine.roles()):
            prompt = self.engine.chat_prompt(role, [Message("user", "Say hello.")])
            stream = self.engine.generate(GenerateRequest(prompt, role, Sampling(max_tokens=2)))
            try:
                async for _ in stream:
                    pass
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()

    def settings_for(self, mode: str) -> PlannerSettings:
        return self._mode_and_settings(mode)[1]

    def _mode_and_settings(self, mode: str) -> tuple[str, PlannerSettings]:
        name, changes = split_mode(mode)
        return name, (self.settings.replace(**changes) if changes else self.settings)

    async def answer(self, question: str, mode: str) -> RunResult:
        t0 = self.clock()
        first: float | None = None
        done: AnswerDone | None = None
        nodes = 0
        reason = ""
        texts: dict[int, str] = {}  # node id -> its text (a point may end before the plan is ready)
        point_ids: list[int] = []  # the plan's points, in skeleton order
        skeleton, stages = "", 0
        visible: float | None = None
        name, settings = self._mode_and_settings(mode)
        try:
            async with aclosing(pipeline.answer(self.engine, question, name, settings)) as events:
                async for event in events:
                    if isinstance(event, NodeDelta | NodeFinished) and first is None and event.text:
                        first = self.clock() - t0
                    if visible is None and (isinstance(event, NodePlanned) or first is not None):
                        visible = self.clock() - t0
                    if isinstance(event, PlanReady):
                        nodes, reason = len(event.plan.nodes), event.plan.reason
                        skeleton, stages = event.plan.skeleton, event.plan.depth()
                        if event.plan.route is not Route.DIRECT:
                            point_ids = [n.id for n in event.plan.points]
                    elif isinstance(event, NodeFinished | NodeFailed):
                        texts[event.node_id] = event.text if isinstance(event, NodeFinished) else event.partial_text
                    elif isinstance(event, AnswerDone):
                        done = event
        except (EngineError, OSError, RuntimeError, ValueError) as exc:
            return RunResult(self.clock() - t0, first, error=f"{type(exc).__name__}: {exc}")
        seconds = self.clock() - t0
        if done is None:
            return RunResult(seconds, first, error="the stream ended without an answer")
        return RunResult(seconds, first, visible, done.usage.completion_tokens, done.text, done.route.value, nodes,
                         len(done.failed), reason, points=[texts.get(i, "") for i in point_ids], skeleton=skeleton,
                         stages=stages)

    async def route(self, question: str) -> tuple[str, str]:
        decision = await router.route(self.engine, question, self.settings)
        return decision.route.value, decision.source


_PB_ROUTES = {1: "direct", 2: "parallel", 3: "graph"}
_PB_PART_UNSPECIFIED, _PB_PART_POINT = 0, 1  # NodePart values of a numbered point


class TargetRunner:
    """A running server through its Answer and Plan calls; routes of auto answers are remembered for the
    router accuracy (a Plan call in auto mode would write the same greedy skeleton again)."""

    def __init__(self, client: Any, generation: Any, clock: Callable[[], float] = time.perf_counter) -> None:
        self.client = client
        self.generation = generation
        self.clock = clock
        self._routes: dict[str, str] = {}

    async def answer(self, question: str, mode: str) -> RunResult:
        import grpc

        t0 = self.clock()
        first: float | None = None
        done: Any = None
        texts: dict[int, str] = {}
        point_ids: list[int] = []
        visible: float | None = None
        nodes = 0
        reason = ""
        try:
            async for event in self.client.answer(question, mode, self.generation):
                kind = event.WhichOneof("event")
                if kind == "node_delta" and first is None and event.node_delta.text:
                    first = self.clock() - t0
                if visible is None and (kind == "node_planned" or first is not None):
                    visible = self.clock() - t0
                elif kind == "plan_ready":
                    nodes, reason = len(event.plan_ready.graph.nodes), getattr(event.plan_ready, "reason", "")
                    if len(event.plan_ready.graph.nodes) > 1:  # a direct plan is its one node
                        point_ids = [n.id for n in event.plan_ready.graph.nodes
                                     if n.part in (_PB_PART_UNSPECIFIED, _PB_PART_POINT)]
                elif kind == "node_finished":  # a point may end before the plan is ready
                    texts[event.node_finished.node_id] = event.node_finished.text
                elif kind == "node_failed":
                    texts[event.node_failed.node_id] = event.node_failed.partial_text
                elif kind == "answer_done":
                    done = event.answer_done
        except grpc.aio.AioRpcError as err:
            return RunResult(self.clock() - t0, first, error=f"{err.code().name}: {err.details()}")
        seconds = self.clock() - t0
        if done is None:
            return RunResult(seconds, first, error="the stream ended without an answer")
        route = _PB_ROUTES.get(int(done.route), "unknown")
        if mode == "auto":
            self._routes[normalize(question)] = route
        tokens = sum(int(u.completion_tokens) for u in done.usage)
        return RunResult(seconds, first, visible, tokens, done.text, route, nodes, len(done.failed_node_ids),
                         reason, points=[texts.get(i, "") for i in point_ids])

    async def route(self, question: str) -> tuple[str, str]:
        known = self._routes.get(normalize(question))
        if known is not None:
            return known, "server (auto answer)"
        reply = await self.client.plan(question, "auto", self.generation)
        return _PB_ROUTES.get(int(reply.graph.route), "unknown"), "server (Plan)"


# --- the bench -----------------------------------------------------------------------------------


@dataclass
class BenchConfig:
    modes: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)  # recorded as they are in the result
    models: dict[str, str] = field(default_factory=dict)
    judge_name: str = "none"
    judge_tie_margin: float = judging.DEFAULT_TIE_MARGIN  # nats (margins) or grade points (single)
    judge_mode: str = "pairwise"  # or "single": each answer graded alone; "checklist": item by item
    checklists: Mapping[str, tuple[str, ...]] | None = None  # for judge_mode checklist


def check_modes(modes: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for m in modes:
        m = m.strip().lower()
        if not m:
            continue
        name, changes = split_mode(m)
        if name not in MODES:
            raise ValueError(f"unknown mode {m!r} (choose from {', '.join(MODES)})")
        if changes and name not in VARIANT_MODES:
            raise ValueError(f"unknown mode {m!r}: only {', '.join(VARIANT_MODES)} take variants (MODE:SETTING=VALUE)")
        try:
            PlannerSettings().replace(**changes)
        except EngineError as exc:
            raise ValueError(f"mode {m!r}: {exc}") from None
        if m not in out:
            out.append(m)
    if BASELINE not in out:
        raise ValueError("--modes must include direct: it is the baseline of speed-ups and of the judge")
    return tuple(out)


async def _judge_pair(judge: judging.Judge, question: str, mode_answer: str, direct_answer: str,
                      progress: ProgressBar | None, note: str,
                      tie_margin: float = judging.DEFAULT_TIE_MARGIN) -> dict[str, Any]:
    """Margins in both orders where the judge gives them, else text verdicts in both orders."""
    errors: list[str] = []
    if isinstance(judge, judging.MarginJudge):
        margins: list[float] = []
        for mode_is_a in (True, False):
            a, b = (mode_answer, direct_answer) if mode_is_a else (direct_answer, mode_answer)
            try:
                m = await judge.margin(question, a, b)
            except (judging.JudgeError, EngineError) as exc:
                m = None
                errors.append(f"{type(exc).__name__}: {exc}")
            if m is None:
                break  # this pair gets text verdicts, both orders
            margins.append(m)
        if len(margins) == 2:
            p = judging.preference(margins[0], margins[1])
            if progress is not None:
                progress.step(note)
                progress.step(note)
            return {"outcome": judging.margin_outcome(p, tie_margin), "method": "logprob",
                    "margins": [_r(m, 4) for m in margins], "preference": _r(p, 4)}
    replies: list[str | None] = []
    outcomes: list[judging.Outcome | None] = []
    for mode_is_a in (True, False):
        a, b = (mode_answer, direct_answer) if mode_is_a else (direct_answer, mode_answer)
        try:
            raw: str | None = await judge.reply(question, a, b)
        except (judging.JudgeError, EngineError) as exc:
            raw = None
            errors.append(f"{type(exc).__name__}: {exc}")
        replies.append(raw)
        outcomes.append(judging.outcome(judging.parse_verdict(raw) if raw is not None else None, mode_is_a))
        if progress is not None:
            progress.step(note)
    out: dict[str, Any] = {"outcome": judging.combine(outcomes[0], outcomes[1]), "method": "text",
                           "replies": replies, "orders": outcomes}
    if errors:
        out["errors"] = errors
    return out


def quality_summary(outcomes: Sequence[str | None], preferences: Sequence[float] = ()) -> dict[str, Any]:
    """Win/tie/lose counts and rates; mean_preference only when some pair was scored by margins (nats)
    or grades (grade points)."""
    judged = [o for o in outcomes if o is not None]
    n = len(judged)
    w, t, l_ = judged.count("win"), judged.count("tie"), judged.count("lose")
    out: dict[str, Any] = {
        "n": n, "wins": w, "ties": t, "losses": l_, "no_verdict": len(outcomes) - n,
        "win_rate": _r(w / n) if n else None, "tie_rate": _r(t / n) if n else None,
        "lose_rate": _r(l_ / n) if n else None, "net_win_rate": _r((w - l_) / n) if n else None}
    if preferences:
        out["mean_preference"] = _r(statistics.fmean(preferences), 4)
        out["preference_n"] = len(preferences)
    return out


def mode_summary(mode: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-mode statistics from the per-question rows (each `modes[mode]` a RunResult as a dict)."""
    runs = [r["modes"][mode] for r in rows if mode in r["modes"]]
    ok = [r for r in runs if r["error"] is None]
    secs = [r["seconds"] for r in ok]
    ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    visible = [r["first_visible_s"] for r in ok if r.get("first_visible_s") is not None]
    toks = [r["tokens"] for r in ok]
    rates = [r["tokens"] / r["seconds"] for r in ok if r["seconds"] > 0]
    ups = [r["modes"][mode]["speedup"] for r in rows
           if mode in r["modes"] and r["modes"][mode].get("speedup") is not None]
    out: dict[str, Any] = {
        "n": len(runs), "failures": len(runs) - len(ok),
        "partial_answers": sum(1 for r in ok if r["failed_nodes"]),
        "median_s": _r(median(secs)), "p90_s": _r(percentile(secs, 90)),
        "mean_s": _r(statistics.fmean(secs)) if secs else None,
        "ttft_median_s": _r(median(ttft)), "ttft_p90_s": _r(percentile(ttft, 90)),
        "first_visible_median_s": _r(median(visible)),
        "tokens_median": _r(median(toks), 1), "tokens_total": sum(toks),
        "tokens_per_s_median": _r(median(rates), 2),
        "speedup_median": _r(median(ups)), "speedup_geomean": _r(geomean(ups)),
        "speedup_p10": _r(percentile(ups, 10)), "speedup_p90": _r(percentile(ups, 90)),
        "speedup_n": len(ups),
        "routes": dict(sorted(Counter(r["route"] for r in ok).items())),
    }
    stages = [r["stages"] for r in ok if r.get("stages")]
    out["stages_median"] = _r(median(stages), 1) if stages else None
    texts = [p for r in ok for p in r.get("points", [])]
    out["points"] = len(texts)
    out["empty_points"], out["short_points"] = point_defects(texts)
    scores = [r["checklist"][mode]["score"] for r in rows
              if r.get("checklist", {}).get(mode, {}).get("score") is not None]
    out["checklist_score"] = _r(statistics.fmean(scores), 2) if scores else None
    out["checklist_n"] = len(scores)
    if mode != BASELINE:
        pairs = [r["judge"][mode] for r in rows if mode in r.get("judge", {})]
        prefs = [j["preference"] for j in pairs if j.get("preference") is not None]
        out["quality"] = quality_summary([j["outcome"] for j in pairs], prefs) if pairs else None
        by_checklist = [j for j in pairs if j.get("method") == "checklist"]
        out["checklist_net_win_rate"] = (quality_summary([j["outcome"] for j in by_checklist])["net_win_rate"]
                                         if by_checklist else None)
    return out


SHORT_POINT_WORDS = 8  # a point under this many words says too little to stand as a point of its own


def point_defects(points: Sequence[str]) -> tuple[int, int]:
    """(empty, short): points with no words at all (a title and nothing else), and points with some
    words but fewer than SHORT_POINT_WORDS (a word: a run without spaces holding a letter or digit)."""
    counts = [sum(1 for w in text.split() if any(c.isalnum() for c in w)) for text in points]
    return sum(1 for n in counts if n == 0), sum(1 for n in counts if 0 < n < SHORT_POINT_WORDS)


def judge_method(judge: judging.Judge | None, rows: Sequence[dict[str, Any]], tie_margin: float,
                 mode: str = "pairwise") -> str:
    """How the run's pairs were judged, in words; by the judge's kind when no pair needed asking."""
    if judge is None:
        return "none"
    if mode == "single":
        return judging.grade_method(tie_margin)
    if mode == "checklist":
        return checklist_method(tie_margin)
    methods = Counter(j.get("method") for r in rows for j in r.get("judge", {}).values())
    by_margin = judging.margin_method(tie_margin)
    if methods["logprob"] and methods["text"]:
        return f"{by_margin}; {judging.TEXT_METHOD} for {methods['text']} pair(s) without label logprobs"
    if methods["logprob"]:
        return by_margin
    if methods["text"] or not isinstance(judge, judging.MarginJudge) or not getattr(judge, "logprobs", True):
        return judging.TEXT_METHOD
    return by_margin


def router_score(pairs: Sequence[tuple[int, str, str]]) -> dict[str, Any]:
    """(label, route, source) triples -> the scores of `route != direct` against `label == 1` (espalier.planner.router.
    scores: accuracy, precision, recall, balanced accuracy, counts), the routes taken and who decided."""
    result: dict[str, Any] = dict(scores([lab for lab, _, _ in pairs], [r != "direct" for _, r, _ in pairs]))
    if not pairs:
        result["accuracy"] = None  # nothing was routed: no figure rather than a zero
    by_source: dict[str, list[int]] = {}
    for lab, r, src in pairs:
        by_source.setdefault(src, []).append(int((r != "direct") == (lab == 1)))
    return {**result, "routes": dict(sorted(Counter(r for _, r, _ in pairs).items())),
            "by_source": {s: {"n": len(v), "accuracy": _r(sum(v) / len(v), 4)} for s, v in sorted(by_source.items())}}


def machine_info() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor() or "", "python": platform.python_version()}


async def _grade(judge: judging.GradeJudge, question: str, answer: str,
                 errors: list[str]) -> float | None:
    try:
        return await judge.grade(question, answer)
    except (judging.JudgeError, EngineError) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
        return None


async def _judge_by_grades(judge: judging.GradeJudge, question: str, mode_answer: str,
                           direct_grade: float | None, direct_errors: list[str], tie_margin: float) -> dict[str, Any]:
    errors = list(direct_errors)
    mine = await _grade(judge, question, mode_answer, errors)
    out: dict[str, Any] = {"method": "grade", "grades": [_r(mine, 4), _r(direct_grade, 4)]}
    if mine is None or direct_grade is None:
        out["outcome"] = None
    else:
        d = mine - direct_grade
        out.update(outcome=judging.margin_outcome(d, tie_margin), preference=_r(d, 4))
    if errors:
        out["errors"] = errors
    return out


async def judge_rows(rows: Sequence[dict[str, Any]], modes: Sequence[str], judge: Any,
                     stream: TextIO | None = None, tie_margin: float = judging.DEFAULT_TIE_MARGIN,
                     method: str = "pairwise", checklists: Mapping[str, tuple[str, ...]] | None = None) -> None:
    """Judge every mode's answer against direct's, per question, into `row["judge"][mode]`.

    pairwise: each pair in both orders; single: each answer graded alone, direct's once a question;
    checklist: each answer graded item by item on its question's checklist (`row["checklist"][mode]`).
    """
    judged_modes = [m for m in modes if m != BASELINE]
    if not judged_modes:
        return
    if method == "checklist":
        if checklists is None or not hasattr(judge, "grade_items"):
            raise ValueError(f"judge {judge.name} cannot grade checklists (it needs the embedded judge and "
                             "--checklists)")
        await _checklist_rows(rows, modes, judge, checklists, tie_margin, stream)  # type: ignore[arg-type]
        return
    grading = method == "single"
    if grading and not isinstance(judge, judging.GradeJudge):
        raise ValueError(f"judge {judge.name} cannot grade single answers")
    per_question = len(judged_modes) + 1 if grading else 2 * len(judged_modes)
    jbar = ProgressBar(per_question * len(rows), "judge", stream)
    jbar.show(judge.name)
    for row in rows:
        row["judge"] = {}
        base = row["modes"][BASELINE]
        direct_grade: float | None = None
        direct_errors: list[str] = []
        if grading and base["error"] is None:
            direct_grade = await _grade(judge, row["question"], base["answer"], direct_errors)  # type: ignore[arg-type]
        if grading:
            jbar.step(f"q{row['index'] + 1} direct")
        for mode in judged_modes:
            mine = row["modes"][mode]
            note = f"q{row['index'] + 1} {mode}"
            if base["error"] is not None:
                row["judge"][mode] = {"outcome": None, "note": "direct failed: nothing to compare with"}
            elif mine["error"] is not None:
                row["judge"][mode] = {"outcome": "lose", "note": "this mode failed"}
            elif normalize(mine["answer"]) == normalize(base["answer"]):
                row["judge"][mode] = {"outcome": "tie", "note": "identical answers"}
            elif grading:
                row["judge"][mode] = await _judge_by_grades(judge, row["question"], mine["answer"],  # type: ignore[arg-type]
                                                            direct_grade, direct_errors, tie_margin)
            else:
                row["judge"][mode] = await _judge_pair(judge, row["question"], mine["answer"],
                                                       base["answer"], jbar, note, tie_margin)
                continue
            for _ in range(1 if grading else 2):
                jbar.step(note)
    jbar.close()


async def _checklist_rows(rows: Sequence[dict[str, Any]], modes: Sequence[str], judge: ChecklistJudge,
                          checklists: Mapping[str, tuple[str, ...]], band: float, stream: TextIO | None) -> None:
    """Grade every answer on its question's checklist; each mode against direct by the score difference.

    A question without a checklist is left unjudged (outcome None), as is one whose direct answer failed
    or got no grade; a mode whose answer failed loses."""
    bar = ProgressBar(len(rows) * len(modes), "checklist", stream)
    bar.show(judge.name)
    for row in rows:
        row["judge"], row["checklist"] = {}, {}
        items = checklist_for(checklists, row["question"])
        for mode in modes:
            run = row["modes"][mode]
            if items is not None and run["error"] is None:
                row["checklist"][mode] = await _grade_items(judge, row["question"], run["answer"], items)
            bar.step(f"q{row['index'] + 1} {mode}")
        base = row["checklist"].get(BASELINE, {}).get("score")
        for mode in modes:
            if mode == BASELINE:
                continue
            mine = row["checklist"].get(mode, {}).get("score")
            if items is None:
                row["judge"][mode] = {"outcome": None, "note": "no checklist for this question"}
            elif base is None:
                row["judge"][mode] = {"outcome": None, "note": "direct has no checklist score"}
            elif row["modes"][mode]["error"] is not None:
                row["judge"][mode] = {"outcome": "lose", "note": "this mode failed"}
            elif mine is None:
                row["judge"][mode] = {"outcome": None, "note": "no checklist score"}
            else:
                d = mine - base
                row["judge"][mode] = {"outcome": judging.margin_outcome(d, band), "method": "checklist",
                                      "scores": [mine, base], "preference": _r(d, 2)}
    bar.close()


async def _grade_items(judge: ChecklistJudge, question: str, answer: str, items: Sequence[str]) -> dict[str, Any]:
    try:
        graded = await judge.grade_items(question, answer, items)
    except (EngineError, judging.JudgeError) as exc:
        return {"score": None, "error": f"{type(exc).__name__}: {exc}"}
    return {"score": _r(graded.score, 2), "grades": [_r(g, 4) for g in graded.grades]}


async def rejudge(result: dict[str, Any], judge: Any, stream: TextIO | None = None,
                  tie_margin: float = judging.DEFAULT_TIE_MARGIN, mode: str = "pairwise",
                  checklists: Mapping[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """Judge the answers of a saved result again (another judge, or a judge run later); the new result.

    Speeds, routes and the router score are kept as measured; only verdicts and quality change.
    """
    try:
        modes = check_modes(result["settings"]["modes"])
        rows = result["questions"]
        for row in rows:
            _ = row["modes"][BASELINE]["answer"]  # the shape check: KeyError if absent
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a result of `espalier bench answers --json` (missing {exc})") from None
    await judge_rows(rows, modes, judge, stream, tie_margin, mode, checklists)
    result["modes"] = {m: mode_summary(m, rows) for m in modes}
    result["settings"]["judge_mode"] = mode
    result["settings"]["judge"] = judge.name
    result["settings"]["judge_method"] = judge_method(judge, rows, tie_margin, mode)
    result["settings"]["judge_tie_margin"] = tie_margin
    result["settings"]["judged"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return result


async def _score_router(questions: Sequence[Question], labels: Sequence[Question], runner: Runner,
                        stream: TextIO | None) -> dict[str, Any]:
    """The router's decisions on the run's labelled questions (or, if none is labelled, the first of the
    labels file), scored against their labels, with each decision and the median time to route."""
    labelled = match_labels(list(questions), list(labels))
    source = "questions of the run"
    if not labelled:
        labelled = list(labels)[:len(questions)]
        source = "labels file (no question of the run is labelled)"
    rbar = ProgressBar(len(labelled), "router", stream)
    pairs: list[tuple[int, str, str]] = []
    details: list[dict[str, Any]] = []
    route_seconds: list[float] = []
    for q in labelled:
        t0 = time.perf_counter()
        route, how = await runner.route(q.text)
        route_seconds.append(time.perf_counter() - t0)
        assert q.label is not None
        pairs.append((q.label, route, how))
        details.append({"question": q.text, "label": q.label, "route": route, "source": how,
                        "correct": (route != "direct") == (q.label == 1)})
        rbar.step(route)
    rbar.close()
    return {**router_score(pairs), "labelled_from": source, "questions": details,
            "seconds_median": _r(statistics.median(route_seconds), 4) if route_seconds else None}


async def run_bench(questions: Sequence[Question], runner: Runner, config: BenchConfig, *,
                    judge: judging.Judge | None = None, labels: Sequence[Question] | None = None,
                    stream: TextIO | None = None) -> dict[str, Any]:
    """Answer every question in every mode (rotated order), judge, score the router; the result dict."""
    modes = check_modes(config.modes)
    rows: list[dict[str, Any]] = []
    bar = ProgressBar(len(questions) * len(modes), "answers", stream)
    bar.show("starting")
    started = time.monotonic()
    for i, q in enumerate(questions):
        order = rotated(modes, i)
        row: dict[str, Any] = {"index": i, "question": q.text, "category": q.category, "order": order,
                               "modes": {}}
        for mode in order:
            result = await runner.answer(q.text, mode)
            row["modes"][mode] = asdict(result)
            bar.step(f"q{i + 1} {mode} {result.seconds:.1f}s" + (" FAILED" if result.error else ""))
        base = row["modes"][BASELINE]
        for mode in modes:
            r = row["modes"][mode]
            ok = r["error"] is None and base["error"] is None and r["seconds"] > 0
            r["speedup"] = _r(base["seconds"] / r["seconds"], 4) if ok else None
        rows.append(row)
    bar.close()
    answer_s = time.monotonic() - started

    if judge is not None:
        await judge_rows(rows, modes, judge, stream, config.judge_tie_margin, config.judge_mode, config.checklists)

    router_result = await _score_router(questions, labels, runner, stream) if labels is not None else None

    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "models": config.models,
        "settings": {**config.settings, "modes": list(modes), "judge": config.judge_name,
                     "judge_method": judge_method(judge, rows, config.judge_tie_margin, config.judge_mode),
                     "judge_mode": config.judge_mode,
                     "percentile_method": PERCENTILE_METHOD,
                     "speedup": "direct seconds / mode seconds, per question"},
        "answer_seconds": round(answer_s, 2),
        "modes": {m: mode_summary(m, rows) for m in modes},
        "router": router_result,
        "questions": rows,
    }


# --- the command ---------------------------------------------------------------------------------


@dataclass
class AnswersOptions:
    set_path: str
    modes: tuple[str, ...] = ("direct", "sot", "sgd", "auto")
    limit: int | None = None
    target: str | None = None
    token: str | None = None
    labels: str | None = None
    json_path: str | None = None
    report_path: str | None = None
    plot_path: str | None = None
    point_tokens: int = DEFAULT_SETTINGS.point_max_tokens
    answer_tokens: int = 512
    skeleton_tokens: int = 160
    skeleton_role: str = "large"
    small_only: bool = False
    threads: int = 0
    large: str = "large"
    small: str = "small"
    n_ctx: int = 8192
    slots: int = 16
    gpu_layers: int = 0
    judge: str = "embedded"  # embedded | none (a --judge-url picks the endpoint judge)
    judge_url: str | None = None
    judge_model: str | None = None
    judge_key_env: str | None = None
    judge_max_chars: int = judging.DEFAULT_MAX_ANSWER_CHARS
    judge_tie_margin: float | None = None  # None: the judge mode's own default (tie_band)
    judge_logprobs: bool = False  # the endpoint judge also scores by margins (the embedded one always does)
    judge_mode: str = "pairwise"  # pairwise (both orders), single (each answer graded alone) or checklist
    checklists_path: str | None = None  # per-question checklists (JSONL), for judge_mode checklist
    only_suitable: bool = False  # only the questions labelled 1 (suit a skeleton), in the set or --labels
    rejudge_path: str | None = None  # judge this saved --json result again instead of answering


_log = progress_lines("bench answers")


def planner_settings(opts: AnswersOptions) -> PlannerSettings:
    """The one PlannerSettings every mode runs with; ValueError naming the flag's setting if out of range."""
    try:
        return PlannerSettings(point_max_tokens=opts.point_tokens, direct_max_tokens=opts.answer_tokens,
                               skeleton_max_tokens=opts.skeleton_tokens,
                               skeleton_role=Role(opts.skeleton_role)).validate()
    except EngineError as exc:
        raise ValueError(str(exc)) from None


JUDGE_MODES = ("pairwise", "single", "checklist")


def tie_band(opts: AnswersOptions) -> float:
    """The tie band the run uses: the flag, else the judge mode's default (nats for pairwise margins,
    grade points for single grades, score points of 100 for checklists)."""
    if opts.judge_tie_margin is not None:
        return opts.judge_tie_margin
    return DEFAULT_TIE_BAND if opts.judge_mode == "checklist" else judging.DEFAULT_TIE_MARGIN


def _checklists(opts: AnswersOptions) -> Mapping[str, tuple[str, ...]] | None:
    """The checklists a checklist-mode run grades with; ValueError when that mode has none."""
    if opts.judge_mode != "checklist":
        if opts.checklists_path:
            raise ValueError("--checklists applies to --judge-mode checklist")
        return None
    if not opts.checklists_path:
        raise ValueError("--judge-mode checklist needs --checklists FILE (JSONL of {request, checklist})")
    return load_checklists(opts.checklists_path)


def _embedded_judge(engine: Any, role: Role, model: str, opts: AnswersOptions) -> Any:
    name = f"embedded {role.value} model ({model})"
    if opts.judge_mode == "checklist":
        return EngineChecklistJudge(engine, role, name=name, max_chars=opts.judge_max_chars)
    return judging.EngineJudge(engine, role, name=name, max_chars=opts.judge_max_chars)


def _endpoint_judge(opts: AnswersOptions) -> Any:
    """The --judge-url judge (None without one); for checklists, its first token's top_logprobs grade."""
    if opts.judge_url:
        if not opts.judge_model:
            raise ValueError("--judge-url needs --judge-model")
        key = os.environ.get(opts.judge_key_env) if opts.judge_key_env else None
        endpoint = judging.OpenAIJudge(opts.judge_url, opts.judge_model, key, max_chars=opts.judge_max_chars,
                                       logprobs=opts.judge_logprobs)
        return EndpointChecklistJudge(endpoint) if opts.judge_mode == "checklist" else endpoint
    if opts.judge_logprobs:
        raise ValueError("--judge-logprobs applies to --judge-url (the embedded judge always uses logprobs)")
    return None


def _recorded_settings(opts: AnswersOptions) -> dict[str, Any]:
    s = {"set": opts.set_path, "limit": opts.limit, "labels": opts.labels,
         "runner": f"target {opts.target}" if opts.target else "embedded",
         "point_tokens": opts.point_tokens, "answer_tokens": opts.answer_tokens,
         "skeleton_tokens": opts.skeleton_tokens, "temperature": 0.0, "judge_tie_margin": tie_band(opts),
         "judge_mode": opts.judge_mode, "checklists": opts.checklists_path, "only_suitable": opts.only_suitable,
         "order": "rotated per question (question i starts at mode i mod n)"}
    if not opts.target:
        s.update({"skeleton_role": opts.skeleton_role, "small_only": opts.small_only,
                  "threads": opts.threads or os.cpu_count(), "n_ctx": opts.n_ctx, "slots": opts.slots,
                  "gpu_layers": opts.gpu_layers})
    return s


async def _run_embedded(opts: AnswersOptions, questions: list[Question], labels: list[Question] | None,
                        config: BenchConfig, settings: PlannerSettings,
                        judge: judging.Judge | None) -> dict[str, Any]:
    from espalier.service.engine.config import ContextConfig, EngineConfig
    from espalier.service.engine.llama_engine import LlamaEngine

    def ctx(model: str) -> ContextConfig:
        return ContextConfig(model=model, slots=opts.slots, n_ctx=opts.n_ctx, threads=opts.threads,
                             n_gpu_layers=opts.gpu_layers)

    engine_config = (EngineConfig(small=ctx(opts.small)) if opts.small_only
                     else EngineConfig(large=ctx(opts.large), small=ctx(opts.small)))
    roles = ", ".join(f"{r.value}={c.model}" for r, c in engine_config.roles().items())
    _log(f"loading models ({roles}; {opts.threads or os.cpu_count()} threads)")
    engine = await LlamaEngine.load(engine_config)
    try:
        runner = EmbeddedRunner(engine, settings)
        # every mode's prompt prefixes, a skeleton variant's included, so none pays for a cold prefix
        residents = {p for m in config.modes for p in pipeline.resident_prefixes(engine, runner.settings_for(m))}
        for role, text in sorted(residents):
            try:
                await engine.add_resident_prefix(role, text)
            except EngineError as exc:  # costs speed only, and alike for every mode
                _log(f"resident prefix for {role.value} not kept: {exc}")
        config.models = {r.value: f"{c.model} ({engine.model(r).description})"
                         for r, c in engine_config.roles().items()}
        await runner.warm_up()
        if judge is None and opts.judge == "embedded":
            role = Role.LARGE if Role.LARGE in engine.roles() else Role.SMALL
            judge = _embedded_judge(engine, role, engine_config.roles()[role].model, opts)
        config.judge_name = judge.name if judge is not None else "none"
        return await run_bench(questions, runner, config, judge=judge, labels=labels)
    finally:
        await engine.aclose()


async def _run_target(opts: AnswersOptions, questions: list[Question], labels: list[Question] | None,
                      config: BenchConfig, judge: judging.Judge | None) -> dict[str, Any]:
    from espalier.service.bench.target import ServerCalls
    from espalier.v1 import espalier_pb2 as pb

    assert opts.target is not None
    if judge is None and opts.judge == "embedded":
        _log("the embedded judge needs local models: with --target, give --judge-url/--judge-model "
             "(judging skipped)")
    config.judge_name = judge.name if judge is not None else "none"
    budgets = {"point_max_tokens": opts.point_tokens, "answer_max_tokens": opts.answer_tokens}
    generation = pb.GenerationSettings(temperature=0.0, **{k: v for k, v in budgets.items() if v is not None})
    async with ServerCalls(opts.target, token=opts.token) as client:
        _log(f"waiting for {opts.target} to serve")
        await client.wait_serving(timeout_s=600)
        config.models = {"server": opts.target}
        return await run_bench(questions, TargetRunner(client, generation), config, judge=judge, labels=labels)


async def run_answers(opts: AnswersOptions) -> dict[str, Any]:
    """Load the set (and labels), run the bench, write JSON, report and plot where asked; the result."""
    if opts.rejudge_path:
        result = await _rejudge_saved(opts)
        write_outputs(result, opts)
        return result
    # every check that needs no model comes first: a typo must not cost a model load
    modes = check_modes(opts.modes)
    if opts.judge not in ("embedded", "none"):
        raise ValueError("--judge must be embedded or none (use --judge-url for an endpoint)")
    if opts.limit is not None and opts.limit < 1:
        raise ValueError("--limit must be at least 1")
    _check_judging(opts)
    checklists = _checklists(opts)
    settings = planner_settings(opts)
    judge = _endpoint_judge(opts)
    labels = load_labels(opts.labels) if opts.labels else None
    questions = _questions(opts, labels)
    config = BenchConfig(modes, _recorded_settings(opts), judge_tie_margin=tie_band(opts),
                         judge_mode=opts.judge_mode, checklists=checklists)
    _log(f"{len(questions)} question(s) x {len(modes)} mode(s): {', '.join(modes)}")
    if opts.target and any(split_mode(m)[1] for m in modes):
        raise ValueError("mode variants (MODE:SETTING=VALUE) need the embedded runner: a server's planner "
                         "settings are its own configuration")
    if opts.target:
        result = await _run_target(opts, questions, labels, config, judge)
    else:
        result = await _run_embedded(opts, questions, labels, config, settings, judge)
    write_outputs(result, opts)
    return result


def _check_judging(opts: AnswersOptions) -> None:
    if opts.judge_mode not in JUDGE_MODES:
        raise ValueError(f"--judge-mode must be one of {', '.join(JUDGE_MODES)} (got {opts.judge_mode!r})")
    band = tie_band(opts)
    if not (math.isfinite(band) and band >= 0):
        raise ValueError(f"--judge-tie-margin must be a number, 0 or more (got {band})")


def _questions(opts: AnswersOptions, labels: list[Question] | None) -> list[Question]:
    """The run's questions: the set, only the ones labelled suitable when asked (by the set's own labels,
    else by --labels), then the first --limit of them."""
    if not opts.only_suitable:
        return load_questions(opts.set_path, opts.limit)
    questions = load_questions(opts.set_path)
    if labels is not None:
        suitable = {normalize(q.text) for q in labels if q.label == 1}
        kept = [q for q in questions if normalize(q.text) in suitable]
    elif any(q.label is not None for q in questions):
        kept = [q for q in questions if q.label == 1]
    else:
        raise ValueError("--only-suitable needs labels: a set with a label column, or --labels")
    if not kept:
        raise ValueError(f"{opts.set_path}: no question is labelled suitable (1)")
    return kept[:opts.limit] if opts.limit is not None else kept


async def _rejudge_saved(opts: AnswersOptions) -> dict[str, Any]:
    try:
        result = json.loads(Path(opts.rejudge_path or "").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {opts.rejudge_path}: {exc}") from None
    if not isinstance(result, dict) or "questions" not in result or "settings" not in result:
        raise ValueError(f"{opts.rejudge_path} is not a result of `espalier bench answers --json`")
    _check_judging(opts)
    checklists = _checklists(opts)
    judge = _endpoint_judge(opts)
    if judge is not None:
        return await rejudge(result, judge, tie_margin=tie_band(opts), mode=opts.judge_mode, checklists=checklists)
    if opts.judge != "embedded":
        raise ValueError("--rejudge needs a judge: --judge embedded or --judge-url")
    from espalier.service.engine.config import ContextConfig, EngineConfig
    from espalier.service.engine.llama_engine import LlamaEngine

    role, model = (Role.SMALL, opts.small) if opts.small_only else (Role.LARGE, opts.large)
    # a checklist's items are graded together, forked from the answer's prefill
    slots = 8 if opts.judge_mode == "checklist" else 2
    ctx = ContextConfig(model=model, slots=slots, n_ctx=opts.n_ctx, threads=opts.threads,
                        n_gpu_layers=opts.gpu_layers)
    _log(f"loading the judge ({role.value}={model})")
    engine = await LlamaEngine.load(EngineConfig(**{role.value: ctx}))
    try:
        judge = _embedded_judge(engine, role, model, opts)
        return await rejudge(result, judge, tie_margin=tie_band(opts), mode=opts.judge_mode,
                             checklists=checklists)
    finally:
        await engine.aclose()


def write_outputs(result: dict[str, Any], opts: AnswersOptions) -> None:
    from espalier.service.bench import report

    if opts.plot_path:
        result["plot"] = report.write_plot(result, opts.plot_path)
    if opts.json_path:
        text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
        Path(opts.json_path).write_text(text, encoding="utf-8")
    if opts.report_path:
        plot = opts.plot_path if result.get("plot", {}).get("written") else None
        markdown = report.render_markdown(result, plot_path=plot, report_path=opts.report_path)
        Path(opts.report_path).write_text(markdown, encoding="utf-8")
