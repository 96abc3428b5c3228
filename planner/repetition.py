"""Telling when a greedy decode has fallen into a loop, so the part can end there.

Owns `ends_in_loop(text)`. Small models decoding greedily sometimes repeat one stretch of text until
the token budget runs out: a list of filler words written over and over, or "9. They use phrases
like ..." repeated as items 9, 10, 11. Read by a judge, such an answer loses however good its start
was, and it costs the whole budget in time. The check is on words, with a line's list number folded
(it differs from copy to copy; other digits are kept, so a table of figures is not a loop), and asks
for a stretch repeated back to back at the very end of the text:
  - a unit of LONG_UNIT_WORDS words or more, twice (one whole sentence or list item written again);
  - a shorter unit, at least MIN_REPEATS times and over at least MIN_LOOP_WORDS words in all.
Prose and code seldom repeat a stretch of ten words back to back; a code block's closing braces or a
table's rules are short units that stay well under the word count.
"""

from __future__ import annotations

import re

LONG_UNIT_WORDS = 10
MIN_REPEATS = 3
MIN_LOOP_WORDS = 24
MAX_UNIT_WORDS = 80  # a longer unit repeated is not worth the extra comparison per token
# The check reads only the end of the text (runs on every piece of every sequence): two copies of the
# longest unit fit in it with room to spare.
TAIL_CHARS = 4000

_LIST_NUMBER = re.compile(r"^(\s*)\d+([.)])", re.MULTILINE)


def ends_in_loop(text: str) -> bool:
    """Whether `text` ends with a stretch of words repeated back to back (see the module docstring)."""
    words = _LIST_NUMBER.sub(r"\1#\2", text[-TAIL_CHARS:]).split()
    n = len(words)
    if n < 2:
        return False
    # A unit that repeats at the end has its last word again one unit back: only those lengths can match.
    units = [n - 1 - i for i in range(max(0, n - 1 - MAX_UNIT_WORDS), n - 1) if words[i] == words[-1]]
    for unit in reversed(units):  # shortest first
        repeats = _tail_repeats(words, unit)
        if repeats >= 2 and unit >= LONG_UNIT_WORDS:
            return True
        if repeats >= MIN_REPEATS and repeats * unit >= MIN_LOOP_WORDS:
            return True
    return False


def _tail_repeats(words: list[str], unit: int) -> int:
    """How many times the last `unit` words occur back to back at the end of `words`."""
    last = words[-unit:]
    repeats = 1
    end = len(words) - unit
    while end >= unit and words[end - unit:end] == last:
        repeats += 1
        end -= unit
    return repeats
