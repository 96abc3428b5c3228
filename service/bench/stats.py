"""The statistics every bench reports, computed one way: median, percentiles and geometric mean.

Percentiles interpolate linearly between the closest ranks (numpy's default method), so a p90 from
`bench answers` and one from `bench load` mean the same thing (load used to take the nearest rank).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

PERCENTILE_METHOD = "linear interpolation between closest ranks (numpy default)"


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear between the closest ranks; None for no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError("q must be between 0 and 100")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def geomean(values: Sequence[float]) -> float | None:
    """Geometric mean of positive values; None when there are none (or any is not positive)."""
    if not values or any(v <= 0 for v in values):
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))
