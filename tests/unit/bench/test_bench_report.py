"""The markdown report, the stdout summary and the plot of the answer bench."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
from bench_fakes import StubJudge, StubMarginJudge, StubRunner

from espalier.service.bench import report
from espalier.service.bench.answers import BenchConfig, run_bench
from espalier.service.bench.questions import Question

Q1, Q2 = "How can I relax | unwind?", "Solve 2x + 3 = 7"


async def stub_result() -> dict[str, Any]:
    seconds = {(Q1, "direct"): 10.0, (Q1, "sot"): 5.0, (Q1, "auto"): 10.0,
               (Q2, "direct"): 8.0, (Q2, "sot"): 2.0, (Q2, "auto"): 8.0}
    runner = StubRunner(seconds, routes={Q1: "parallel", Q2: "direct"})
    judge = StubJudge(lambda a, b: "A" if a.startswith("sot") else "B" if b.startswith("sot") else "tie")
    labels = [Question(Q1, 1), Question(Q2, 1)]
    config = BenchConfig(("direct", "sot", "auto"), settings={"set": "vicuna80.csv", "point_tokens": 16},
                         models={"large": "large (qwen2 1.5B Q4_K_M)"}, judge_name="stub judge")
    return await run_bench([Question(Q1), Question(Q2)], runner, config, judge=judge, labels=labels)


async def test_markdown_contains_the_numbers() -> None:
    result = await stub_result()
    md = report.render_markdown(result)
    sot_row = next(line for line in md.splitlines() if line.startswith("| sot | 2 |"))
    # median of 5 and 2 s, p90 linear = 2 + 0.9 * 3, speed-ups 2 and 4: median 3, geomean 2.83
    assert "| 3.50 | 4.70 |" in sot_row and "| 3.00x | 2.83x |" in sot_row and "parallel 2" in sot_row
    direct_row = next(line for line in md.splitlines() if line.startswith("| direct | 2 |"))
    assert "| 9.00 |" in direct_row and "| 1.00x | 1.00x |" in direct_row
    quality_row = next(line for line in md.splitlines() if line.startswith("| sot | 2 | 2 / 0 / 0"))
    assert quality_row.endswith("| +100% |")
    auto_quality = next(line for line in md.splitlines() if line.startswith("| auto | 2 | 0 / 2 / 0"))
    assert auto_quality.endswith("| +0% |")
    assert "0.500 on 2 labelled question(s)" in md and "1 direct where a skeleton was wanted" in md
    assert "| 2 | Solve 2x + 3 = 7 | 8.0 | 2.0 (4.00x) | 8.0 (1.00x) |" in md
    assert "How can I relax \\| unwind?" in md  # a pipe in a question does not break the table
    assert "Judge: stub judge" in md and "large (qwen2 1.5B Q4_K_M)" in md
    assert "- point_tokens: 16" in md and "cpu_count" in md
    assert "_Plot skipped: no --plot asked for._" in md


async def test_the_report_states_the_judging_method() -> None:
    md = report.render_markdown(await stub_result())
    assert "Method: text verdicts, both orders." in md and "a win and a loss is a tie" in md
    assert "mean preference" not in md and "- judge_method: text verdicts, both orders" in md

    seconds = {(Q1, "direct"): 10.0, (Q1, "sot"): 5.0, (Q2, "direct"): 8.0, (Q2, "sot"): 2.0}
    quality = {"sot": 0.75, "direct": 0.0}
    judge = StubMarginJudge(lambda a, b: 2.0 + quality[a.split()[0]] - quality[b.split()[0]])
    result = await run_bench([Question(Q1), Question(Q2)], StubRunner(seconds), BenchConfig(("direct", "sot")),
                             judge=judge)
    md = report.render_markdown(result)
    assert "Method: logprob margin, both orders, tie band ±0.5 nats." in md and "p = (m1 - m2) / 2" in md
    assert "| mean preference (nats) |" in md
    assert next(line for line in md.splitlines() if line.startswith("| sot | 2 | 2 / 0 / 0")).endswith("| +0.75 |")
    assert "a win and a loss is a tie" not in md  # no pair fell back to text verdicts
    assert "net win +100% (W/T/L 2 / 0 / 0), mean preference +0.75 nats" in report.summary_lines(result)[1]


async def test_summary_lines() -> None:
    lines = report.summary_lines(await stub_result())
    assert len(lines) == 4
    assert lines[1].strip().startswith("sot: median 3.50 s (p90 4.70 s)")
    assert "speed-up 3.00x median / 2.83x geomean, net win +100% (W/T/L 2 / 0 / 0)" in lines[1]
    assert re.fullmatch(r"router: accuracy 0\.500 on 2 labelled question\(s\), \d+\.\d{3} s median to route", lines[3])


async def test_plot_is_a_png_and_the_report_links_it(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = await stub_result()
    out = report.write_plot(result, str(tmp_path / "plots" / "bench.png"))
    assert out == {"written": True, "path": str(tmp_path / "plots" / "bench.png")}
    data = (tmp_path / "plots" / "bench.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    md = report.render_markdown(result, plot_path=str(tmp_path / "plots" / "bench.png"),
                                report_path=str(tmp_path / "report.md"))
    assert "](plots/bench.png)" in md


async def test_plot_skipped_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    result = await stub_result()
    out = report.write_plot(result, str(tmp_path / "b.png"))
    assert out["written"] is False and "matplotlib is not installed" in out["reason"]
    assert not (tmp_path / "b.png").exists()
    result["plot"] = out
    assert "_Plot skipped: matplotlib is not installed" in report.render_markdown(result)


def test_labels_that_would_overlap_go_on_lines_below() -> None:
    # sot and sgd at one win rate, far enough apart for short labels; a long label further left at
    # that height reaches under both; direct and auto each alone at their height
    points = [(1.0, 0.0, "direct (baseline)"), (2.02, -0.12, "sot"), (1.78, -0.12, "sgd"),
              (1.33, -0.12, "sgd:point_length=detailed"), (1.5, 0.5, "auto")]
    assert report.label_lines(points, x_span=1.7) == [0, 0, 0, 1, 0]
    # labels on one spot stack, one line each; a label at another height is not moved
    same = [(1.0, 0.0, "a"), (1.0, 0.0, "b"), (1.01, 0.0, "c"), (1.05, 0.3, "d")]
    assert report.label_lines(same, x_span=1.7) == [0, 1, 2, 0]
