"""Checklist grading in `bench answers`: reading checklists, P(yes) from the first token, scores and
outcomes per question, defect counts, the suitable-only question filter, and the command's checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from bench_fakes import StubChecklistJudge, StubRunner

from espalier.service import bench_cli
from espalier.service.bench.answers import (
    AnswersOptions,
    BenchConfig,
    _questions,
    point_defects,
    rejudge,
    run_bench,
    tie_band,
)
from espalier.service.bench.checklist import Graded, load_checklists, yes_probability
from espalier.service.bench.questions import Question, QuestionSetError, normalize

Q1, Q2, Q3 = "How can I relax?", "Solve 2x + 3 = 7", "What are the ways to learn?"
MODES = ("direct", "sot", "sgd")
CHECKLISTS = {normalize(Q1): ("breathing", "walk", "sleep", "music"), normalize(Q2): ("x = 2",)}


def seconds() -> dict[tuple[str, str], float]:
    return {(q, m): 10.0 for q in (Q1, Q2, Q3) for m in MODES}


def by_mode(answer: str, item: str) -> float:
    """sot's answers satisfy every item, direct's half, sgd's none (the stub answers start with the mode)."""
    return {"sot": 1.0, "direct": 0.5, "sgd": 0.0}[answer.split()[0]]


def lp(p: float) -> float:
    return math.log(p)


def test_yes_probability_normalises_yes_against_no_and_bounds_missing_labels() -> None:
    assert yes_probability([("Yes", lp(0.6)), ("No", lp(0.2)), ("The", lp(0.2))]) == pytest.approx(0.75)
    # spellings fold together: " yes", "YES" and "yes" are all yes
    top = [(" yes", lp(0.3)), ("YES", lp(0.1)), ("yes", lp(0.2)), (" no", lp(0.2)), ("x", lp(0.2))]
    assert yes_probability(top) == pytest.approx(0.6 / 0.8)
    # no missing from the list: bounded by the least likely listed entry, not taken as zero...
    assert yes_probability([("Yes", lp(0.5)), ("Maybe", lp(0.2)), ("Sure", lp(0.1))]) == pytest.approx(0.5 / 0.6)
    # ...nor by more than the mass the listed entries leave over
    assert yes_probability([("Yes", lp(0.5)), ("Maybe", lp(0.45)), ("Sure", lp(0.05))]) > 0.999
    assert yes_probability([("The", lp(0.9)), ("A", lp(0.1))]) is None  # neither label
    assert yes_probability([("The", lp(0.85)), ("Yes", lp(0.05)), ("No", lp(0.05)), ("A", lp(0.05))]) is None


def test_graded_score_is_the_mean_of_the_items_it_could_grade() -> None:
    assert Graded((1.0, 0.5, None, 0.0)).score == pytest.approx(50.0)
    assert Graded((None, None)).score is None


def test_load_checklists_reads_jsonl_and_refuses_bad_lines(tmp_path: Path) -> None:
    good = tmp_path / "c.jsonl"
    good.write_text(json.dumps({"id": 0, "request": " How can I  relax? ", "checklist": ["A?", " B? "]}) + "\n\n")
    assert load_checklists(good) == {normalize(Q1): ("A?", "B?")}
    for bad, words in (({"request": "q"}, "checklist"), ({"request": "", "checklist": ["a"]}, "request"),
                       ({"request": "q", "checklist": []}, "checklist")):
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(bad) + "\n")
        with pytest.raises(QuestionSetError, match=words):
            load_checklists(path)
    (tmp_path / "nojson.jsonl").write_text("{nope\n")
    with pytest.raises(QuestionSetError, match="not JSON"):
        load_checklists(tmp_path / "nojson.jsonl")


async def test_checklist_judging_scores_every_answer_and_decides_by_the_tie_band() -> None:
    runner = StubRunner(seconds(), fail={(Q1, "sgd")})
    judge = StubChecklistJudge(by_mode)
    questions = [Question(Q1), Question(Q2), Question(Q3)]
    config = BenchConfig(MODES, judge_tie_margin=5.0, judge_mode="checklist", checklists=CHECKLISTS)
    result = await run_bench(questions, runner, config, judge=judge)

    rows = result["questions"]
    # direct graded once per question, like every mode; Q3 has no checklist, a failed answer is not graded
    assert len(judge.graded) == 2 * 3 - 1 and all(items for _, items in judge.graded)
    assert rows[0]["checklist"]["sot"] == {"score": 100.0, "grades": [1.0] * 4}
    assert rows[0]["checklist"]["direct"]["score"] == 50.0 and "sgd" not in rows[0]["checklist"]
    assert rows[0]["judge"]["sot"] == {"outcome": "win", "method": "checklist", "scores": [100.0, 50.0],
                                       "preference": 50.0}
    assert rows[0]["judge"]["sgd"] == {"outcome": "lose", "note": "this mode failed"}
    assert rows[1]["judge"]["sgd"]["outcome"] == "lose" and rows[1]["judge"]["sgd"]["preference"] == -50.0
    assert rows[2]["judge"]["sot"] == {"outcome": None, "note": "no checklist for this question"}
    modes = result["modes"]
    assert modes["direct"]["checklist_score"] == 50.0 and modes["direct"]["checklist_n"] == 2
    assert modes["sot"]["checklist_score"] == 100.0 and modes["sot"]["checklist_net_win_rate"] == 1.0
    assert modes["sgd"]["checklist_score"] == 0.0 and modes["sgd"]["checklist_net_win_rate"] == -1.0
    assert modes["sot"]["quality"]["no_verdict"] == 1 and modes["sot"]["quality"]["n"] == 2
    assert result["settings"]["judge_method"].startswith("checklist grades")
    assert result["settings"]["judge_method"].endswith("±5 points")


