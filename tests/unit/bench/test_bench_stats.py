"""Statistics, the interleaving order, mode checks and the progress bar of the answer bench."""

from __future__ import annotations

import io
import math
from collections import Counter

import pytest

from espalier.service.bench.answers import ProgressBar, check_modes, rotated
from espalier.service.bench.stats import geomean, median, percentile


def test_median() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert median([]) is None


def test_percentile_is_linear_between_closest_ranks() -> None:
    xs = [1.0, 2.0, 3.0, 4.0]
    assert percentile(xs, 90) == pytest.approx(3.7)  # numpy.percentile([1,2,3,4], 90) == 3.7
    assert percentile(xs, 50) == pytest.approx(2.5)
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 100) == 4.0
    assert percentile([10.0, 1.0, 5.0], 90) == pytest.approx(9.0)  # sorted [1,5,10]: 5 + 0.8 * 5
    assert percentile([7.0], 90) == 7.0
    assert percentile([], 90) is None
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_geomean() -> None:
    assert geomean([1.0, 4.0]) == pytest.approx(2.0)
    assert geomean([2.0, 0.5]) == pytest.approx(1.0)  # a 2x win and a 2x loss cancel
    assert geomean([1.5]) == pytest.approx(1.5)
    assert geomean([2.0, 8.0, 4.0]) == pytest.approx(4.0)
    assert geomean([]) is None
    assert geomean([1.0, 0.0]) is None
    assert math.isclose(geomean([3.0] * 50) or 0, 3.0)


def test_rotated_order_starts_at_mode_i_mod_n() -> None:
    modes = ["direct", "sot", "sgd", "auto"]
    assert rotated(modes, 0) == ["direct", "sot", "sgd", "auto"]
    assert rotated(modes, 1) == ["sot", "sgd", "auto", "direct"]
    assert rotated(modes, 3) == ["auto", "direct", "sot", "sgd"]
    assert rotated(modes, 4) == modes
    assert rotated([], 2) == []


def test_rotation_balances_positions() -> None:
    modes = ["direct", "sot", "sgd"]
    positions: dict[str, Counter[int]] = {m: Counter() for m in modes}
    for i in range(9):
        order = rotated(modes, i)
        assert sorted(order) == sorted(modes)
        for pos, m in enumerate(order):
            positions[m][pos] += 1
    for m in modes:  # every mode runs first, second and third equally often
        assert positions[m] == Counter({0: 3, 1: 3, 2: 3})


def test_check_modes() -> None:
    assert check_modes(["direct", " SOT", "sot", ""]) == ("direct", "sot")
    with pytest.raises(ValueError, match="direct"):
        check_modes(["sot", "sgd"])
    with pytest.raises(ValueError, match="unknown mode"):
        check_modes(["direct", "fast"])


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_per_item_when_not_a_terminal() -> None:
    now = [0.0]
    out = io.StringIO()
    bar = ProgressBar(4, "answers", out, clock=lambda: now[0], width=8)
    now[0] = 10.0
    bar.step("q1 direct")
    now[0] = 20.0
    bar.step("q1 sot")
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[answers] |##------| 1/4  25%")
    assert "ETA 0:30" in lines[0] and lines[0].endswith("q1 direct")
    assert "2/4  50%" in lines[1] and "0:20 elapsed, ETA 0:20" in lines[1]
    assert "\r" not in out.getvalue()


def test_progress_redraws_one_line_on_a_terminal() -> None:
    out = _Tty()
    bar = ProgressBar(2, "judge", out, clock=lambda: 0.0)
    bar.step()
    bar.step()
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "2/2 100%" in text


def test_the_load_bench_reports_percentiles_the_same_way() -> None:
    from espalier.service.bench.load import percentiles
    assert percentiles([4.0, 1.0, 3.0, 2.0]) == {"p50": 2.5, "p90": 3.7, "p99": 3.97, "n": 4}
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None, "n": 0}
