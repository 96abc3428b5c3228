"""Assembling the final answer text from the nodes' texts.

Owns the answer's shape, which is what a reader sees (markdown, as chat models write it): the
opening sentence as its own paragraph, then the points in skeleton order, each as its number,
its title in bold and its text, a blank line apart, then the closing sentence. A failed node keeps
whatever text it produced and notes the gap (an opening or closing that wrote nothing leaves none);
a direct answer is its text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from espalier.planner.plan import Node, Part, Plan, Route
from espalier.planner.prompts import title_colon


def assemble(plan: Plan, texts: Mapping[int, str], failures: Mapping[int, tuple[str, str]]) -> str:
    """texts: node id -> finished text; failures: node id -> (partial text, reason)."""
    if plan.route is Route.DIRECT:
        node_id = plan.nodes[0].id
        if node_id in failures:
            partial, reason = failures[node_id]
            return _join(partial.strip(), f"[answer failed: {reason}]", sep="\n\n")
        return texts.get(node_id, "").strip()
    blocks = []
    for node in plan.nodes:
        position = plan.position(node.id)
        if node.id in failures:
            partial, reason = failures[node.id]
            if node.part is not Part.POINT and not partial.strip():
                continue  # an opening or closing adds no content: one that wrote nothing leaves no gap
            name = f"point {position}" if node.part is Part.POINT else node.part.value
            body = _join(_tidy(partial), f"[{name} failed: {reason}]", sep=" ")
        else:
            body = _tidy(texts.get(node.id, ""))
        if node.part is Part.POINT:
            blocks.append(_join(answer_heading(position, node), body, sep="\n" if _opens_a_block(body) else " "))
        elif body:  # an empty opening or closing leaves no gap in the answer
            blocks.append(body)
    return "\n\n".join(blocks)


def answer_heading(position: int, node: Node) -> str:
    """A point's heading in the answer: "3. **Title**:" (no colon after a title's own punctuation)."""
    title = node.title.strip()
    return f"{position}. **{title}**{title_colon(title)}"


def _opens_a_block(body: str) -> bool:
    """Whether a point's text starts with a code fence or a list item, which markdown needs on a line of
    its own (after the heading, not on it)."""
    return bool(re.match(r"(?:```|~~~|[-*+] |\d+[.)] )", body))


def _tidy(text: str) -> str:
    return text.strip()


def _join(a: str, b: str, *, sep: str) -> str:
    return f"{a}{sep}{b}" if a and b else a or b
