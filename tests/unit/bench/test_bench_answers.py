"""The answer bench end to end: orchestration over a stub runner (exact numbers) and over the planner
with a scripted fake engine (the real EmbeddedRunner, judge and router), plus the command's exits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_fakes import StubGrader, StubJudge, StubMarginJudge, StubRunner
from engine_fakes import FakeEngine

from espalier.planner.engine import Role
from espalier.planner.settings import PlannerSettings
from espalier.service import bench_cli
from espalier.service.bench.answers import (
    AnswersOptions,
    BenchConfig,
    EmbeddedRunner,
    check_modes,
    judge_method,
    rejudge,
    rotated,
    run_bench,
    split_mode,
    write_outputs,
)
from espalier.service.bench.judge import EngineJudge
from espalier.service.bench.questions import Question

Q1, Q2, Q3 = "How can I relax?", "Solve 2x + 3 = 7", "What are the ways to learn?"
MODES = ("direct", "sot", "sgd", "auto")


def stub_seconds() -> dict[tuple[str, str], float]:
    # direct 10 s everywhere; sot 5/4/20 s -> speed-ups 2, 2.5, 0.5; sgd 10 s -> 1; auto 8 s -> 1.25
    t: dict[tuple[str, str], float] = {}
    for q, sot in ((Q1, 5.0), (Q2, 4.0), (Q3, 20.0)):
        t[(q, "direct")] = 10.0
        t[(q, "sot")] = sot
        t[(q, "sgd")] = 10.0
        t[(q, "auto")] = 8.0
    return t


def sot_wins(a: str, b: str) -> str:
    """Prefers sot's answer, and is position-biased otherwise (always says A)."""
    if a.startswith("sot"):
        return "A"
    if b.startswith("sot"):
        return "B"
    return "A"


async def test_orchestration_numbers_order_and_judging() -> None:
    runner = StubRunner(stub_seconds(), routes={Q1: "parallel", Q2: "direct", Q3: "graph"})
    judge = StubJudge(sot_wins)
    questions = [Question(Q1), Question(Q2), Question(Q3)]
    labels = [Question(Q2, 0), Question(Q1, 1), Question(Q3, 0), Question("not in the run", 1)]
    result = await run_bench(questions, runner, BenchConfig(MODES), judge=judge, labels=labels)

    # interleaving: question i starts at mode i mod n, every mode once per question
    for i, q in enumerate(questions):
        assert [m for qq, m in runner.log if qq == q.text] == rotated(list(MODES), i)
    assert [m for _, m in runner.log[:4]] == ["direct", "sot", "sgd", "auto"]
    assert [m for _, m in runner.log[4:8]] == ["sot", "sgd", "auto", "direct"]

    modes = result["modes"]
    assert modes["direct"]["median_s"] == 10.0 and modes["direct"]["speedup_median"] == 1.0
    sot = modes["sot"]
    assert sot["median_s"] == 5.0
    assert sot["p90_s"] == pytest.approx(17.0)  # sorted 4, 5, 20: linear at rank 1.8
    assert sot["speedup_median"] == 2.0
    assert sot["speedup_geomean"] == pytest.approx(round((2 * 2.5 * 0.5) ** (1 / 3), 3))
    assert sot["ttft_median_s"] == 1.25 and sot["tokens_median"] == 50
    assert sot["tokens_per_s_median"] == 10.0
    assert sot["routes"] == {"parallel": 3}
    assert modes["sgd"]["speedup_median"] == 1.0 and modes["auto"]["speedup_median"] == 1.25
    assert modes["auto"]["routes"] == {"direct": 1, "graph": 1, "parallel": 1}

    # the judge: sot wins both orders -> win; sgd/auto get "A" both times = one win, one loss -> tie
    assert sot["quality"] == {"n": 3, "wins": 3, "ties": 0, "losses": 0, "no_verdict": 0, "win_rate": 1.0,
                              "tie_rate": 0.0, "lose_rate": 0.0, "net_win_rate": 1.0}
    assert modes["sgd"]["quality"]["ties"] == 3 and modes["sgd"]["quality"]["net_win_rate"] == 0.0
    assert "quality" not in modes["direct"]
    assert len(judge.calls) == 2 * 3 * 3  # both orders, three questions, three modes besides direct
    first, second = judge.calls[0], judge.calls[1]
    assert first[1] == second[2] and first[2] == second[1]  # the same pair, swapped

    # per question rows carry seconds, tokens, answers and speed-ups
    row = result["questions"][1]
    assert row["question"] == Q2 and row["order"] == ["sot", "sgd", "auto", "direct"]
    assert row["modes"]["sot"]["seconds"] == 4.0 and row["modes"]["sot"]["speedup"] == 2.5
    assert row["modes"]["sot"]["answer"] == f"sot answer to {Q2}" and row["modes"]["sot"]["tokens"] == 40

    # router accuracy on the labelled questions of the run only: Q1 right, Q2 right, Q3 wrong
    router = result["router"]
    assert router["n"] == 3 and router["accuracy"] == pytest.approx(0.6667)
    assert (router["tp"], router["tn"], router["fp"], router["fn"]) == (1, 1, 1, 0)
    assert router["labelled_from"] == "questions of the run"
    assert result["settings"]["modes"] == list(MODES)


