"""Calibrating the bench's judge against a strong judge: blind answer pairs out, agreement in.

Owns two steps of `espalier bench blind` and `espalier bench agree`:

- blind: from a saved `bench answers --json` result, the pairs (each mode's answer against direct's on
  the same question) written for a strong judge who must not know which mode wrote which. Per mode,
  two files, one per answer order (in `sot.mode-first.md` the mode's answer is Answer A, in
  `sot.direct-first.md` it is Answer B), the pairs in a shuffled order (a fixed seed, so the files can be
  made again) under neutral numbers, and a key that maps each number back to its question and mode.
  Hand each file to its own judge (a helper each, blind to the others) with MT-Bench's pairwise
  criteria; each writes one line per pair: `{"pair": N, "verdict": "A" | "B" | "tie"}`.
- agree: the two verdict files combined per pair (the rule of espalier.service.bench.judge.combine: the same
  outcome twice stands, a win or loss beside a tie stands, a win in one order and a loss in the other is
  a tie), then compared with the bench judge's outcomes in the result: the share of pairs on which both
  agree, Cohen's kappa over win / tie / lose, the confusion matrix, and per mode both net win rates.
  With a checklist-judged result it also says how agreement moves with the tie band (recomputed from
  the saved scores), so a band can be chosen on one run and checked on another.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from espalier.service.bench.judge import Outcome, combine, margin_outcome

OUTCOMES: tuple[Outcome, ...] = ("win", "tie", "lose")
# MT-Bench's pairwise criteria, in our own words.
RUBRIC = (
    "You are an impartial judge. For each pair below, decide which of the two answers serves the person who "
    "asked the question better: which follows the question's instructions and answers it more helpfully, "
    "relevantly, accurately and in more useful depth and detail. Ignore the order in which the answers are "
    "shown and do not let length alone sway you: a longer answer wins only if what it adds is correct and "
    "useful. Call a tie when neither is clearly better."
)
ORDERS = ("mode-first", "direct-first")


def blind_pairs(result: Mapping[str, Any], modes: Sequence[str] | None = None, limit: int | None = None,
                seed: int = 14) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(key, documents): the key lists {pair, question index, mode}; documents maps file names to markdown,
    one file per mode and order (`sot.mode-first.md`, ...), so a judge sees each question once per file.
    Pair numbers are unique across the files. Pairs where either answer failed are left out."""
    rows = list(result["questions"])[:limit] if limit else list(result["questions"])
    wanted = list(modes) if modes else [m for m in result["settings"]["modes"] if m != "direct"]
    key: list[dict[str, Any]] = []
    docs: dict[str, str] = {}
    rng = random.Random(seed)
    for mode in wanted:
        pairs = [row for row in rows if mode in row["modes"] and row["modes"][mode]["error"] is None
                 and row["modes"]["direct"]["error"] is None]
        rng.shuffle(pairs)
        first = len(key) + 1
        key += [{"pair": first + i, "question": row["index"], "mode": mode} for i, row in enumerate(pairs)]
        for order in ORDERS:
            parts = [f"# Answer pairs ({len(pairs)})", "", RUBRIC, "",
                     'For each pair write one JSON line: {"pair": N, "verdict": "A"} (or "B", or "tie").', ""]
            for i, row in enumerate(pairs):
                a, b = row["modes"][mode]["answer"], row["modes"]["direct"]["answer"]
                if order == "direct-first":
                    a, b = b, a
                parts += [f"## Pair {first + i}", "", f"Question: {row['question'].strip()}", "",
                          "### Answer A", "", a.strip(), "", "### Answer B", "", b.strip(), ""]
            docs[f"{_file_safe(mode)}.{order}.md"] = "\n".join(parts)
    return key, docs


def _file_safe(mode: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in mode)


def write_blind(result: Mapping[str, Any], folder: str | Path, modes: Sequence[str] | None = None,
                limit: int | None = None, seed: int = 14) -> list[Path]:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    key, docs = blind_pairs(result, modes, limit, seed)
    written = []
    for name, text in docs.items():
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    (out / "key.json").write_text(json.dumps(key, indent=1) + "\n", encoding="utf-8")
    return [*written, out / "key.json"]


def read_verdicts(*paths: str | Path) -> dict[int, str]:
    """{pair: "A" | "B" | "tie"} from files of JSON lines (other keys on a line, such as a reason, are ignored)."""
    out: dict[int, str] = {}
    for path, n, line in ((p, n, line) for p in paths
                          for n, line in enumerate(Path(p).read_text(encoding="utf-8").splitlines(), 1)):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            pair, verdict = int(obj["pair"]), str(obj["verdict"]).strip()
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ValueError(f"{path}:{n}: expected {{\"pair\": N, \"verdict\": \"A\" | \"B\" | \"tie\"}}") from None
        verdict = {"a": "A", "b": "B", "tie": "tie"}.get(verdict.casefold(), "")
        if not verdict:
            raise ValueError(f"{path}:{n}: the verdict must be A, B or tie")
        out[pair] = verdict
    return out


