"""The live terminal view of an answer being built: every point fills in as it is decoded.

Owns the answer's state as the events arrive (plan, points, their text and status, the final
summary) and its rendering to lines. Redrawing is done by rewriting the block in place with ANSI
codes when the output is a terminal; otherwise only the finished answer is printed. Pure apart from
the stream it writes to, so it is tested with a StringIO.
"""

from __future__ import annotations

import re
import shutil
import textwrap
import time
from dataclasses import dataclass, field
from typing import TextIO

from espalier.v1 import espalier_pb2 as pb

ROUTES = {pb.ROUTE_DIRECT: "direct", pb.ROUTE_PARALLEL: "parallel points", pb.ROUTE_GRAPH: "point graph",
          pb.ROUTE_UNSPECIFIED: "?"}
ROLES = {pb.MODEL_ROLE_LARGE: "large", pb.MODEL_ROLE_SMALL: "small", pb.MODEL_ROLE_UNSPECIFIED: "?"}
SPINNER = "|/-\\"


@dataclass
class PointState:
    node_id: int
    title: str
    depends_on: tuple[int, ...] = ()
    number: int = 0  # the point's number in the answer; 0 for the opening and closing, which have none
    role: str = ""
    status: str = "waiting"  # waiting | writing | done | failed
    text: str = ""
    tokens: int = 0