async def test_failures_count_and_lose() -> None:
    runner = StubRunner(stub_seconds(), fail={(Q1, "sot"), (Q2, "direct")})
    result = await run_bench([Question(Q1), Question(Q2)], runner, BenchConfig(("direct", "sot")),
                             judge=StubJudge(lambda a, b: "tie"))
    sot = result["modes"]["sot"]
    assert sot["failures"] == 1 and result["modes"]["direct"]["failures"] == 1
    assert sot["speedup_n"] == 0 and sot["speedup_median"] is None  # no question where both answered
    assert result["questions"][0]["judge"]["sot"] == {"outcome": "lose", "note": "this mode failed"}
    assert result["questions"][1]["judge"]["sot"]["outcome"] is None
    assert sot["quality"]["n"] == 1 and sot["quality"]["losses"] == 1 and sot["quality"]["no_verdict"] == 1
    assert result["router"] is None


QUALITY = {"sot": 1.0, "sgd": 0.2, "auto": -1.0, "direct": 0.0}  # how much the judge likes each mode's answers


def biased_margin(a: str, b: str) -> float:
    """A judge pulled 3 nats towards A whatever it reads, plus the difference in quality."""
    return 3.0 + QUALITY[a.split()[0]] - QUALITY[b.split()[0]]


async def test_margins_decide_despite_position_bias() -> None:
    runner = StubRunner(stub_seconds())
    judge = StubMarginJudge(biased_margin)  # its text verdicts are "A" always: every pair a tie
    config = BenchConfig(MODES, judge_name=judge.name)
    result = await run_bench([Question(Q1), Question(Q2)], runner, config, judge=judge)

    pair = result["questions"][0]["judge"]["sot"]
    assert pair == {"outcome": "win", "method": "logprob", "margins": [4.0, 2.0], "preference": 1.0}
    assert result["questions"][1]["judge"]["sgd"]["outcome"] == "tie"  # p = 0.2, inside the 0.5 band
    assert result["questions"][1]["judge"]["auto"]["preference"] == -1.0
    assert not judge.calls and len(judge.margin_calls) == 2 * 2 * 3  # no text verdicts asked for
    first, second = judge.margin_calls[0], judge.margin_calls[1]
    assert first[1] == second[2] and first[2] == second[1]  # the same pair, swapped

    modes = result["modes"]
    assert modes["sot"]["quality"] == {"n": 2, "wins": 2, "ties": 0, "losses": 0, "no_verdict": 0, "win_rate": 1.0,
                                       "tie_rate": 0.0, "lose_rate": 0.0, "net_win_rate": 1.0,
                                       "mean_preference": 1.0, "preference_n": 2}
    assert modes["sgd"]["quality"]["ties"] == 2 and modes["sgd"]["quality"]["mean_preference"] == 0.2
    assert modes["auto"]["quality"]["net_win_rate"] == -1.0 and modes["auto"]["quality"]["mean_preference"] == -1.0
    assert result["settings"]["judge_method"] == "logprob margin, both orders, tie band ±0.5 nats"

    # a wider band makes sot's 1 nat a tie, and the settings say so
    wide = await run_bench([Question(Q1)], StubRunner(stub_seconds()), BenchConfig(MODES, judge_tie_margin=1.5),
                           judge=StubMarginJudge(biased_margin))
    assert wide["questions"][0]["judge"]["sot"]["outcome"] == "tie"
    assert wide["settings"]["judge_method"] == "logprob margin, both orders, tie band ±1.5 nats"


