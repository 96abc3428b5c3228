"""Sentence boundaries in a prompt that is still being typed (the Stream RPC's incremental prefill).

Owns one question: how much of the text received so far is made of finished sentences, so that the
engine can prefill them while the rest is still arriving. Pure and dependency-free.

A boundary is the offset right after a sentence's last character (its punctuation and any closing
quotes or brackets); the whitespace that follows belongs to the next segment, which is how BPE
tokenizers want it (" The" is one token). A boundary is only reported once later text proves it:

- `.` `!` `?` `...` end a sentence when whitespace and then a word that does not start in lower case
  follow ("Hello world." alone may still become "Hello world.com"), unless the word before is an
  abbreviation (Mr., e.g., Fig. 3), an initial (J. R. R. Tolkien) or a list marker ("1." at a line start);
  `。！？` need no space, only a next character;
- a blank line ends whatever precedes it; a list item, option ("A) ...") or heading ends at its newline,
  and so does the line before one, or before a code fence;
- nothing inside a fenced code block or an inline `code span` splits; a closing fence ends a segment.

The heuristics have known misses: "plan B. Then" reads as an initial (no split), "the U.S. Army" splits
after "U.S.", and a list item wrapped onto a second line splits at the wrap.

Every decision looks only at text up to the point that decided it, and an undecided candidate is not a
boundary, so boundaries never move or disappear as text is appended: `complete_prefix` never shrinks
and the sentences it covers never change (tests/unit/planner/test_planner_sentences.py checks this
over every prefix of many texts).
"""

from __future__ import annotations

import re

__all__ = ["complete_prefix", "first_sentence_end", "split_sentences"]

# Scripts without spaces between sentences: the mark itself is the evidence, a next character only
# shows that no closing quote is still coming.
_SPACELESS_ENDERS = "。！？｡．।॥؟۔"
_ENDERS = ".!?…‼⁇⁈⁉" + _SPACELESS_ENDERS
# `*` and `_` close markdown emphasis ("**Stop.** Then"); they open it again on the other side.
_CLOSERS = "\"'”’»)]}」』）】〉》›*_"
_OPENERS = "\"'“‘«([{「『（【〈《‹¿¡*_"

_TERMINATOR = re.compile(f"[{re.escape(_ENDERS)}]+[{re.escape(_CLOSERS)}]*")
# Whitespace, then the opening quotes or brackets of the next word ("Stop. \"Why?\""); the quotes must
# touch the word, so that a stray quote never makes the decision wait past a line that has ended.
_LEAD = re.compile(f"\\s*[{re.escape(_OPENERS)}]*")
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")

# A line that is a list item, a multiple-choice option or a heading ends its segment at its newline.
_ITEM = re.compile(r"[ \t]*(?:[-*+•◦‣▪·][ \t]|\d{1,3}[.)][ \t]|\(\d{1,3}\)[ \t]|\(?[A-Za-z][.)][ \t]|#{1,6}[ \t])")
# The "1" or "a" of a list marker, when it is all the line holds before the terminator.
_MARKER_BODY = re.compile(r"[ \t]*(?:\d{1,3}|\(?[A-Za-z])")
_FENCE = re.compile(r"[ \t]{0,3}(`{3,}|~{3,})")

# Abbreviations (lower case, without the final dot) after which a sentence does not end even when a
# capitalised word follows: titles and Latin glue ("Dr. Who", "e.g. Paris", "Roe v. Wade").
_NEVER_FINAL = frozenset({
    "mr", "mrs", "ms", "mx", "dr", "prof", "rev", "hon", "st", "mt", "ft", "gen", "col", "capt", "lt",
    "sgt", "cmdr", "adm", "gov", "sen", "rep", "pres", "messrs", "mme", "mlle", "e.g", "i.e", "cf", "vs",
    "v", "viz", "approx", "incl", "esp", "resp", "w.r.t",
})
# Abbreviations that take a number ("Fig. 3", "No. 5", "pp. 10"); before a word they may end a sentence
# ("No. I won't.").
_BEFORE_NUMBER = frozenset({
    "no", "nos", "nr", "fig", "figs", "vol", "vols", "p", "pp", "ch", "chap", "sec", "sect", "eq", "eqs",
    "art", "para", "ex", "op", "tab", "ref", "ca", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec",
})
_TOKEN_CAP = 32  # no abbreviation is this long; stops the backwards scan on long unbroken strings


def complete_prefix(text: str) -> int:
    """Length of the longest prefix of `text` that ends at a proven sentence boundary; 0 if none.

    The prefix ends right after the sentence's punctuation and closing quotes or brackets, without the
    whitespace that follows. It never shrinks as text is appended.
    """
    ends = _boundaries(text)
    return ends[-1] if ends else 0


