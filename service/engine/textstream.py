"""Turning a sequence's token pieces into safe text deltas.

Owns incremental UTF-8 decoding (a multi-byte character split across tokens is held back until it
is whole, so a delta never carries broken UTF-8) and stop strings (text that could still become a
stop string is held back; on a match the text before it is released and the sequence stops).
A stop made only of whitespace (a point's "\n") does not match before the first non-whitespace
text: a reply that opens with a line break has not ended, it has not begun (a model asked for
one line sometimes starts it on a new one, and would otherwise write nothing).
Pure Python: unit-tested without a model.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._held = ""  # decoded text not yet released: it may be the start of a stop string
        self._begun = False  # whether non-whitespace text came yet (see the module docstring)
        self.stopped = False

    def push(self, piece: bytes) -> str:
        """Add one token's bytes; returns the text that is now safe to release."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(piece)
        if not self._stop:
            self._held = ""
            return text
        cut = self._first_stop(text)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = self._longest_stop_prefix_suffix(text)
        self._held = text[len(text) - keep:] if keep else ""
        out = text[:len(text) - keep] if keep else text
        self._begun = self._begun or bool(out.strip())
        return out

    def flush(self) -> str:
        """At the end of the sequence: release whatever was held back."""
        if self.stopped:
            return ""
        rest = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return rest

    def _first_stop(self, text: str) -> int:
        hits = []
        for stop in self._stop:
            i = text.find(stop)
            if not stop.strip() and not self._begun:
                while i >= 0 and not text[:i].strip():  # still in the leading whitespace
                    i = text.find(stop, i + 1)
            if i >= 0:
                hits.append(i)
        return min(hits) if hits else -1

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