async def test_pairs_without_margins_fall_back_to_text_verdicts() -> None:
    def no_margin_for_sgd(a: str, b: str) -> float | None:
        return None if "sgd" in (a.split()[0], b.split()[0]) else biased_margin(a, b)

    judge = StubMarginJudge(no_margin_for_sgd, sot_wins)
    result = await run_bench([Question(Q1)], StubRunner(stub_seconds()), BenchConfig(("direct", "sot", "sgd")),
                             judge=judge)
    sgd = result["questions"][0]["judge"]["sgd"]
    assert sgd["method"] == "text" and sgd["outcome"] == "tie" and sgd["replies"] == ["A", "A"]
    assert "preference" not in sgd and "mean_preference" not in result["modes"]["sgd"]["quality"]
    assert result["questions"][0]["judge"]["sot"]["method"] == "logprob"
    assert len(judge.calls) == 2  # text for the sgd pair only
    assert result["settings"]["judge_method"] == ("logprob margin, both orders, tie band ±0.5 nats; "
                                                  "text verdicts, both orders for 1 pair(s) without label logprobs")


async def test_text_judges_are_stated_as_such() -> None:
    result = await run_bench([Question(Q1)], StubRunner(stub_seconds()), BenchConfig(("direct", "sot")),
                             judge=StubJudge(sot_wins))
    assert result["settings"]["judge_method"] == "text verdicts, both orders"
    assert result["questions"][0]["judge"]["sot"]["method"] == "text"
    none = await run_bench([Question(Q1)], StubRunner(stub_seconds()), BenchConfig(("direct", "sot")))
    assert none["settings"]["judge_method"] == "none"


SKELETON = " Breathe slowly\n2. Take a walk\n3. Listen to music\n"
GRAPH_SKELETON = " Breathe slowly (needs: none; easy)\n2. Take a walk (needs: 1; hard)\n"


def skeleton_judge(prompt: str) -> str:
    """The fake model as judge: prefers the answer that has points (their titles appear in it)."""
    a = prompt.split("[Answer A]", 1)[1].split("[End of Answer A]", 1)[0]
    return "A" if "Breathe slowly" in a else "B"


