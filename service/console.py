"""Progress lines for long commands (benchmarks, model fetch): one labelled line at a time on stderr, so
stdout stays the command's result (JSON, a table) and a log or CI shows where a run is."""

from __future__ import annotations

import sys
from collections.abc import Callable


def progress_lines(label: str) -> Callable[[str], None]:
    """A printer of "[label] message" lines on stderr, flushed at once."""

    def say(message: str) -> None:
        print(f"[{label}] {message}", file=sys.stderr, flush=True)

    return say
