"""Calibration against a strong judge: blind pair files and key, verdicts combined over both orders,
agreement and Cohen's kappa, and the two commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from espalier.service import bench_cli
from espalier.service.bench.calibration import (
    agreement,
    blind_pairs,
    cohen_kappa,
    read_verdicts,
    strong_outcomes,
    write_blind,
)


def result() -> dict:
    def run(text: str, error: str | None = None) -> dict:
        return {"answer": text, "error": error}

    questions = [
        {"index": 0, "question": "Q zero?", "modes": {"direct": run("d0"), "sot": run("s0"), "sgd": run("g0")},
         "judge": {"sot": {"outcome": "win", "method": "checklist", "preference": 6.0},
                   "sgd": {"outcome": "lose", "method": "checklist", "preference": -7.0}}},
        {"index": 1, "question": "Q one?", "modes": {"direct": run("d1"), "sot": run("s1"), "sgd": run("", "boom")},
         "judge": {"sot": {"outcome": "tie", "method": "checklist", "preference": 2.0},
                   "sgd": {"outcome": "lose", "note": "this mode failed"}}},
    ]
    return {"settings": {"modes": ["direct", "sot", "sgd"], "judge_method": "checklist grades"},
            "questions": questions}


def test_blind_files_hide_the_mode_and_swap_the_order() -> None:
    key, docs = blind_pairs(result())
    assert sorted(docs) == ["sgd.direct-first.md", "sgd.mode-first.md", "sot.direct-first.md", "sot.mode-first.md"]
    # sgd failed on question 1: no pair for it; pair numbers are unique across files
    assert sorted((k["question"], k["mode"]) for k in key) == [(0, "sgd"), (0, "sot"), (1, "sot")]
    assert sorted(k["pair"] for k in key) == [1, 2, 3]
    for name, text in docs.items():
        assert "sot" not in text.replace(name, "") and "sgd" not in text  # no mode named inside
    sot_first = docs["sot.mode-first.md"]
    pair = next(k["pair"] for k in key if (k["question"], k["mode"]) == (1, "sot"))
    block = sot_first.split(f"## Pair {pair}\n", 1)[1].split("## Pair", 1)[0]
    assert block.index("s1") < block.index("d1")  # the mode's answer is A here...
    other = docs["sot.direct-first.md"].split(f"## Pair {pair}\n", 1)[1].split("## Pair", 1)[0]
    assert other.index("d1") < other.index("s1")  # ...and B in the other order
    assert blind_pairs(result()) == (key, docs)  # the shuffle is seeded


def test_verdicts_combine_over_both_orders(tmp_path: Path) -> None:
    key = [{"pair": 1, "question": 0, "mode": "sot"}, {"pair": 2, "question": 0, "mode": "sgd"},
           {"pair": 3, "question": 1, "mode": "sot"}, {"pair": 4, "question": 1, "mode": "sgd"}]
    # pair 1: A (mode) then B (mode) -> win; pair 2: A then A -> a win and a loss: tie; pair 3: tie, B -> win
    first, second = {1: "A", 2: "A", 3: "tie"}, {1: "B", 2: "A", 3: "B"}
    assert strong_outcomes(key, first, second) == {(0, "sot"): "win", (0, "sgd"): "tie", (1, "sot"): "win"}
    path = tmp_path / "v.jsonl"
    path.write_text('{"pair": 1, "verdict": "a", "why": "fuller"}\n\n{"pair": 2, "verdict": "TIE"}\n')
    more = tmp_path / "w.jsonl"
    more.write_text('{"pair": 3, "verdict": "B"}\n')
    assert read_verdicts(path, more) == {1: "A", 2: "tie", 3: "B"}
    path.write_text('{"pair": 1, "verdict": "maybe"}\n')
    with pytest.raises(ValueError, match="A, B or tie"):
        read_verdicts(path)


def test_cohen_kappa() -> None:
    assert cohen_kappa([("win", "win"), ("lose", "lose"), ("tie", "tie")]) == pytest.approx(1.0)
    # agreement no better than chance: 0
    assert cohen_kappa([("win", "win"), ("win", "lose"), ("lose", "win"), ("lose", "lose")]) == pytest.approx(0.0)
    # 3 of 4 agree, chance 0.5 -> 0.5
    assert cohen_kappa([("win", "win"), ("win", "win"), ("lose", "lose"), ("lose", "win")]) == pytest.approx(0.5)
    assert cohen_kappa([]) is None


def test_agreement_against_the_bench_judge_and_the_tie_band_sweep() -> None:
    strong = {(0, "sot"): "win", (0, "sgd"): "lose", (1, "sot"): "win", (1, "sgd"): "lose"}
    report = agreement(result(), strong, bands=(1, 5))
    assert report["n"] == 4 and report["agreement"] == 0.75  # (1, sot): strong win, bench tie
    assert report["confusion"]["win"] == {"win": 1, "tie": 1, "lose": 0}
    assert report["per_mode"]["sot"]["strong_net_win_rate"] == 1.0
    assert report["per_mode"]["sot"]["bench_net_win_rate"] == 0.5
    # re-deciding the saved checklist differences at another band: at 1 point (1, sot) becomes a win
    at = {row["band"]: row for row in report["by_tie_band"]}
    assert at[1]["n"] == 3 and at[1]["agreement"] == 1.0 and at[5]["agreement"] == pytest.approx(2 / 3, abs=1e-4)


def test_the_commands_write_and_read_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "r.json"
    saved.write_text(json.dumps(result()))
    out = tmp_path / "blind"
    assert bench_cli.run(["blind", "--result", str(saved), "--out", str(out), "--modes", "sot"]) == 0
    key = json.loads((out / "key.json").read_text())
    assert {k["mode"] for k in key} == {"sot"} and (out / "sot.mode-first.md").exists()
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("".join(json.dumps({"pair": k["pair"], "verdict": "A"}) + "\n" for k in key))
    second.write_text("".join(json.dumps({"pair": k["pair"], "verdict": "B"}) + "\n" for k in key))
    capsys.readouterr()
    assert bench_cli.run(["agree", "--result", str(saved), "--key", str(out / "key.json"), "--mode-first",
                          str(first), "--direct-first", str(second), "--json", str(tmp_path / "ag.json")]) == 0
    printed = capsys.readouterr().out
    assert "pairs judged by both: 2" in printed and "kappa" in printed
    assert json.loads((tmp_path / "ag.json").read_text())["per_mode"]["sot"]["strong_net_win_rate"] == 1.0
    assert bench_cli.run(["blind", "--result", str(tmp_path / "none.json"), "--out", str(out)]) == 2
    assert "cannot read" in capsys.readouterr().err
    write_blind(result(), tmp_path / "again")
    assert (tmp_path / "again" / "sgd.direct-first.md").exists()