async def test_a_difference_inside_the_band_is_a_tie_and_rejudging_keeps_the_speeds() -> None:
    runner = StubRunner(seconds())
    saved = await run_bench([Question(Q1), Question(Q2)], runner, BenchConfig(MODES))
    saved = json.loads(json.dumps(saved))
    close = StubChecklistJudge(lambda answer, item: {"sot": 0.53, "direct": 0.5, "sgd": 0.4}[answer.split()[0]])
    result = await rejudge(saved, close, tie_margin=5.0, mode="checklist", checklists=CHECKLISTS)
    assert [r["judge"]["sot"]["outcome"] for r in result["questions"]] == ["tie", "tie"]
    assert [r["judge"]["sgd"]["outcome"] for r in result["questions"]] == ["lose", "lose"]
    assert result["modes"]["sot"]["speedup_median"] == saved["modes"]["sot"]["speedup_median"]
    with pytest.raises(ValueError, match="cannot grade checklists"):
        await rejudge(saved, close, mode="checklist", checklists=None)


def test_point_defects_count_empty_and_short_points() -> None:
    assert point_defects(["", "  \n", "**", "One two three.", "one two three four five six seven eight",
                          "A point with enough words to stand as a point of its own."]) == (3, 1)


def test_defects_come_from_the_points_of_each_run() -> None:
    from espalier.service.bench.answers import mode_summary

    rows = [{"modes": {"sot": {"error": None, "seconds": 1.0, "ttft_s": 0.1, "tokens": 3, "route": "parallel",
                               "failed_nodes": 0, "points": ["", "Too short to count.", "x " * 10]}}},
            {"modes": {"sot": {"error": "EngineFault", "seconds": 1.0, "ttft_s": None, "tokens": 0, "route": "",
                               "failed_nodes": 0, "points": [""]}}}]  # a failed run: its points are not counted
    d = mode_summary("sot", rows)
    assert (d["points"], d["empty_points"], d["short_points"]) == (3, 1, 1)


def test_only_suitable_keeps_the_questions_labelled_one(tmp_path: Path) -> None:
    labelled = tmp_path / "router.csv"
    labelled.write_text(f"label;request\n1;{Q1}\n0;{Q2}\n1;{Q3}\n")
    assert [q.text for q in _questions(AnswersOptions(str(labelled), only_suitable=True), None)] == [Q1, Q3]
    assert [q.text for q in _questions(AnswersOptions(str(labelled), only_suitable=True, limit=1), None)] == [Q1]
    plain = tmp_path / "plain.csv"
    plain.write_text(f"request\n{Q1}\n{Q2}\n")
    labels = [Question(Q2, 1), Question(Q1, 0)]
    assert [q.text for q in _questions(AnswersOptions(str(plain), only_suitable=True), labels)] == [Q2]
    with pytest.raises(ValueError, match="needs labels"):
        _questions(AnswersOptions(str(plain), only_suitable=True), None)


def test_the_tie_band_defaults_to_the_judge_modes_own() -> None:
    assert tie_band(AnswersOptions("x", judge_mode="checklist")) == 5.0
    assert tie_band(AnswersOptions("x", judge_mode="pairwise")) == 0.5
    assert tie_band(AnswersOptions("x", judge_mode="checklist", judge_tie_margin=2.0)) == 2.0


def test_the_command_checks_checklist_flags_before_loading_models(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    qs = tmp_path / "q.csv"
    qs.write_text("request\nHi there, how are you?\n")
    assert bench_cli.run(["answers", "--set", str(qs), "--judge-mode", "checklist"]) == 2
    assert "--checklists" in capsys.readouterr().err
    assert bench_cli.run(["answers", "--set", str(qs), "--checklists", str(qs)]) == 2
    assert "--judge-mode checklist" in capsys.readouterr().err
    assert bench_cli.run(["answers", "--set", str(qs), "--judge-mode", "checklist", "--checklists",
                          str(tmp_path / "none.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert bench_cli.run(["answers", "--set", str(qs), "--only-suitable"]) == 2
    assert "needs labels" in capsys.readouterr().err
