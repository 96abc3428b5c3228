"""Assembling the final answer text from the points' texts.

Owns the answer's shape: points in skeleton order, each as its heading (number and title) and its
text; a failed point keeps whatever text it produced and notes the gap; a direct answer is its text.
"""

from __future__ import annotations

from collections.abc import Mapping

from planner.plan import Plan, Route
from planner.prompts import heading


def assemble(plan: Plan, texts: Mapping[int, str], failures: Mapping[int, tuple[str, str]]) -> str:
    """texts: node id -> finished text; failures: node id -> (partial text, reason)."""
    if plan.route is Route.DIRECT:
        node_id = plan.nodes[0].id
        if node_id in failures:
            partial, reason = failures[node_id]
            return _join(partial.strip(), f"[answer failed: {reason}]", sep="\n\n")
        return texts.get(node_id, "").strip()
    lines = []
    for position, node in enumerate(plan.nodes, 1):
        if node.id in failures:
            partial, reason = failures[node.id]
            body = _join(_tidy(partial), f"[point {position} failed: {reason}]", sep=" ")
        else:
            body = _tidy(texts.get(node.id, ""))
        lines.append(_join(heading(position, node.title), body, sep=" "))
    return "\n".join(lines)


def _tidy(text: str) -> str:
    return text.strip()


def _join(a: str, b: str, *, sep: str) -> str:
    return f"{a}{sep}{b}" if a and b else a or b
