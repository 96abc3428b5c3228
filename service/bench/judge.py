"""The pairwise judge of `espalier bench answers` (FastChat-style, in both orders).

Owns the judge prompt (our own wording), reading a verdict from the judge's short reply, turning
the two verdicts of one pair (mode's answer first, then direct's first) into one outcome, and the
two judges: the embedded engine (a loaded model role) and any OpenAI-compatible
/v1/chat/completions endpoint (stdlib urllib, run off the event loop).

Combining the two orders (the rule of the FastChat-based evaluation in the SoT paper): the same
verdict twice stands; a win (or loss) and a tie is a win (or loss); a win and a loss contradict
each other and count as a tie. A reply that cannot be read counts as a tie beside a readable one;
two unreadable replies give no outcome (the pair is left out of the rates and counted apart).
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from planner.engine import Engine, GenerateRequest, Message, Role, Sampling

Verdict = Literal["A", "B", "tie"]
Outcome = Literal["win", "tie", "lose"]

JUDGE_SYSTEM = (
    "You are a careful, impartial reviewer. You will see a question and two answers to it, labelled "
    "Answer A and Answer B. Decide which answer serves the person who asked better: more helpful, "
    "correct, relevant and clear, with a sensible amount of detail. Do not let the order of the answers "
    "or their length sway you. Reply with a single word: A if Answer A is better, B if Answer B is "
    "better, or tie if they are about equally good."
)
JUDGE_MAX_TOKENS = 4
DEFAULT_MAX_ANSWER_CHARS = 4000  # each answer is cut to this many characters in the judge prompt


def judge_messages(question: str, answer_a: str, answer_b: str,
                   max_chars: int = DEFAULT_MAX_ANSWER_CHARS) -> list[Message]:
    def cut(text: str) -> str:
        text = text.strip() or "(no answer)"
        return text if len(text) <= max_chars else text[:max_chars] + " [...]"

    user = (f"Question:\n{question.strip()}\n\n"
            f"[Answer A]\n{cut(answer_a)}\n[End of Answer A]\n\n"
            f"[Answer B]\n{cut(answer_b)}\n[End of Answer B]\n\n"
            "Which answer is better? Reply with one word: A, B or tie.")
    return [Message("system", JUDGE_SYSTEM), Message("user", user)]


_FILLER = frozenset(["the", "my", "final", "verdict", "answer", "answers", "is", "winner", "better", "best",
                     "response", "output", "option", "choice", "assistant", "i", "think", "choose", "pick",
                     "say", "would"])
_TIE = frozenset(["tie", "tied", "c", "equal", "equally", "both", "draw", "neither", "same"])


def parse_verdict(text: str) -> Verdict | None:
    """A, B or tie from a short reply ("B", " [[A]]", "Answer B.", "Tie", "Both are equal"); None if unclear."""
    words = re.findall(r"[a-z]+", text.casefold())[:8]
    for i, word in enumerate(words):
        if word in _FILLER:
            continue
        if word == "a":
            # "a tie" / "a draw" use the article, not the label
            return "tie" if i + 1 < len(words) and words[i + 1] in _TIE else "A"
        if word == "b":
            return "B"
        if word in _TIE:
            return "tie"
        return None
    return None


def outcome(verdict: Verdict | None, mode_is_a: bool) -> Outcome | None:
    """The mode's outcome from one verdict, given on which side the mode's answer was shown."""
    if verdict is None:
        return None
    if verdict == "tie":
        return "tie"
    return "win" if (verdict == "A") == mode_is_a else "lose"


def combine(first: Outcome | None, second: Outcome | None) -> Outcome | None:
    """One outcome from the two orders (see the module docstring)."""
    if first is None and second is None:
        return None
    a, b = first or "tie", second or "tie"
    if a == b:
        return a
    if "tie" in (a, b):
        return a if b == "tie" else b
    return "tie"  # a win and a loss: position bias, not a preference


class JudgeError(RuntimeError):
    """The judge could not be asked (network, HTTP status, malformed reply)."""


class Judge(Protocol):
    @property
    def name(self) -> str: ...

    async def reply(self, question: str, answer_a: str, answer_b: str) -> str:
        """The judge's raw reply for one order."""
        ...


@dataclass
class EngineJudge:
    """A loaded model role of the embedded engine, greedy, a few tokens."""

    engine: Engine
    role: Role
    name: str = "embedded"
    max_chars: int = DEFAULT_MAX_ANSWER_CHARS

    async def reply(self, question: str, answer_a: str, answer_b: str) -> str:
        messages = judge_messages(question, answer_a, answer_b, self.max_chars)
        prompt = self.engine.chat_prompt(self.role, messages)
        request = GenerateRequest(prompt=prompt, role=self.role,
                                  sampling=Sampling(temperature=0.0, max_tokens=JUDGE_MAX_TOKENS))
        parts: list[str] = []
        stream = self.engine.generate(request)
        try:
            async for chunk in stream:
                parts.append(chunk.text)
                if chunk.finish is not None:
                    break
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        return "".join(parts)


def chat_completions_url(url: str) -> str:
    """Accept a server root, a .../v1 base or the full .../chat/completions address."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


@dataclass
class OpenAIJudge:
    """Any OpenAI-compatible chat completions endpoint (temperature 0, a short reply)."""

    url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    max_chars: int = DEFAULT_MAX_ANSWER_CHARS
    retries: int = 2

    @property
    def name(self) -> str:
        return f"{self.model} at {self.url}"

    def _post(self, messages: Sequence[Message]) -> str:
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 8,
                           "messages": [{"role": m.role, "content": m.content} for m in messages]}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = chat_completions_url(self.url)
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise JudgeError(f"judge endpoint answered HTTP {exc.code}: {exc.reason}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise JudgeError(f"judge endpoint unreachable: {getattr(exc, 'reason', exc)}") from None
        except json.JSONDecodeError:
            raise JudgeError("judge endpoint did not answer JSON") from None
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"unexpected judge reply: {str(payload)[:200]}") from None
        return content if isinstance(content, str) else ""

    async def reply(self, question: str, answer_a: str, answer_b: str) -> str:
        messages = judge_messages(question, answer_a, answer_b, self.max_chars)
        for attempt in range(self.retries + 1):
            try:
                return await asyncio.to_thread(self._post, messages)
            except JudgeError:
                if attempt == self.retries:
                    raise
                await asyncio.sleep(1.0 + attempt)
        raise AssertionError("unreachable")
