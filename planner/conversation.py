"""The caller's conversation around a question: its standing instructions and the turns before it.

Owns what a request carries besides the question itself: the caller's system text (a persona, a
language, house style, safety rules) and the earlier user and assistant turns, oldest first, and how
they are fitted to the prompts' budget (earlier turns trimmed oldest first; the system text is never
trimmed, the service bounds it). Every prompt that writes the answer places them the same way
(espalier.planner.prompts): the system text after the planner's own instructions, as the user's standing
instructions; the earlier turns as real chat turns where the model writes the answer (direct answers,
points, opening and closing) and as a quoted transcript where it does a task about the question (the
skeleton and the router, whose worked examples would otherwise read as part of the conversation).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from espalier.planner.engine import InvalidRequest, Message

TURN_ROLES = ("user", "assistant")
ROUTER_PREVIOUS_CHARS = 400  # of the previous turn, in front of a question a router reads


@dataclass(frozen=True, slots=True)
class Conversation:
    """A question's context. The empty Conversation (NO_CONTEXT) gives exactly the prompts of a bare question."""

    system: str = ""  # the caller's standing instructions (its system messages, joined in order)
    history: tuple[Message, ...] = ()  # earlier turns, oldest first; roles "user" or "assistant"
    trimmed: int = 0  # earlier turns left out (oldest first) to fit the budget

    def __post_init__(self) -> None:
        for i, m in enumerate(self.history):
            if m.role not in TURN_ROLES:
                raise InvalidRequest(f"an earlier turn's role must be user or assistant (turn {i} is {m.role!r})",
                                     field="messages")

    @classmethod
    def from_messages(cls, messages: Iterable[Message]) -> Conversation:
        """System messages become the standing instructions, the rest the earlier turns, in order."""
        system: list[str] = []
        history: list[Message] = []
        for m in messages:
            if m.role == "system":
                if m.content.strip():
                    system.append(m.content.strip())
            elif m.content.strip():
                history.append(Message(m.role, m.content.strip()))
        return cls("\n\n".join(system), tuple(history))

    @property
    def empty(self) -> bool:
        return not self.system and not self.history

    def fitted(self, max_history_chars: int) -> Conversation:
        """The earlier turns that fit in max_history_chars, the newest kept; `trimmed` counts the others.

        A conversation's latest turns are what a follow-up question refers to, so the oldest go first.
        A single turn longer than the whole budget is left out too (half a turn can mislead more than none).
        """
        kept: list[Message] = []
        used = 0
        for m in reversed(self.history):
            used += len(m.content)
            if used > max_history_chars:
                break
            kept.append(m)
        dropped = len(self.history) - len(kept)
        if not dropped:
            return self
        return Conversation(self.system, tuple(reversed(kept)), self.trimmed + dropped)

    def transcript(self) -> str:
        """The earlier turns as quoted text ("User: ...", "Assistant: ..."), one turn a paragraph; "" if none."""
        return "".join(f"{m.role.capitalize()}: {m.content}\n\n" for m in self.history)

    def about(self, question: str) -> str:
        """What a router should read to place the question: the question, after the start of the user's
        previous turn when there is one ("And the second one?" alone says nothing of what it asks for).
        Only its start, so a long previous turn cannot push the question out of a router's reading."""
        previous = next((m.content for m in reversed(self.history) if m.role == "user"), "")
        return f"{previous[:ROUTER_PREVIOUS_CHARS]}\n{question}" if previous else question

    def noted(self, reason: str) -> str:
        """A plan's reason, with how many earlier turns were left out when any were."""
        if not self.trimmed:
            return reason
        return f"{reason}; {self.trimmed} earlier turn(s) left out, oldest first, to fit planner.history_max_chars"


NO_CONTEXT = Conversation()
