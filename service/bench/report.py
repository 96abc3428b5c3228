"""Rendering of `espalier bench answers` results: the markdown report, the PNG plot, the stdout summary.

Owns presentation only: it reads the result dict built by espalier.service.bench.answers and never runs
anything. matplotlib is optional (the `bench` extra) and imported lazily; without it the plot is
skipped and the report says so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from espalier.service.bench.judge import TEXT_METHOD

MODE_COLOURS = {"direct": "#555555", "sot": "#1f77b4", "sgd": "#2ca02c", "auto": "#d62728"}


def _f(x: Any, digits: int = 2, suffix: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}{suffix}"
    return f"{x}{suffix}"


def _x(x: Any) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{x * 100:+.0f}%"


def _cell(text: str, limit: int = 70) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _routes(routes: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in routes.items()) or "n/a"


def _wtl(q: dict[str, Any] | None) -> str:
    if not q or not q.get("n"):
        return "n/a"
    return f"{q['wins']} / {q['ties']} / {q['losses']}"


def _signed(x: Any) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def _method_note(method: str) -> str:
    """What the judging method means, for the report (espalier.service.bench.judge says why margins)."""
    notes = []
    if "checklist grades" in method:
        notes.append("Each answer is graded on its question's checklist (yes/no items a strong model wrote once): "
                     "per item, the judge's probability of yes among yes and no at its first reply token; the "
                     "answer's score is the mean over its items, 0 to 100. The mode's preference p = its score - "
                     "direct's score on the same question; p above the tie band is a win, below its negative a "
                     "loss, else a tie. A question without a checklist is unjudged.")
    if "single-answer grades" in method:
        notes.append("Each answer is graded alone from 1 to 9 (direct's once per question): the grade is the "
                     "probability-weighted digit of the judge's first reply token where it gives logprobs, else "
                     "the digit it replies. The mode's preference p = its grade - direct's grade; p above the tie "
                     "band is a win, below its negative a loss, else a tie. Mean preference = mean p in grade points.")
    if "logprob margin" in method:
        notes.append("Each pair is judged twice, the mode's answer shown first and then second. In each order the "
                     "margin m = log P(A) - log P(B) of the judge's first reply token; with the mode's answer first "
                     "it is m1, with direct's first m2, and the mode's preference p = (m1 - m2) / 2 nats, so a pull "
                     "towards one position (which small judges have) cancels. p above the tie band is a win, below "
                     "its negative a loss, else a tie. Mean preference = mean p over the pairs scored this way.")
    if TEXT_METHOD in method:
        notes.append(("Pairs without label logprobs: " if notes else "Each pair is judged twice, the mode's answer "
                      "shown first and then second; ") + "the same verdict twice stands, a win (loss) and a tie is "
                     "a win (loss), a win and a loss is a tie.")
    notes.append("Net win rate = (wins - losses) / judged.")
    return " ".join(notes)


def render_markdown(result: dict[str, Any], plot_path: str | None = None, report_path: str | None = None,
                    plot_note: str | None = None) -> str:
    s = result.get("settings", {})
    m = result.get("machine", {})
    modes: dict[str, dict[str, Any]] = result.get("modes", {})
    rows: list[dict[str, Any]] = result.get("questions", [])
    out: list[str] = ["# Espalier answer bench", ""]
    models = ", ".join(f"{k} = {v}" for k, v in result.get("models", {}).items()) or "n/a"
    out.append(f"{len(rows)} question(s) from `{s.get('set', '?')}`, modes {', '.join(modes)}; "
               f"{m.get('cpu_count', '?')} CPU(s), {m.get('platform', '?')}; models: {models}; "
               f"{result.get('date', '')}.")
    out.append("")
    plot = result.get("plot") or {}
    if plot_path:
        rel = plot_path
        if report_path:
            rel = os.path.relpath(Path(plot_path).resolve(), Path(report_path).resolve().parent)
        out += [f"![speed-up vs net win rate, and speed-up per question]({rel})", ""]
    else:
        note = plot_note or plot.get("reason") or "no --plot asked for"
        out += [f"_Plot skipped: {note}._", ""]

    out += ["## Speed per mode", "",
            ("| mode | n | failed | median s | p90 s | first visible median s | TTFT median s | tokens (median) "
             "| tok/s (median) | speed-up median | speed-up geomean | routes |"),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, d in modes.items():
        out.append(f"| {name} | {d['n']} | {d['failures']} | {_f(d['median_s'])} | {_f(d['p90_s'])} "
                   f"| {_f(d.get('first_visible_median_s'))} | {_f(d['ttft_median_s'])} | {_f(d['tokens_median'], 0)} | {_f(d['tokens_per_s_median'], 1)} "
                   f"| {_x(d['speedup_median'])} | {_x(d['speedup_geomean'])} | {_routes(d['routes'])} |")
    out.append("")

    out += _defects(modes)
    if any(d.get("checklist_score") is not None for d in modes.values()):
        out += ["## Checklist scores", "",
                "| mode | graded | mean score (0-100) | net win rate vs direct |",
                "| --- | ---: | ---: | ---: |"]
        for name, d in modes.items():
            net = "baseline" if name == "direct" else _pct(d.get("checklist_net_win_rate"))
            out.append(f"| {name} | {d.get('checklist_n', 0)} | {_f(d.get('checklist_score'), 1)} | {net} |")
        out.append("")

    judged = {k: v.get("quality") for k, v in modes.items() if k != "direct"}
    judge_mode = result.get("settings", {}).get("judge_mode")
    title = {"single": "single-answer grades", "checklist": "checklist grades"}.get(
        str(judge_mode), "pairwise judge, both orders")
    out += [f"## Quality against direct ({title})", ""]
    if any(judged.values()):
        prefs = any(q and "mean_preference" in q for q in judged.values())
        unit = {"single": "grade points", "checklist": "score points"}.get(str(judge_mode), "nats")
        extra = (f" mean preference ({unit}) |", " ---: |") if prefs else ("", "")
        out += ["| mode | judged | win / tie / lose | win rate | tie rate | lose rate | net win rate |" + extra[0],
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + extra[1]]
        for name, q in judged.items():
            if q:
                pref = f" {_signed(q.get('mean_preference'))} |" if prefs else ""
                out.append(f"| {name} | {q['n']} | {_wtl(q)} | {_f(q['win_rate'])} | {_f(q['tie_rate'])} "
                           f"| {_f(q['lose_rate'])} | {_pct(q['net_win_rate'])} |" + pref)
            else:
                out.append(f"| {name} | 0 | n/a | n/a | n/a | n/a | n/a |" + (" n/a |" if prefs else ""))
        out += ["", f"Judge: {s.get('judge', 'none')}. Method: {s.get('judge_method', TEXT_METHOD)}. "
                + _method_note(str(s.get("judge_method", TEXT_METHOD))), ""]
    else:
        out += [f"Not judged (judge: {s.get('judge', 'none')}).", ""]

    router = result.get("router")
    out += ["## Router accuracy", ""]
    if router:
        out.append(f"{_f(router['accuracy'], 3)} on {router['n']} labelled question(s) "
                   f"({router['labelled_from']}): {router['tp']} skeleton and {router['tn']} direct right, "
                   f"{router['fp']} skeleton where direct was wanted, {router['fn']} direct where a skeleton "
                   f"was wanted. Routes: {_routes(router['routes'])}.")
        if router.get("by_source"):
            out.append("By how the route was decided: " + ", ".join(
                f"{k} {_f(v['accuracy'], 3)} (n={v['n']})" for k, v in router["by_source"].items()) + ".")
    else:
        out.append("No labels file given (`--labels`).")
    out.append("")

    if rows:
        names = list(modes)
        out += ["## Per question (seconds; speed-up over direct)", "",
                "| # | question | " + " | ".join(names) + " |",
                "| ---: | --- | " + " | ".join("---:" for _ in names) + " |"]
        for r in rows:
            cells = []
            for name in names:
                d = r["modes"].get(name)
                if d is None:
                    cells.append("")
                elif d["error"] is not None:
                    cells.append("failed")
                elif name == "direct" or d.get("speedup") is None:
                    cells.append(f"{d['seconds']:.1f}")
                else:
                    cells.append(f"{d['seconds']:.1f} ({d['speedup']:.2f}x)")
            out.append(f"| {r['index'] + 1} | {_cell(r['question'])} | " + " | ".join(cells) + " |")
        out.append("")
        failures = [(r["index"] + 1, name, d["error"])
                    for r in rows for name, d in r["modes"].items() if d["error"]]
        if failures:
            out += ["Failures:", ""]
            out += [f"- question {i}, {name}: {_cell(err, 200)}" for i, name, err in failures] + [""]

    out += ["## Settings", ""]
    for k, v in s.items():
        out.append(f"- {k}: {v}")
    out.append(f"- machine: {', '.join(f'{k} {v}' for k, v in m.items() if v)}")
    out.append("")
    return "\n".join(out)


def _defects(modes: dict[str, dict[str, Any]]) -> list[str]:
    """Empty and short points per skeleton mode (a direct answer has no points)."""
    rows = [(name, d) for name, d in modes.items() if d.get("points")]
    if not rows:
        return []
    out = ["## Point defects", "",
           "| mode | points | empty (no words) | short (under 8 words) |", "| --- | ---: | ---: | ---: |"]
    out += [f"| {name} | {d['points']} | {d['empty_points']} | {d['short_points']} |" for name, d in rows]
    return out + ["", "A point counts once, with the text it ended with (a failed point with its partial text).", ""]


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A few lines for stdout: one per mode, then the router."""
    lines = []
    for name, d in result.get("modes", {}).items():
        q = d.get("quality")
        quality = ""
        if q and q.get("n"):
            quality = f", net win {_pct(q['net_win_rate'])} (W/T/L {_wtl(q)})"
            if q.get("mean_preference") is not None:
                unit = {"single": "grade points", "checklist": "score points"}.get(
                    str(result.get("settings", {}).get("judge_mode")), "nats")
                quality += f", mean preference {_signed(q['mean_preference'])} {unit}"
        if d.get("checklist_score") is not None:
            quality += f", checklist {d['checklist_score']:.1f}"
        if d.get("points"):
            quality += f", points {d['points']} ({d['empty_points']} empty, {d['short_points']} short)"
        lines.append(f"{name:>6}: median {_f(d['median_s'])} s (p90 {_f(d['p90_s'])} s), "
                     f"first visible {_f(d.get('first_visible_median_s'))} s, TTFT {_f(d['ttft_median_s'])} s, "
                     f"{_f(d['tokens_median'], 0)} tokens, {_f(d['tokens_per_s_median'], 1)} tok/s, "
                     f"speed-up {_x(d['speedup_median'])} median / {_x(d['speedup_geomean'])} geomean{quality}, "
                     f"routes {_routes(d['routes'])}, failures {d['failures']}")
    router = result.get("router")
    if router:
        lines.append(f"router: accuracy {_f(router['accuracy'], 3)} on {router['n']} labelled question(s), "
                     f"{_f(router.get('seconds_median'), 3)} s median to route")
    return lines