@dataclass
class AnswerState:
    """What the events said so far."""

    started: float = field(default_factory=time.monotonic)
    route: str = ""
    reason: str = ""
    points: dict[int, PointState] = field(default_factory=dict)
    done: pb.AnswerDone | None = None
    progress: str = ""

    def apply(self, event: pb.AnswerEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "node_planned":  # the outline grows as the skeleton is written
            n = event.node_planned.node
            self.points[n.id] = PointState(n.id, n.title, tuple(n.depends_on), event.node_planned.position)
        elif kind == "plan_ready":
            self.route = ROUTES.get(event.plan_ready.graph.route, "?")
            self.reason = event.plan_ready.reason
            # the final graph, in its order; a point started while the skeleton was written keeps its text
            before, self.points = self.points, {}
            for n in event.plan_ready.graph.nodes:
                frame = n.part in (pb.NODE_PART_OPENING, pb.NODE_PART_CLOSING)
                number = 0 if frame else self.numbered() + 1
                point = before.get(n.id) or PointState(n.id, n.title, tuple(n.depends_on))
                point.title, point.depends_on, point.number = n.title, tuple(n.depends_on), number
                self.points[n.id] = point
        elif kind == "node_started":
            point = self._point(event.node_started.node_id)
            point.status, point.role = "writing", ROLES.get(event.node_started.model_role, "?")
        elif kind == "node_delta":
            point = self._point(event.node_delta.node_id)
            point.text += event.node_delta.text
            point.tokens += event.node_delta.tokens
        elif kind == "node_finished":
            point = self._point(event.node_finished.node_id)
            point.status, point.text = "done", event.node_finished.text
            point.tokens = event.node_finished.tokens
        elif kind == "node_failed":
            point = self._point(event.node_failed.node_id)
            point.status = "failed"
            point.text = event.node_failed.partial_text + f" [failed: {event.node_failed.reason}]"
        elif kind == "prompt_progress":
            p = event.prompt_progress
            self.progress = f"prompt: {p.sentences} sentences, {p.tokens_prefilled} tokens prefilled"
        elif kind == "answer_done":
            self.done = event.answer_done

    def _point(self, node_id: int) -> PointState:
        return self.points.setdefault(node_id, PointState(node_id, f"point {node_id}", number=node_id))

    def numbered(self) -> int:
        return sum(1 for p in self.points.values() if p.number)

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        if self.done is None:
            return f"{self.route or 'planning'} | {elapsed:.1f}s"
        tokens = sum(u.completion_tokens for u in self.done.usage)
        total = self.done.timings.total_s or elapsed
        rate = tokens / total if total > 0 else 0.0
        failed = f", {len(self.done.failed_node_ids)} point(s) failed" if self.done.failed_node_ids else ""
        return (f"mode: {ROUTES.get(self.done.route, '?')} | {self.numbered()} point(s) | wall {total:.1f}s "
                f"(plan {self.done.timings.plan_s:.1f}s, first token {self.done.timings.first_token_s:.1f}s) | "
                f"{tokens} tokens, {rate:.1f} tok/s{failed}")


def wrap_text(text: str, width: int) -> list[str]:
    """Lines of `text` at most `width` wide, keeping its own line breaks: paragraphs and list items wrap
    (a wrapped list item keeps its indent), blank lines stay, and a fenced code block is shown as
    written (code must not be rewrapped)."""
    out: list[str] = []
    in_code = False
    for line in text.split("\n") if text else []:
        if line.lstrip().startswith(("```", "~~~")):
            in_code = not in_code
            out.append(line)
            continue
        if in_code or not line.strip():
            out.append(line.rstrip())
            continue
        indent = line[:len(line) - len(line.lstrip())]
        marker = re.match(r"\s*(?:[-*+]|\d+[.)])\s+", line)
        hang = " " * len(marker.group()) if marker else indent
        out.extend(textwrap.wrap(line.strip(), max(width, 10), initial_indent=indent, subsequent_indent=hang))
    return out


class LiveView:
    """Redraws the answer in place on a terminal; prints it once at the end elsewhere."""

    def __init__(self, out: TextIO, *, live: bool | None = None, tail_lines: int = 3) -> None:
        self.out = out
        self.live = out.isatty() if live is None else live
        self.tail_lines = tail_lines
        self.state = AnswerState()
        self._drawn = 0
        self._tick = 0

    def update(self, event: pb.AnswerEvent) -> None:
        self.state.apply(event)
        if self.live:
            self._redraw()

    def finish(self) -> None:
        """Replace the live block by the whole answer and the summary line."""
        if self.live:
            self._clear()
        self.out.write("\n".join(self.final_lines()) + "\n")
        self.out.flush()

    def final_lines(self) -> list[str]:
        width = self._width()
        lines: list[str] = []
        for point in self.state.points.values():
            if len(self.state.points) > 1 and point.number:  # the opening and closing are plain paragraphs
                lines.append(f"{point.number}. {point.title}")
            lines.extend(wrap_text(point.text.strip(), width))
            lines.append("")
        lines.append(self.state.summary())
        return lines

    def live_lines(self) -> list[str]:
        width = self._width()
        self._tick += 1
        spin = SPINNER[self._tick % len(SPINNER)]
        head = f"{spin} {self.state.route or 'planning'}"
        if self.state.progress:
            head += f" | {self.state.progress}"
        lines = [head[:width]]
        for point in self.state.points.values():
            marker = {"waiting": "..", "writing": spin, "done": "ok", "failed": "!!"}[point.status]
            needs = f" (after {', '.join(map(str, point.depends_on))})" if point.depends_on else ""
            role = f" [{point.role}]" if point.role else ""
            label = f"{point.number}. {point.title}" if point.number else point.title
            lines.append(f"{marker} {label}{needs}{role}"[:width])
            wrapped = wrap_text(point.text.strip(), width - 4)
            lines.extend(("    " + line)[:width] for line in wrapped[-self.tail_lines:])
        return lines

    def _width(self) -> int:
        return max(20, shutil.get_terminal_size((100, 40)).columns - 1)

    def _redraw(self) -> None:
        lines = self.live_lines()
        height = shutil.get_terminal_size((100, 40)).lines - 1
        lines = lines[-height:]  # never scroll: an in-place redraw needs the block on screen
        self._clear()
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self._drawn = len(lines)

    def _clear(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")  # up to the block's first line, erase below
            self._drawn = 0
