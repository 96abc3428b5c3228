"""Planner settings: one frozen dataclass with bounds and help text, validated once.

Owns every knob of routing, planning and expansion (which model role does what, token budgets,
graph size, concurrency, sampling). Each field carries `help` and, for numbers, `min`/`max` in its
metadata so a config loader can build flags and messages from it without repeating them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from espalier.planner.engine import InvalidRequest, Role, Sampling, Speculation
from espalier.planner.fields import field_meta, first_bad_field
from espalier.planner.plan import DEFAULT_MAX_NODES, PointLength, Route


@dataclass(frozen=True, slots=True)
class PlannerSettings:
    skeleton_role: Role = field(
        default=Role.LARGE, metadata=field_meta("model role that writes the skeleton (small is faster, maybe worse)")
    )
    router_role: Role = field(
        default=Role.SMALL, metadata=field_meta("model role that answers the one-token routing prompt")
    )
    # Large by default: read by a strong judge, points the 0.5B model wrote carried garbled or false
    # statements and cost 37 points of net win rate for 3% of speed (measured again by `bench answers`).
    easy_role: Role = field(default=Role.LARGE, metadata=field_meta("model role for points the skeleton marks easy"))
    hard_role: Role = field(
        default=Role.LARGE, metadata=field_meta("model role for hard points and for every point of a parallel plan")
    )
    direct_role: Role = field(default=Role.LARGE, metadata=field_meta("model role for plain (direct) answers"))
    # Off by default because it measured worse than the default route with the 0.5B small model: on
    # the LIMA questions the rules leave open it picks "A" (a list) almost always (42% right; "direct" for
    # all of them is 70% right). Worth turning on with a stronger router_role.
    use_router_model: bool = field(
        default=False,
        metadata=field_meta("ask the router model when the cheap rules do not decide (off: use router_default)"),
    )
    router_weights: str = field(
        default="",
        metadata=field_meta("the learned router's weights: empty = those shipped for the default small model, a file "
                    "from `espalier router train`, or none (rules only); weights of another model fall back "
                    "to the rules, with a warning"),
    )
    router_default: Route = field(
        default=Route.DIRECT,
        metadata=field_meta(
            "route when neither the rules nor the router model decide (direct: never worse than plain "
            "decoding, and right more often on the labelled sets)"
        ),
    )
    router_max_tokens: int = field(
        default=2, metadata=field_meta("tokens the router model may write (its answer is one letter)", 1, 8)
    )
    skeleton_max_tokens: int = field(default=160, metadata=field_meta("token budget of the skeleton", 16, 2048))
    # 1.2: on the 32 vicuna80 questions labelled suitable, the large model's skeletons held 16 pairs of
    # near-duplicate points (in 6 of them) and 3 (in 1) with it, with about as many points (6.1 and 5.8).
    skeleton_word_penalty: float = field(default=1.2, metadata=field_meta(
        "penalty on words the skeleton already wrote, so its points differ (1 = off; embedded engine only)",
        1, 2))
    point_max_tokens: int = field(default=256, metadata=field_meta("token budget of each expanded point", 1, 4096))
    long_point_max_tokens: int = field(
        default=512,
        metadata=field_meta("token budget of a point that carries code (the question or the point's title asks for "
                    "it), unless the graph sets the node's own budget", 1, 8192),
    )
    point_min_tokens: int = field(
        default=4,
        metadata=field_meta("tokens a point writes on its first line before it may end (no empty points)", 0, 64),
    )
    point_length: PointLength = field(
        default=PointLength.DETAILED,
        metadata=field_meta("how much each point says: detailed (two short sentences with a concrete example or "
                    "detail, and the code, steps or examples the question asks for, over several lines where "
                    "needed) or brief (one or two sentences on one line: fastest, and thinner)"),
    )
    frame: bool = field(
        default=True,
        metadata=field_meta("open a skeleton answer with a sentence that introduces its points, written in parallel "
                    "with them (and close it, with `closing`); off: the points alone"),
    )
    closing: bool = field(
        default=False,
        metadata=field_meta("with frame: end a skeleton answer with a sentence that sums up its points, written from "
                    "their text once they are all done (so it adds that wait, and no new content)"),
    )
    early_points: int = field(
        default=-1,
        metadata=field_meta("points that may start while their skeleton is still being written (an answer's first text "
                    "comes sooner; each point so started sees the outline so far): -1 lets the engine's measured "
                    "batch cost decide (none where a sequence beside the skeleton slows it by over a quarter, "
                    "as on a small CPU; many on a GPU), 0 never", -1, 64),
    )
    direct_max_tokens: int = field(default=512, metadata=field_meta("token budget of a direct answer", 1, 32768))
    max_nodes: int = field(
        default=DEFAULT_MAX_NODES,
        metadata=field_meta("most points a plan may have (more are cut from the skeleton)", 1, 64),
    )
    min_nodes: int = field(
        default=2,
        metadata=field_meta("fewest points a parsed skeleton needs; fewer falls back to a direct answer", 1, 64),
    )
    max_concurrency: int = field(
        default=16,
        metadata=field_meta(
            "most points decoding at once per role (also bounded by the engine's free slots)", 1, 256
        ),
    )
    live_answer_role: Role = field(
        default=Role.LARGE,
        metadata=field_meta("live mode: the role that writes the answer (small: the large model reads and notes, "
                    "the small one answers)"),
    )
    live_note_tokens: int = field(
        default=40, metadata=field_meta("live mode: token budget of each note written while the prompt arrives", 4, 512)
    )
    speculation: Speculation = field(
        default=Speculation.DEFAULT,
        metadata=field_meta("speculative decoding of points and direct answers: default (the engine's), auto, on, off"),
    )
    max_depth: int = field(
        default=2,
        metadata=field_meta("most stages in a chain of dependent points of a model-written graph (1 = all parallel); "
                    "each stage waits for the one before it", 1, 64),
    )
    forward_max_chars: int = field(
        default=1500,
        metadata=field_meta("characters of each parent's text forwarded to a dependent point", 0, 100_000),
    )
    history_max_chars: int = field(
        default=6000,
        metadata=field_meta("characters of the caller's earlier turns that every prompt of an answer carries (the "
                    "newest kept, older turns left out and the plan's reason says how many; the system text "
                    "is always kept); prefilled once per answer, so it costs prefill, not per-point time",
                    0, 1_000_000),
    )
    sampling: Sampling = field(
        default_factory=Sampling,
        metadata=field_meta("sampling of points, skeleton and direct answers; max_tokens and stop are set per stage"),
    )

    def validate(self) -> PlannerSettings:
        """Raise InvalidRequest naming the first bad field (as planner.<name>); return self."""
        bad = first_bad_field(self)
        if bad is not None:
            name, why = bad
            raise InvalidRequest(f"planner.{name} {why}", field=f"planner.{name}")
        if self.min_nodes > self.max_nodes:
            raise InvalidRequest(
                "planner.min_nodes must not exceed planner.max_nodes", field="planner.min_nodes"
            )
        if not isinstance(self.sampling, Sampling):
            raise InvalidRequest("planner.sampling must be a Sampling", field="planner.sampling")
        try:
            self.sampling.validate()
        except InvalidRequest as exc:
            raise InvalidRequest(f"planner.{exc}", field=f"planner.{exc.field}") from None
        return self

    @property
    def rates_difficulty(self) -> bool:
        """Whether a graph skeleton rates its points easy or hard: only when that picks another model."""
        return self.easy_role is not self.hard_role

    def replace(self, **changes: Any) -> PlannerSettings:
        """A validated copy with some fields changed (e.g. per-request budgets)."""
        return dataclasses.replace(self, **changes).validate()


DEFAULT_SETTINGS = PlannerSettings()