async def test_end_to_end_over_the_planner_with_a_fake_engine(tmp_path: Path) -> None:
    engine = FakeEngine(default_reply="Some helpful text about it.", delay=0.002)
    engine.script("[Answer A]", skeleton_judge)
    engine.script("(needs: 2", GRAPH_SKELETON)  # only the graph skeleton prompt has this example
    engine.script("You are an organizer", SKELETON)
    settings = PlannerSettings(point_max_tokens=16, direct_max_tokens=32)
    runner = EmbeddedRunner(engine, settings)
    await runner.warm_up()
    relax = "What are the most effective ways to deal with stress?"  # the rules route it to a skeleton
    math_q = "Solve for x: 3x + 11 = 5x - 9"  # the rules route it direct
    questions = [Question(relax), Question(math_q)]
    labels = [Question(relax, 1), Question(math_q, 0)]
    judge = EngineJudge(engine, Role.LARGE, name="fake large")
    result = await run_bench(questions, runner, BenchConfig(MODES, models={"large": "fake"}, judge_name=judge.name),
                             judge=judge, labels=labels)

    modes = result["modes"]
    assert all(modes[m]["failures"] == 0 and modes[m]["n"] == 2 for m in MODES)
    assert modes["sot"]["routes"] == {"parallel": 2} and modes["sgd"]["routes"] == {"graph": 2}
    assert modes["auto"]["routes"] == {"direct": 1, "parallel": 1}
    assert modes["direct"]["routes"] == {"direct": 2}
    for m in MODES:
        assert modes[m]["median_s"] is not None and modes[m]["median_s"] > 0
        assert modes[m]["speedup_median"] is not None and modes[m]["tokens_median"] > 0
    row = result["questions"][0]
    assert "Breathe slowly" in row["modes"]["sot"]["answer"] and row["modes"]["sot"]["nodes"] == 3 + 1  # and the opening
    # each point's own text, for the defect counts: five words, so every point is short, none empty
    assert row["modes"]["sot"]["points"] == ["Some helpful text about it."] * 3 and row["modes"]["direct"]["points"] == []
    assert (modes["sot"]["points"], modes["sot"]["empty_points"], modes["sot"]["short_points"]) == (6, 0, 6)
    assert (modes["direct"]["points"], modes["direct"]["empty_points"]) == (0, 0)
    # the plan's shape is kept for reading: the skeleton as written and its dependency stages
    assert row["modes"]["sot"]["skeleton"].startswith("1. Breathe slowly") and modes["sot"]["stages_median"] == 1
    assert modes["direct"]["stages_median"] == 1
    # the first thing a reader sees: the outline of a skeleton answer, before any point's text
    assert 0 < modes["sot"]["first_visible_median_s"] <= modes["sot"]["ttft_median_s"]
    assert modes["direct"]["first_visible_median_s"] == modes["direct"]["ttft_median_s"]
    assert row["modes"]["direct"]["answer"].startswith("Some helpful text")
    # auto answered the math question directly: identical to direct, a tie without asking the judge
    assert result["questions"][1]["judge"]["auto"] == {"outcome": "tie", "note": "identical answers"}
    assert modes["sot"]["quality"]["wins"] == 2 and modes["sot"]["quality"]["net_win_rate"] == 1.0
    assert modes["auto"]["quality"] == {"n": 2, "wins": 1, "ties": 1, "losses": 0, "no_verdict": 0,
                                        "win_rate": 0.5, "tie_rate": 0.5, "lose_rate": 0.0, "net_win_rate": 0.5}
    judge_calls = [c for c in engine.calls if "[Answer A]" in c.full_prompt]
    # the fake sends no logprobs: one one-token probe for them, then text verdicts for every pair
    assert len(judge_calls) == 1 + 2 * (2 + 2 + 1) and all(c.request.role is Role.LARGE for c in judge_calls)
    assert judge_calls[0].request.top_logprobs == 20 and judge_calls[0].request.sampling.max_tokens == 1
    assert not judge.logprobs and result["settings"]["judge_method"] == "text verdicts, both orders"
    assert result["router"]["accuracy"] == 1.0 and result["router"]["by_source"] == {"rules": {"n": 2, "accuracy": 1.0}}

    out = tmp_path / "out"
    opts = AnswersOptions(set_path="x.csv", json_path=str(tmp_path / "b.json"), report_path=str(out / "b.md"),
                          plot_path=str(out / "b.png"))
    out.mkdir()
    write_outputs(result, opts)
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["modes"]["sot"]["speedup_median"] == modes["sot"]["speedup_median"]
    assert {"median_s", "speedup_median", "speedup_geomean", "p90_s"} <= set(saved["modes"]["sgd"])
    assert saved["questions"][1]["modes"]["sgd"]["answer"]
    md = (out / "b.md").read_text()
    assert "| sot |" in md and "Router accuracy" in md
    if saved["plot"]["written"]:
        assert (out / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "](b.png)" in md  # relative to the report
    else:
        assert "Plot skipped" in md


def test_command_refuses_bad_input_before_loading_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.csv"
    assert bench_cli.run(["answers", "--set", str(missing)]) == 2
    assert "cannot read" in capsys.readouterr().err
    qs = tmp_path / "q.csv"
    qs.write_text("request\nHi there, how are you?\n")
    assert bench_cli.run(["answers", "--set", str(qs), "--modes", "sot,sgd"]) == 2
    assert "must include direct" in capsys.readouterr().err
    assert bench_cli.run(["answers", "--set", str(qs), "--judge-url", "http://x"]) == 2
    assert "--judge-model" in capsys.readouterr().err
    assert bench_cli.run(["answers", "--set", str(qs), "--point-tokens", "0"]) == 2
    assert "point_max_tokens" in capsys.readouterr().err
    assert bench_cli.run(["answers", "--set", str(qs), "--limit", "0"]) == 2
    assert bench_cli.run(["answers", "--set", str(qs), "--judge-tie-margin", "-0.1"]) == 2
    assert "--judge-tie-margin" in capsys.readouterr().err
    assert bench_cli.run(["answers", "--set", str(qs), "--judge-logprobs"]) == 2
    assert "--judge-url" in capsys.readouterr().err


async def test_a_skeleton_variant_runs_the_mode_with_that_skeleton_writer() -> None:
    assert check_modes(["direct", "sgd:small", "sgd", "SOT:large"]) == ("direct", "sgd:small", "sgd", "sot:large")
    assert check_modes(["direct", "sgd:easy_role=large:point_max_tokens=64"])[1] == "sgd:easy_role=large:point_max_tokens=64"
    assert split_mode("sgd:skeleton_word_penalty=1") == ("sgd", {"skeleton_word_penalty": 1.0})
    for bad, why in (("direct:small", "take variants"), ("sgd:medium", "not a value"), ("live:small", "take variants"),
                     ("sgd:sampling=x", "not a planner setting"), ("sgd:point_max_tokens=0", "point_max_tokens"),
                     ("sgd:max_depth=two", "not a value"), ("sgd:skeleton_word_penalty=3", "skeleton_word_penalty"),
                     ("sgd:skeleton_word_penalty=x", "not a value")):
        with pytest.raises(ValueError, match=why):
            check_modes(["direct", bad])
    engine = FakeEngine()
    engine.script("You are an organizer", SKELETON)
    runner = EmbeddedRunner(engine, PlannerSettings(point_max_tokens=8))  # skeleton_role large by default
    for mode, role in (("sgd", Role.LARGE), ("sgd:small", Role.SMALL)):
        engine.calls.clear()
        result = await runner.answer("What are the most effective ways to deal with stress?", mode)
        assert result.ok and result.route == "graph"
        (skeleton,) = [c for c in engine.calls if "You are an organizer" in c.full_prompt]
        assert skeleton.request.role is role


def test_skeleton_variants_need_the_embedded_runner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    qs = tmp_path / "q.csv"
    qs.write_text("request\nHi there, how are you?\n")
    assert bench_cli.run(["answers", "--set", str(qs), "--modes", "direct,sgd:small", "--target", "h:1"]) == 2
    assert "embedded runner" in capsys.readouterr().err


async def test_a_setting_variant_changes_that_setting_only() -> None:
    engine = FakeEngine()
    engine.script("You are an organizer", GRAPH_SKELETON)  # point 1 easy, point 2 hard
    runner = EmbeddedRunner(engine, PlannerSettings(point_max_tokens=8))
    result = await runner.answer("What are the most effective ways to deal with stress?", "sgd:easy_role=small")
    assert result.ok
    points = {c.full_prompt.rsplit("\n", 1)[-1]: c for c in engine.calls if "Outline of the answer" in c.full_prompt}
    assert len(points) == 2 + 1  # and the opening
    assert {h: c.request.role for h, c in points.items()} == {"Opening:": Role.LARGE, "1. Breathe slowly:": Role.SMALL,
                                                              "2. Take a walk:": Role.LARGE}
    assert all(c.request.sampling.max_tokens == 8 for h, c in points.items() if h != "Opening:")


async def test_rejudge_judges_saved_answers_and_keeps_the_speeds(tmp_path: Path) -> None:
    runner = StubRunner(stub_seconds())
    questions = [Question(Q1), Question(Q2), Question(Q3)]
    saved = await run_bench(questions, runner, BenchConfig(MODES))  # answered with no judge
    assert saved["modes"]["sot"]["quality"] is None
    saved = json.loads(json.dumps(saved))  # as read back from --json
    speeds = {m: saved["modes"][m]["speedup_median"] for m in MODES}
    judge = StubJudge(sot_wins)
    result = await rejudge(saved, judge)
    assert len(judge.calls) == 2 * 3 * 3 and result["settings"]["judge"] == "stub judge"
    assert result["modes"]["sot"]["quality"]["wins"] == 3 and result["modes"]["sgd"]["quality"]["ties"] == 3
    assert {m: result["modes"][m]["speedup_median"] for m in MODES} == speeds
    with pytest.raises(ValueError, match="not a result"):
        await rejudge({"settings": {}, "questions": []}, judge)


def test_rejudge_command_refuses_what_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_cli.run(["answers"]) == 2
    assert "--set is required" in capsys.readouterr().err
    assert bench_cli.run(["answers", "--rejudge", str(tmp_path / "none.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "x.json").write_text("[1, 2]")
    assert bench_cli.run(["answers", "--rejudge", str(tmp_path / "x.json")]) == 2
    assert "not a result" in capsys.readouterr().err


async def test_single_grades_grade_direct_once_per_question_and_compare() -> None:
    runner = StubRunner(stub_seconds())
    questions = [Question(Q1), Question(Q2)]
    grades = {"direct": 6.0, "sot": 7.0, "sgd": 5.9, "auto": 4.0}
    judge = StubGrader(lambda answer: grades[answer.split()[0]])
    config = BenchConfig(MODES, judge_tie_margin=0.5, judge_mode="single")
    result = await run_bench(questions, runner, config, judge=judge)
    assert len(judge.graded) == 2 * 4 and not judge.calls  # direct once + 3 modes, per question; no pairs
    assert sum(a.startswith("direct") for a in judge.graded) == 2
    modes = result["modes"]
    assert modes["sot"]["quality"]["wins"] == 2 and modes["sot"]["quality"]["mean_preference"] == 1.0
    assert modes["sgd"]["quality"]["ties"] == 2  # -0.1 is inside the band
    assert modes["auto"]["quality"]["losses"] == 2
    row = result["questions"][0]["judge"]["sot"]
    assert row == {"method": "grade", "grades": [7.0, 6.0], "outcome": "win", "preference": 1.0}
    assert result["settings"]["judge_method"].startswith("single-answer grades")
    assert judge_method(judge, [], 0.5, "single").startswith("single-answer grades")  # known without a pair
    no_grade = StubGrader(lambda answer: None if answer.startswith("sgd") else 5.0)
    result = await run_bench(questions, runner, config, judge=no_grade)
    assert result["modes"]["sgd"]["quality"]["no_verdict"] == 2
    with pytest.raises(ValueError, match="cannot grade"):
        await run_bench(questions, runner, config, judge=StubJudge(sot_wins))
