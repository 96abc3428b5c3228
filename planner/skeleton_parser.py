"""Turning a model-written skeleton into plan nodes, robustly.

Owns the tolerant reading of skeleton text. The prompt asks for `3. Title (needs: 1, 2; hard)`;
this parser also reads the usual variants a model writes instead:

- list markers: `1.`, `1)`, `(1)`, `1:`, `1 -`, `Step 1:`, `Point 1.`, `**1.**`, `#`-headings,
  and unnumbered bullets (`-`, `*`, `•`) when no numbered line exists; `1.1` sub-points are ignored;
  SGD's `Node("summary", dependency=[0, 1], difficulty=3)` (0-based) too;
- dependencies: `needs: 1, 2`, `depends on 1 and 2`, `dependencies: [1,2]`, `requires 2`,
  `builds on 1`, `prerequisites: 1`, a bare `[1, 2]`, `none`/`-`/`n/a`;
- difficulty: `easy`/`hard` (and simple/medium/difficult/...) after a separator or in brackets,
  `difficulty: 3` or `3/5` (a score <= 2 is easy), missing -> hard;
- markdown bold/italics, stray text before, between and after the list (ignored), a lone
  annotation line right under its point.

Repairs, all deterministic: duplicate numbers keep their first line, and a repeated title (same
letters and digits, or the words of one among the other's, see _repeats) is merged into its first
occurrence; references to unknown points
or to the point itself are dropped; a reference that would close a cycle is dropped (references to
earlier points are kept first, then later ones in skeleton order); points beyond the cap are cut.
Points are renumbered 1..n in skeleton order. Fewer than `min_nodes` points -> None: the caller
answers directly instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from espalier.planner.plan import DEFAULT_MAX_NODES, MAX_TITLE_CHARS, Difficulty, Node, Plan, Route

_NUMBERED = re.compile(
    r"""^(?:\#{1,6}\s*)?(?:[*_]{1,3})?\s*
        (?:(?:step|point|node|part|item)\s*)?
        (?:\((\d{1,2})\)|(\d{1,2})(?:\s*[.):]|\s+-|\s*[-–—](?=\s))(?![\d])|(?<=[a-z])\s*(\d{1,2})\b)
        (?:[*_]{1,3})?\s*[:.\-–—]?\s*(.*)$""",
    re.IGNORECASE | re.VERBOSE,
)
_BULLET = re.compile(r"^(?:[-*•+]|\u2022)\s+(.*)$")
_SGD_NODE = re.compile(
    r"""Node\(\s*(?:summary\s*=\s*)?["']?(?P<title>.*?)["']?\s*,\s*
        (?:dependency|dependencies|depends_on)\s*=\s*\[(?P<deps>[^\]]*)\]\s*
        (?:,\s*difficulty\s*=\s*["']?(?P<diff>\w+)["']?)?\s*\)""",
    re.IGNORECASE | re.VERBOSE,
)

_NUMLIST = r"(?:(?:points?|steps?|nodes?|\#)?\s*\d{1,2}(?:\s*(?:,|and|&|/|;(?=\s*\d))\s*)?)+"
_NONE = r"(?:none|nothing|no(?:ne)?\b|n/?a|-|–|—|\[\s*\])"
_DEPS = re.compile(
    rf"""(?:needs?|depends?\s+on|dependenc(?:y|ies)|requires?|builds?\s+on|prerequisites?|after\s+points?|uses?\s+points?)
         \s*[:=]?\s*(?P<body>\[\s*{_NUMLIST}\s*\]|{_NUMLIST}|{_NONE})
         (?=\s*(?:[)\];|,.\-–—]|$|easy|hard|simple|difficult|medium|difficulty|\|))""",
    re.IGNORECASE | re.VERBOSE,
)
_BARE_LIST = re.compile(r"\[\s*(?P<body>\d{1,2}(?:\s*,\s*\d{1,2})*)?\s*\]")
_DIFF_SCORE = re.compile(
    r"difficulty\s*(?:score)?\s*[:=]?\s*(?P<score>\d+(?:\.\d+)?)(?:\s*/\s*\d+)?", re.IGNORECASE
)
_DIFF_NAMED = re.compile(r"difficulty\s*[:=]?\s*(?P<word>[a-z]+)", re.IGNORECASE)
_DIFF_WORDS: dict[str, Difficulty] = {
    "easy": Difficulty.EASY,
    "simple": Difficulty.EASY,
    "trivial": Difficulty.EASY,
    "low": Difficulty.EASY,
    "hard": Difficulty.HARD,
    "difficult": Difficulty.HARD,
    "complex": Difficulty.HARD,
    "high": Difficulty.HARD,
    "medium": Difficulty.HARD,
    "moderate": Difficulty.HARD,
}
# A bare difficulty word counts only after a separator or inside brackets, so a title like
# "Easy recipes to start with" keeps its word.
_DIFF_WORD = re.compile(
    r"(?:(?<=[(\[|;,])|(?<=[(\[|;,]\s)|(?<=\s[-–—]\s)|(?<=\s[-–—]))\s*(?P<word>easy|simple|trivial|hard|difficult|"
    r"complex|medium|moderate)\s*(?=[)\]|;,.]|$)",
    re.IGNORECASE,
)
_ANNOTATION_ONLY = re.compile(
    r"^\s*[(\[]?\s*(?:needs?|depends?\s+on|dependenc|difficulty|requires?)", re.IGNORECASE
)
_EMPTY_GROUPS = re.compile(r"\(\s*[;,|:.\s-]*\s*\)|\[\s*[;,|:.\s-]*\s*\]")
_BOLD_LEAD = re.compile(r"^\s*\*\*([^*]+?)\s*(?:\*\*\s*[:.\-–—]|[:.\-–—]\s*\*\*)\s*\w")
_EDGE_JUNK = " \t|;,:-–—*_\"'`"


@dataclass(slots=True)
class _Item:
    number: int
    title: str
    refs: list[int] = field(default_factory=list)
    difficulty: Difficulty | None = None
    had_refs: bool = False


def _numbers(body: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d{1,2}", body)]


def _difficulty_from_score(score: str) -> Difficulty:
    return Difficulty.EASY if float(score) <= 2 else Difficulty.HARD


def _read_annotations(text: str) -> tuple[str, list[int], bool, Difficulty | None]:
    """Split a point line (without its list marker) into title, references and difficulty."""
    refs: list[int] = []
    had_refs = False
    difficulty: Difficulty | None = None

    def take_deps(m: re.Match[str]) -> str:
        nonlocal had_refs
        had_refs = True
        refs.extend(_numbers(m.group("body")))
        return " "

    def take_score(m: re.Match[str]) -> str:
        nonlocal difficulty
        difficulty = _difficulty_from_score(m.group("score"))
        return " "

    def take_named(m: re.Match[str]) -> str:
        nonlocal difficulty
        word = m.group("word").lower()
        if word not in _DIFF_WORDS:
            return m.group(0)
        difficulty = _DIFF_WORDS[word]
        return " "

    text = _DEPS.sub(take_deps, text)
    text = _DIFF_SCORE.sub(take_score, text)
    text = _DIFF_NAMED.sub(take_named, text)
    text = _DIFF_WORD.sub(take_named, text)
    if not had_refs:
        m = _BARE_LIST.search(text)
        if m:
            text = text[: m.start()] + " " + text[m.end() :]
            had_refs = True
            refs.extend(_numbers(m.group("body") or ""))
    return _clean_title(text), refs, had_refs, difficulty


def _clean_title(text: str) -> str:
    bold = _BOLD_LEAD.match(text)
    if bold:  # "**Title**: a sentence explaining it" -> the bold part is the title
        text = bold.group(1)
    text = text.replace("**", "").replace("__", "")
    previous = None
    while previous != text:
        previous = text
        text = _EMPTY_GROUPS.sub(" ", text)
        text = text.strip(_EDGE_JUNK)
    # a parenthesis left open by a truncated annotation: "Title (needs: 1"
    if text.count("(") > text.count(")"):
        text = text[: text.rfind("(")].strip(_EDGE_JUNK)
    text = " ".join(text.split())
    if len(text) > MAX_TITLE_CHARS:
        text = text[:MAX_TITLE_CHARS].rsplit(" ", 1)[0]
    return text


def _strip_markup(line: str) -> str:
    line = line.strip()
    line = re.sub(r"^>\s*", "", line)
    return line


def _sgd_items(text: str) -> list[_Item]:
    items: list[_Item] = []
    for index, m in enumerate(_SGD_NODE.finditer(text)):
        diff = m.group("diff")
        difficulty = None
        if diff:
            difficulty = _difficulty_from_score(diff) if diff.isdigit() else _DIFF_WORDS.get(diff.lower())
        # SGD numbers nodes from 0; we number from 1
        items.append(
            _Item(
                index + 1,
                _clean_title(m.group("title")),
                [n + 1 for n in _numbers(m.group("deps"))],
                difficulty,
                True,
            )
        )
    return items


def _line_items(text: str) -> list[_Item]:
    numbered: list[_Item] = []
    bullets: list[_Item] = []
    last: _Item | None = None
    for raw in text.splitlines():
        line = _strip_markup(raw)
        if not line:
            continue
        m = _NUMBERED.match(line)
        if m and (m.group(1) or m.group(2) or m.group(3)):
            number = int(m.group(1) or m.group(2) or m.group(3))
            title, refs, had_refs, difficulty = _read_annotations(m.group(4))
            last = _Item(number, title, refs, difficulty, had_refs)
            numbered.append(last)
            continue
        b = _BULLET.match(line)
        if b:
            title, refs, had_refs, difficulty = _read_annotations(b.group(1))
            last = _Item(len(bullets) + 1, title, refs, difficulty, had_refs)
            bullets.append(last)
            continue
        if last is not None and _ANNOTATION_ONLY.match(line):
            # "   (needs: 1; easy)" on its own line, right under the point it belongs to
            _, refs, had_refs, difficulty = _read_annotations(line)
            if had_refs and not last.had_refs:
                last.refs, last.had_refs = refs, True
            if difficulty is not None and last.difficulty is None:
                last.difficulty = difficulty
            continue
        last = None  # stray text: ignored, and it ends the annotation context
    return numbered if numbered else bullets


def parse_skeleton(
    text: str, *, max_nodes: int = DEFAULT_MAX_NODES, min_nodes: int = 2, graph: bool = True
) -> tuple[Node, ...] | None:
    """Nodes numbered 1..n in skeleton order, or None when fewer than min_nodes points are found.

    graph=False reads titles only: no dependencies, every point hard (a parallel plan).
    """
    items = _sgd_items(text) if "Node(" in text else []
    if len(items) < min_nodes:
        items = _line_items(text)
    if items and items[0].number == 0:  # a list numbered from 0: shift everything
        for it in items:
            it.number += 1
            it.refs = [r + 1 for r in it.refs]

    kept: list[_Item] = []
    seen: set[int] = set()
    alias: dict[int, int] = {}  # number of a repeated point -> number of its first occurrence
    for it in items:
        if it.number in seen or not it.title:
            continue
        seen.add(it.number)
        first = next((k for k in kept if _repeats(it.title, k.title)), None)
        if first is not None:
            alias[it.number] = first.number
            continue
        kept.append(it)
    kept = kept[:max_nodes]
    if len(kept) < min_nodes:
        return None

    new_id = {it.number: i for i, it in enumerate(kept, 1)}
    new_id.update({dup: new_id[first] for dup, first in alias.items() if first in new_id})
    if not graph:
        return tuple(Node(new_id[it.number], it.title) for it in kept)

    deps: dict[int, list[int]] = {i: [] for i in new_id.values()}
    pending_forward: list[tuple[int, int]] = []
    for it in kept:
        me = new_id[it.number]
        for ref in it.refs:
            target = new_id.get(ref)
            if target is None or target == me or target in deps[me]:
                continue  # unknown, self or repeated reference
            if target < me:
                deps[me].append(target)  # earlier points cannot close a cycle among themselves
            else:
                pending_forward.append((me, target))
    for me, target in pending_forward:  # in skeleton order: deterministic
        if target not in deps[me] and not _reaches(deps, target, me):
            deps[me].append(target)
    return tuple(
        Node(
            new_id[it.number],
            it.title,
            tuple(sorted(deps[new_id[it.number]])),
            it.difficulty or Difficulty.HARD,
        )
        for it in kept
    )


def _title_key(title: str) -> str:
    return "".join(ch for ch in title.casefold() if ch.isalnum())


_STOPWORDS = frozenset(["a", "an", "the", "and", "or", "of", "to", "in", "on", "for", "with", "by", "at", "from",
                        "is", "are", "be", "can", "your", "you", "their", "they", "it", "its", "as", "into", "how",
                        "why", "what"])


def _content_words(title: str) -> frozenset[str]:
    words = re.findall(r"[a-z0-9]+", title.casefold())
    return frozenset(w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words if w not in _STOPWORDS)


def _repeats(title: str, earlier: str) -> bool:
    """Whether a point says again what an earlier one said: the same letters and digits, or the words of
    one (two or more, small words and plurals aside) all among the other's ("Avoiding eye contact" and
    "Avoiding direct eye contact"). A reader saw such pairs written as two near-identical points."""
    if _title_key(title) == _title_key(earlier):
        return True
    mine, theirs = _content_words(title), _content_words(earlier)
    smaller = min(len(mine), len(theirs))
    return smaller >= 2 and (mine <= theirs or theirs <= mine)


def _reaches(deps: dict[int, list[int]], start: int, goal: int) -> bool:
    """Whether `start` depends, directly or not, on `goal` (adding goal -> start would close a cycle)."""
    stack, seen = [start], set()
    while stack:
        current = stack.pop()
        if current == goal:
            return True
        if current in seen:
            continue
        seen.add(current)
        stack.extend(deps[current])
    return False


class OutlineReader:
    """Reads a skeleton while it is written: after each complete line, the points that became known.

    Feed it the text as it arrives (starting with the pre-fill, "1."); `feed` returns the new points in
    skeleton order, numbered as the whole skeleton will number them. Each complete prefix of the text
    is parsed by the same rules as parse_skeleton, so a point once reported keeps its number and title
    (a later line can only repeat it, which merges the later line, or add points). A complete line that
    adds no point is remembered in `skipped` with the reason, never an error. Dependencies are those of
    the text so far, cut to max_depth stages as the final plan's are. Nothing is reported before
    min_nodes points are known: fewer make no plan (the answer goes direct), and a point reported
    would then vanish.
    """

    def __init__(self, *, graph: bool, max_nodes: int = DEFAULT_MAX_NODES, min_nodes: int = 1,
                 max_depth: int = 64) -> None:
        self._graph = graph
        self._max_nodes = max_nodes
        self._min_nodes = min_nodes
        self._max_depth = max_depth
        self._text = ""
        self._lines = 0  # complete lines read
        self._parsed: tuple[Node, ...] = ()  # the points of the complete lines
        self.known: list[Node] = []
        self.skipped: list[tuple[str, str]] = []  # (line, why it added no point)

    def feed(self, text: str) -> list[Node]:
        self._text += text
        lines = self._text.split("\n")[:-1]  # the last piece is unfinished
        nodes: tuple[Node, ...] = self._parsed
        for i in range(self._lines, len(lines)):  # line by line: a line that adds no point is named
            parsed = parse_skeleton("\n".join(lines[:i + 1]), max_nodes=self._max_nodes, min_nodes=1,
                                    graph=self._graph) or ()
            line = lines[i]
            if len(parsed) == len(nodes) and line.strip() and not _ANNOTATION_ONLY.match(line):
                self.skipped.append((line, _why_skipped(line, self._max_nodes, len(nodes))))
            nodes = parsed
        self._lines = len(lines)
        self._parsed = nodes
        if len(nodes) < self._min_nodes:
            return []
        # dependencies cut to max_depth stages exactly as the final plan's are
        cut = Plan(nodes, Route.GRAPH).with_max_depth(self._max_depth).nodes
        new = list(cut[len(self.known):])
        self.known.extend(new)
        return new


def _why_skipped(line: str, max_nodes: int, known: int) -> str:
    if parse_skeleton(line, min_nodes=1) is None:
        return "not a numbered point"
    if known >= max_nodes:
        return f"beyond the {max_nodes} points a plan may have"
    return "repeats an earlier point"