def _outcome(verdict: str | None, mode_is_a: bool) -> Outcome | None:
    if verdict is None:
        return None
    if verdict == "tie":
        return "tie"
    return "win" if (verdict == "A") == mode_is_a else "lose"


def strong_outcomes(key: Sequence[Mapping[str, Any]], mode_first: Mapping[int, str],
                    direct_first: Mapping[int, str]) -> dict[tuple[int, str], Outcome]:
    """{(question index, mode): outcome} from the two orders' verdicts (pairs judged in neither are left out)."""
    out: dict[tuple[int, str], Outcome] = {}
    for entry in key:
        pair = int(entry["pair"])
        got = combine(_outcome(mode_first.get(pair), True), _outcome(direct_first.get(pair), False))
        if got is not None:
            out[(int(entry["question"]), str(entry["mode"]))] = got
    return out


def cohen_kappa(pairs: Iterable[tuple[str, str]], labels: Sequence[str] = OUTCOMES) -> float | None:
    """Cohen's kappa of two raters over the same items; None with no items, 1.0 when both agree on one label."""
    items = list(pairs)
    n = len(items)
    if not n:
        return None
    observed = sum(a == b for a, b in items) / n
    expected = sum((sum(a == k for a, _ in items) / n) * (sum(b == k for _, b in items) / n) for k in labels)
    if expected >= 1.0:
        return 1.0 if observed >= 1.0 else 0.0
    return (observed - expected) / (1 - expected)


def net_win_rate(outcomes: Sequence[str]) -> float | None:
    return (outcomes.count("win") - outcomes.count("lose")) / len(outcomes) if outcomes else None


def agreement(result: Mapping[str, Any], strong: Mapping[tuple[int, str], Outcome],
              bands: Sequence[float] = (0, 1, 2, 3, 4, 5, 6, 8, 10)) -> dict[str, Any]:
    """The bench judge's outcomes in `result` against the strong judge's, on the pairs both judged."""
    bench = {(int(row["index"]), mode): j["outcome"] for row in result["questions"]
             for mode, j in row.get("judge", {}).items() if j.get("outcome") is not None}
    both = sorted(k for k in strong if k in bench)
    pairs = [(strong[k], bench[k]) for k in both]
    out: dict[str, Any] = {
        "n": len(pairs),
        "agreement": round(sum(a == b for a, b in pairs) / len(pairs), 4) if pairs else None,
        "kappa": _round(cohen_kappa(pairs)),
        "confusion": {s: {b: sum(1 for x, y in pairs if (x, y) == (s, b)) for b in OUTCOMES} for s in OUTCOMES},
        "per_mode": {},
        "judge_method": result.get("settings", {}).get("judge_method"),
    }
    for mode in sorted({m for _, m in both}):
        mine = [k for k in both if k[1] == mode]
        out["per_mode"][mode] = {
            "n": len(mine),
            "strong_net_win_rate": _round(net_win_rate([strong[k] for k in mine])),
            "bench_net_win_rate": _round(net_win_rate([bench[k] for k in mine])),
            "strong": {o: sum(strong[k] == o for k in mine) for o in OUTCOMES},
            "bench": {o: sum(bench[k] == o for k in mine) for o in OUTCOMES},
        }
    scored = {(int(row["index"]), mode): j["preference"] for row in result["questions"]
              for mode, j in row.get("judge", {}).items()
              if j.get("method") == "checklist" and j.get("preference") is not None}
    if scored:
        sweep = []
        for band in bands:
            at = [(strong[k], margin_outcome(scored[k], band)) for k in both if k in scored]
            sweep.append({"band": band, "n": len(at), "kappa": _round(cohen_kappa(at)),
                          "agreement": round(sum(a == b for a, b in at) / len(at), 4) if at else None})
        out["by_tie_band"] = sweep
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def agreement_lines(report: Mapping[str, Any]) -> list[str]:
    """The agreement as a few lines of text, for the terminal and the closing note."""
    lines = [(f"pairs judged by both: {report['n']}; agreement {report['agreement']}, Cohen's kappa "
              f"{report['kappa']} (bench judge: {report.get('judge_method')})")]
    lines.append("confusion (rows: strong judge, columns: bench judge): " + "; ".join(
        f"{s}: " + " ".join(f"{b} {report['confusion'][s][b]}" for b in OUTCOMES) for s in OUTCOMES))
    for mode, d in report["per_mode"].items():
        lines.append(f"{mode}: n {d['n']}, net win rate strong {d['strong_net_win_rate']} / bench "
                     f"{d['bench_net_win_rate']}; strong W/T/L {d['strong']['win']}/{d['strong']['tie']}/"
                     f"{d['strong']['lose']}, bench {d['bench']['win']}/{d['bench']['tie']}/{d['bench']['lose']}")
    for row in report.get("by_tie_band", []):
        lines.append(f"  tie band {row['band']:g}: kappa {row['kappa']}, agreement {row['agreement']} (n {row['n']})")
    return lines
