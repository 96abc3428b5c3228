"""Skeleton parsing: a table of real-looking (and malformed) skeletons and the graphs they give."""

from __future__ import annotations

import pytest

from espalier.planner.plan import Difficulty, Plan, Route
from espalier.planner.skeleton_parser import parse_skeleton

E, H = Difficulty.EASY, Difficulty.HARD

# (name, text, expected [(title, deps, difficulty)] or None)
CASES: list[tuple[str, str, list[tuple[str, tuple[int, ...], Difficulty]] | None]] = [
    (
        "prompt notation",
        (
            "1. Get comfortable shoes (needs: none; easy)\n2. Start with short runs (needs: none; easy)\n"
            "3. Follow a weekly plan (needs: 2; hard)\n4. Rest and avoid injuries (needs: 2, 3; hard)"
        ),
        [
            ("Get comfortable shoes", (), E),
            ("Start with short runs", (), E),
            ("Follow a weekly plan", (2,), H),
            ("Rest and avoid injuries", (2, 3), H),
        ],
    ),
    (
        "plain SoT list, stray text around",
        (
            "Sure! Here is the skeleton:\n1. Set clear goals\n2. Prioritize tasks\n3. Avoid multitasking\n\n"
            "I hope this helps."
        ),
        [("Set clear goals", (), H), ("Prioritize tasks", (), H), ("Avoid multitasking", (), H)],
    ),
    (
        "parenthesis markers and bare brackets",
        "1) Introduction\n2) Main causes [1]\n3) Effects on health [1, 2] (easy)",
        [("Introduction", (), H), ("Main causes", (1,), H), ("Effects on health", (1, 2), E)],
    ),
    (
        "markdown bold, depends on, difficulty scores",
        (
            "**1.** **Define your goals** - depends on: none - difficulty: 2\n"
            "**2.** Track your time - depends on 1 - difficulty: 4/5"
        ),
        [("Define your goals", (), E), ("Track your time", (1,), H)],
    ),
    (
        "step markers and 'and'",
        "Step 1: Gather data\nStep 2: Clean it (depends on 1)\nStep 3: Analyze results (depends on 1 and 2)",
        [("Gather data", (), H), ("Clean it", (1,), H), ("Analyze results", (1, 2), H)],
    ),
    (
        "bullets when nothing is numbered",
        "- Apples\n- Pears | needs: 1 | easy\n* Plums",
        [("Apples", (), H), ("Pears", (1,), E), ("Plums", (), H)],
    ),
    (
        "cycle broken deterministically, unknown and self references dropped",
        "1. Alpha (needs: 2)\n2. Beta (needs: 1)\n3. Gamma (needs: 3, 9)",
        [("Alpha", (), H), ("Beta", (1,), H), ("Gamma", (), H)],
    ),
    (
        "forward reference kept when it makes no cycle",
        "1. Summary of findings (needs: 3)\n2. Method (needs: none)\n3. Results (needs: 2)",
        [("Summary of findings", (3,), H), ("Method", (), H), ("Results", (2,), H)],
    ),
    (
        "three-node cycle: the closing forward edge goes",
        "1. A (needs: 3)\n2. B (needs: 1)\n3. C (needs: 2)",
        [("A", (), H), ("B", (1,), H), ("C", (2,), H)],
    ),
    (
        "duplicate numbers keep the first; bold title with explanation",
        "1. Sleep well\n1. Sleep well again\n2. Eat well\n3. **Exercise**: move every day for 30 minutes",
        [("Sleep well", (), H), ("Eat well", (), H), ("Exercise", (), H)],
    ),
    (
        "SGD Node notation, 0-based",
        (
            "Node('Background', dependency=[], difficulty=1)\n"
            "Node('Key events', dependency=[0], difficulty=4)\n"
            'Node("Legacy", dependency=[0, 1], difficulty=2)'
        ),
        [("Background", (), E), ("Key events", (1,), H), ("Legacy", (1, 2), E)],
    ),
    (
        "list numbered from 0",
        "0. Zero\n1. One (needs: 0)\n2. Two",
        [("Zero", (), H), ("One", (1,), H), ("Two", (), H)],
    ),
    (
        "difficulty words only in annotation position",
        "1. Easy recipes to start with\n2. Hard cheese storage (easy)\n3. Budget meals - hard",
        [("Easy recipes to start with", (), H), ("Hard cheese storage", (), E), ("Budget meals", (), H)],
    ),
    (
        "annotation on the next line",
        "1. Choose a topic\n   (needs: none; easy)\n2. Write a draft\n   (needs: 1; hard)",
        [("Choose a topic", (), E), ("Write a draft", (1,), H)],
    ),
    (
        "truncated annotation",
        "1. Alpha (needs: none; hard)\n2. Beta (needs: 1",
        [("Alpha", (), H), ("Beta", (1,), H)],
    ),
    (
        "sub-points ignored",
        "1.1 detail\n1. Real point\n2. Second point\n2.1 detail",
        [("Real point", (), H), ("Second point", (), H)],
    ),
    (
        "gaps in numbering are renumbered",
        "1. First\n3. Third (needs: 1)\n7. Seventh (needs: 3)",
        [("First", (), H), ("Third", (1,), H), ("Seventh", (2,), H)],
    ),
    (
        "headings",
        "### 1. Causes\n### 2. Consequences (needs: 1)",
        [("Causes", (), H), ("Consequences", (1,), H)],
    ),
    (
        "'requires 2 eggs' is a title, not a dependency",
        "1. Buy eggs\n2. Requires 2 eggs and flour",
        [("Buy eggs", (), H), ("Requires 2 eggs and flour", (), H)],
    ),
    (
        "repeated titles merge into the first; references follow",
        "1. Exercise\n2. Sleep (needs: 1)\n3. exercise!\n4. Diet (needs: 3)",
        [("Exercise", (), H), ("Sleep", (1,), H), ("Diet", (1,), H)],
    ),
    (
        "the same line four times -> fall back",
        "1. I love you\n2. I love you\n3. I love you\n4. I love you",
        None,
    ),
    ("one point only -> fall back", "1. The answer is 42", None),
    ("no list -> fall back", "Sorry, I can't help with that.", None),
    ("empty -> fall back", "", None),
    ("only titles that are empty -> fall back", "1. (needs: none)\n2. [1]", None),
]