def label_lines(points: Sequence[tuple[float, float, str]], x_span: float) -> list[int]:
    """The text line (0 = beside the point, 1 = below it, ...) of each point's label, in order.

    A label runs right of its point: one that would overlap a label already placed at about the
    same height (modes with equal win rates, or auto routing everything direct) goes on the next
    free line below it. x_span: the axis' width in data units (label widths scale with it).
    """
    placed: list[tuple[float, float, float, int]] = []  # x, y, where the label ends, line
    for x, y, label in points:
        end = x + x_span * 0.016 * (len(label) + 2)  # about 11-point text on a 6-inch axis
        taken = {line for px, py, pend, line in placed if abs(py - y) < 0.08 and px < end and x < pend}
        placed.append((x, y, end, next(i for i in range(len(placed) + 1) if i not in taken)))
    return [line for _, _, _, line in placed]


def write_plot(result: dict[str, Any], path: str) -> dict[str, Any]:
    """Two panels: speed-up median vs net win rate per mode; speed-up per question per mode. Returns
    {"written": True, "path": ...} or {"written": False, "reason": ...}."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"written": False, "reason": "matplotlib is not installed (pip install 'espalier[bench]')"}

    modes: dict[str, dict[str, Any]] = result.get("modes", {})
    rows: list[dict[str, Any]] = result.get("questions", [])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 1.2]})

    points: list[tuple[float, float, str, str]] = []  # x, y, label, colour
    for name, d in modes.items():
        colour = MODE_COLOURS.get(name, "#9467bd")
        x = d.get("speedup_median")
        q = d.get("quality")
        net = 0.0 if name == "direct" else (q or {}).get("net_win_rate")
        if x is None:
            continue
        judged = net is not None
        y = float(net) if net is not None else 0.0
        marker = "s" if name == "direct" else "o"
        left.scatter([x], [y], s=140, marker=marker, color=colour if judged else "white", edgecolors=colour,
                     linewidths=2, zorder=3)
        label = name + (" (baseline)" if name == "direct" else "" if judged else " (not judged)")
        points.append((x, y, label, colour))
    xs = [x for x, _, _, _ in points]
    lo, hi = (min(xs + [1.0]), max(xs + [1.0])) if xs else (0.5, 1.5)
    pad = max(0.15, (hi - lo) * 0.2)
    x_min, x_max = max(0.0, lo - pad), hi + 2.5 * pad  # room for the labels right of the points
    lines = label_lines([(x, y, label) for x, y, label, _ in points], x_max - x_min)
    for (x, y, label, colour), line in zip(points, lines):
        left.annotate(label, (x, y), textcoords="offset points", xytext=(10, 8 - 26 * line), fontsize=11,
                      color=colour)
    left.axvline(1.0, color="#999999", linestyle="--", linewidth=1)
    left.axhline(0.0, color="#999999", linestyle="--", linewidth=1)
    left.set_xlim(x_min, x_max)
    left.set_ylim(-1.05, 1.05)
    left.set_xlabel("speed-up over direct (median per question)")
    how = {"checklist": "checklist judge", "single": "single grades"}.get(
        str(result.get("settings", {}).get("judge_mode")), "judge")
    left.set_ylabel(f"net win rate vs direct ({how})")
    left.set_title("faster →  and  better ↑")
    left.grid(alpha=0.3)

    others = [m for m in modes if m != "direct"]
    for i, name in enumerate(others):
        colour = MODE_COLOURS.get(name, "#9467bd")
        ups = [r["modes"][name]["speedup"] for r in rows
               if name in r["modes"] and r["modes"][name].get("speedup") is not None]
        n = len(ups)
        offsets = [((j % 7) - 3) * 0.05 if n > 1 else 0.0 for j in range(n)]
        right.scatter([i + o for o in offsets], ups, color=colour, alpha=0.7, s=30, zorder=3)
        med = modes[name].get("speedup_median")
        if med is not None:
            right.hlines(med, i - 0.3, i + 0.3, color=colour, linewidth=3, zorder=4)
            right.annotate(f"{med:.2f}x", (i + 0.32, med), va="center", fontsize=10, color=colour)
    right.axhline(1.0, color="#999999", linestyle="--", linewidth=1)
    right.set_xticks(range(len(others)), others)
    right.set_xlim(-0.6, max(len(others) - 0.4, 0.6))
    right.set_ylabel("speed-up over direct (per question)")
    right.set_title(f"per question ({len(rows)}), bar = median")
    right.grid(alpha=0.3, axis="y")

    s = result.get("settings", {})
    m = result.get("machine", {})
    fig.suptitle(f"Espalier answer bench: {len(rows)} questions, {m.get('cpu_count', '?')} CPUs, "
                 f"judge: {s.get('judge', 'none')}", fontsize=11)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"written": True, "path": str(path)}