def first_sentence_end(text: str) -> int:
    """Length of the first proven sentence of `text` (as complete_prefix measures it); 0 if none yet."""
    ends = _boundaries(text)
    return ends[0] if ends else 0


def split_sentences(text: str) -> list[str]:
    """The complete sentences of `text`, then the unfinished tail if there is one.

    Each piece after the first starts with the whitespace that preceded it, so `"".join(...) == text`.
    """
    pieces: list[str] = []
    start = 0
    for end in _boundaries(text):
        pieces.append(text[start:end])
        start = end
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def _boundaries(text: str) -> list[int]:
    found: set[int] = set()
    fence = ""  # the opening run ("```", "~~~~") of the code block we are in, "" outside one
    pos, n = 0, len(text)
    while pos < n:
        newline = text.find("\n", pos)
        complete = newline >= 0
        end = newline if complete else n
        line = text[pos:end]
        if fence:
            if complete and _closes(line, fence):
                found.add(pos + len(line.rstrip()))
                fence = ""
            pos = end + 1
            continue
        opener = _FENCE.match(line)
        if opener is None:
            _sentence_ends(text, pos, end, found)
        elif complete and not (opener.group(1)[0] == "`" and "`" in line[opener.end():]):
            # An info string with a backtick makes it inline code, not a fence (CommonMark).
            fence = opener.group(1)
        ends_line = complete and not fence and line.strip()
        if ends_line and (_ITEM.match(line) or _starts_new_block(text, newline + 1)):
            found.add(pos + len(line.rstrip()))
        pos = end + 1
    return sorted(found)


def _closes(line: str, fence: str) -> bool:
    body = line.strip()
    return len(body) >= len(fence) and body == fence[0] * len(body) and len(line) - len(line.lstrip()) <= 3


def _starts_new_block(text: str, start: int) -> bool:
    """Whether the line starting at `start` is blank, a list item or a code fence, so that the line
    before it has ended. A "no" may turn into a "yes" as the line grows ("1" -> "1. "), which is safe:
    while a line is still that short it holds no boundary that this one would have to precede."""
    newline = text.find("\n", start)
    line = text[start:] if newline < 0 else text[start:newline]
    if newline >= 0 and not line.strip():
        return True
    return bool(_ITEM.match(line) or _FENCE.match(line))


def _code_spans(line: str) -> list[tuple[int, int]]:
    """Inline code spans of one line: a run of backticks up to the next run of the same length, or to
    the end of the line while unclosed (so a terminator after an unclosed backtick never splits)."""
    spans: list[tuple[int, int]] = []
    opened, width = -1, 0
    for run in re.finditer(r"`+", line):
        if opened < 0:
            opened, width = run.start(), len(run.group())
        elif len(run.group()) == width:
            spans.append((opened, run.end()))
            opened = -1
    if opened >= 0:
        spans.append((opened, len(line)))
    return spans


def _sentence_ends(text: str, line_start: int, line_end: int, found: set[int]) -> None:
    spans: list[tuple[int, int]] | None = None
    for m in _TERMINATOR.finditer(text, line_start, line_end):
        if spans is None:
            spans = _code_spans(text[line_start:line_end])
        offset = m.start() - line_start
        if any(a <= offset < b for a, b in spans):
            continue
        if _ends_sentence(text, line_start, m.start(), m.end()):
            found.add(m.end())


def _ends_sentence(text: str, line_start: int, start: int, end: int) -> bool | None:
    """Whether the terminator text[start:end] (with its closers) ends a sentence; None while the text
    after it cannot tell yet."""
    if end == len(text):
        return None  # the run or its closing quotes may go on
    run = text[start:end]
    if any(c in _SPACELESS_ENDERS for c in run):
        return True
    if not text[end].isspace():
        return False  # 3.14, example.com, main.py, v1.2.3, Hi!x
    lead = _LEAD.match(text, end)
    assert lead is not None  # the pattern matches the empty string
    word = lead.end()
    if _BLANK_LINE.search(text, end, word):
        return True  # a paragraph break ends it whatever follows
    if word == len(text):
        return None
    first = text[word]
    if first.islower():
        return False  # "Wait... what?", "e.g. the", '"Where?" she asked'
    if run != ".":
        return True
    if _MARKER_BODY.fullmatch(text, line_start, start):
        return False  # "1. First item", "A. Paris"
    token = _token_before(text, line_start, start)
    key = token.lower()
    if key in _NEVER_FINAL or (key in _BEFORE_NUMBER and first.isdigit()):
        return False
    # A single capital is an initial ("J. R. R. Tolkien"); "plan B. Then" is the price.
    return not (len(token) == 1 and token.isupper() and first.isupper())


def _token_before(text: str, line_start: int, start: int) -> str:
    i = start
    while i > line_start and start - i < _TOKEN_CAP and not text[i - 1].isspace():
        i -= 1
    return text[i:start].lstrip(_OPENERS)