@pytest.mark.parametrize("name,text,expected", CASES, ids=[c[0] for c in CASES])
def test_parse_table(
    name: str, text: str, expected: list[tuple[str, tuple[int, ...], Difficulty]] | None
) -> None:
    nodes = parse_skeleton(text)
    if expected is None:
        assert nodes is None
        return
    assert nodes is not None
    got = [(n.title, n.depends_on, n.difficulty) for n in nodes]
    assert got == expected
    assert [n.id for n in nodes] == list(range(1, len(nodes) + 1))
    Plan.validated(nodes, Route.GRAPH)  # every parsed graph is valid


def test_cap_truncates_and_drops_references_to_cut_points() -> None:
    text = "\n".join(f"{i}. Point {i}" + (" (needs: 12)" if i == 3 else "") for i in range(1, 15))
    nodes = parse_skeleton(text, max_nodes=10)
    assert nodes is not None and len(nodes) == 10
    assert nodes[-1].title == "Point 10"
    assert nodes[2].depends_on == ()
    assert len(parse_skeleton(text, max_nodes=4) or ()) == 4


def test_parallel_reading_ignores_annotations() -> None:
    nodes = parse_skeleton("1. A (needs: none; easy)\n2. B (needs: 1; easy)", graph=False)
    assert nodes is not None
    assert [(n.title, n.depends_on, n.difficulty) for n in nodes] == [("A", (), H), ("B", (), H)]


def test_min_nodes() -> None:
    assert parse_skeleton("1. A\n2. B", min_nodes=3) is None
    assert parse_skeleton("1. A", min_nodes=1) is not None


def test_deterministic() -> None:
    text = "1. A (needs: 3)\n2. B (needs: 1, 3)\n3. C (needs: 2)\n4. D (needs: 4, 1)"
    first = parse_skeleton(text)
    assert all(parse_skeleton(text) == first for _ in range(5))
    assert first is not None
    Plan.validated(first, Route.GRAPH)


def test_a_point_that_repeats_an_earlier_one_in_other_words_is_merged_into_it() -> None:
    text = ("1. Avoiding eye contact\n2. Using filler words\n3. Avoiding direct eye contact (needs: 2)\n"
            "4. Python's syntax\n5. JavaScript's syntax\n6. Cost\n7. Cost of living (needs: 3)")
    nodes = parse_skeleton(text, graph=True)
    assert nodes is not None
    # 3 says what 1 said; 4 and 5 differ in a word; a one-word title is never taken for a repeat
    assert [n.title for n in nodes] == ["Avoiding eye contact", "Using filler words", "Python's syntax",
                                        "JavaScript's syntax", "Cost", "Cost of living"]
    assert nodes[5].depends_on == (1,)  # a reference to the repeat points at its first occurrence


def test_the_outline_reader_reports_each_point_once_its_line_is_complete() -> None:
    from espalier.planner.skeleton_parser import OutlineReader

    reader = OutlineReader(graph=True, max_depth=2)
    assert reader.feed("1.") == [] and reader.feed(" Set goals (easy)") == []  # the line is not complete
    (first,) = reader.feed("\n2. Plan the")
    assert (first.id, first.title, first.difficulty) == (1, "Set goals", Difficulty.EASY)
    assert reader.feed(" week (needs: 1)") == []
    second, third = reader.feed("\nSome chatter the parser cannot use\n3. Review (needs: 2)\n4. Set goals again\n")
    assert (second.id, second.title, second.depends_on) == (2, "Plan the week", (1,))
    # 1 -> 2 is two stages already: 3's need of 2 is cut, as the final plan cuts it (max_depth 2)
    assert (third.id, third.depends_on) == (3, ()) and len(reader.known) == 3
    assert reader.skipped == [("Some chatter the parser cannot use", "not a numbered point"),
                              ("4. Set goals again", "repeats an earlier point")]
    (fifth,) = reader.feed("5. Celebrate (needs: 3)\n")
    assert (fifth.id, fifth.depends_on) == (4, (3,))  # numbered as the whole skeleton numbers it
    # the reader's points are the final parse's points
    final = parse_skeleton("1. Set goals (easy)\n2. Plan the week (needs: 1)\nSome chatter the parser cannot use\n"
                           "3. Review (needs: 2)\n4. Set goals again\n5. Celebrate (needs: 3)\n", graph=True)
    assert final is not None and [n.title for n in final] == [n.title for n in reader.known]
