"""The judge of `espalier bench answers`: pairwise in both orders, or single-answer grades (FastChat-style).

Owns the judge prompt (our own wording), the two ways of reading the judge (a logprob margin, or
a text verdict), turning the two readings of one pair (mode's answer first, then direct's first)
into one outcome, and the two judges: the embedded engine (a loaded model role) and any
OpenAI-compatible /v1/chat/completions endpoint (the remote engine's h11 client).

Why margins: the embedded judge is a small model, and small models are position-biased. The 1.5B
large model answers "A" to every pair, so text verdicts in both orders are always one win and one
loss, every pair is a tie, and the net win rate says nothing. Its distribution over the first
reply token still moves with the answers, though. So, where the judge gives log-probabilities:

- margin m = logP("A") - logP("B") at the first reply token, where logP(label) is the log-sum-exp
  over the top entries whose piece, stripped and case-folded, is the label ("A", " A", "a"...);
  a label missing from the top entries gets an upper bound of its log-probability, the smaller of
  the last listed entry's and the log of the mass the listed entries leave (absent_bound), so a
  margin is never larger than the distribution supports; with neither label listed the order
  gives no margin.
- m1 with the mode's answer as A, m2 with direct's answer as A; the mode's preference is
  p = (m1 - m2) / 2 nats. A constant pull towards one position adds the same amount to m1 and m2
  and cancels; what remains is how much the judge moved towards the mode's answer.
- win if p > tie_margin, lose if p < -tie_margin, else tie (DEFAULT_TIE_MARGIN = 0.5 nats).

Without log-probabilities (an endpoint judge by default, an engine that reads no logits, or a
first token that is no label), text verdicts: combining the two orders (the rule of the
FastChat-based evaluation in the SoT paper), the same verdict twice stands; a win (or loss) and a
tie is a win (or loss); a win and a loss contradict each other and count as a tie. A reply that
cannot be read counts as a tie beside a readable one; two unreadable replies give no outcome (the
pair is left out of the rates and counted apart).

Single-answer grades (method "single", FastChat's other mode): a judge too weak to compare two long
answers at once, as the 1.5B default is (its margins barely move even against an off-topic answer),
can still grade one answer. Each answer gets a 1-9 grade, the expected digit of the first reply token
where logprobs exist (the greedy digit of a small judge is nearly constant), else the replied digit;
direct's answer is graded once per question. The mode's preference is its grade minus direct's, and
the same tie band (in grade points) turns it into win, tie or lose.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from espalier.planner import decode
from espalier.planner.engine import MAX_TOP_LOGPROBS, Chunk, Engine, GenerateRequest, Message, Role, Sampling
from espalier.service.remote import http_client

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
JUDGE_TOP_LOGPROBS = MAX_TOP_LOGPROBS  # 20, also the most OpenAI-compatible servers return
MAX_REPLY_BYTES = 4 << 20  # a chat completion of a few tokens with their logprobs is far smaller
DEFAULT_TIE_MARGIN = 0.5  # nats of preference below which a pair is a tie
MASS_RESOLUTION = 1e-6  # leftover probability below this is rounding (see absent_bound)
TEXT_METHOD = "text verdicts, both orders"
DEFAULT_MAX_ANSWER_CHARS = 4000  # each answer is cut to this many characters in the judge prompt

# Single-answer grading (FastChat's "single" mode, with a 1-9 scale so every grade is one token):
# the fallback for judges too weak to compare two long answers (see the module docstring).
GRADE_SYSTEM = (
    "You are a careful, impartial reviewer. You will see a question and one answer to it. Rate how well "
    "the answer serves the person who asked: helpful, correct, relevant and clear, with a sensible amount "
    "of detail. Reply with one digit from 1 (useless or wrong) to 9 (excellent)."
)
GRADE_DIGITS = "123456789"
MIN_GRADE_MASS = 0.5  # the first token's digits must carry this much probability to read a grade


def cut_answer(text: str, max_chars: int) -> str:
    """An answer as a judge is shown it: stripped, "(no answer)" when empty, cut to max_chars."""
    text = text.strip() or "(no answer)"
    return text if len(text) <= max_chars else text[:max_chars] + " [...]"


def judge_messages(question: str, answer_a: str, answer_b: str,
                   max_chars: int = DEFAULT_MAX_ANSWER_CHARS) -> list[Message]:
    user = (f"Question:\n{question.strip()}\n\n"
            f"[Answer A]\n{cut_answer(answer_a, max_chars)}\n[End of Answer A]\n\n"
            f"[Answer B]\n{cut_answer(answer_b, max_chars)}\n[End of Answer B]\n\n"
            "Which answer is better? Reply with one word: A, B or tie.")
    return [Message("system", JUDGE_SYSTEM), Message("user", user)]


def grade_messages(question: str, answer: str, max_chars: int = DEFAULT_MAX_ANSWER_CHARS) -> list[Message]:
    user = (f"Question:\n{question.strip()}\n\n[Answer]\n{cut_answer(answer, max_chars)}\n[End of Answer]\n\n"
            "Rate the answer from 1 to 9. Reply with the digit only.")
    return [Message("system", GRADE_SYSTEM), Message("user", user)]


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


# --- logprob margins -------------------------------------------------------------------------------


def margin_method(tie_margin: float) -> str:
    """How pairs judged by margins are decided, as the report and the settings state it."""
    return f"logprob margin, both orders, tie band ±{tie_margin:g} nats"


def label_logprob(top: Sequence[tuple[str, float]], label: str) -> float | None:
    """Log-sum-exp of the entries whose piece, stripped and case-folded, is `label`; None if none is."""
    want = label.strip().casefold()
    found = [lp for piece, lp in top if piece.strip().casefold() == want]
    if not found:
        return None
    peak = max(found)
    return peak + math.log(sum(math.exp(lp - peak) for lp in found))


def absent_bound(top: Sequence[tuple[str, float]]) -> float:
    """An upper bound of the log-probability of a token missing from `top` (a full top-n list).

    It is no likelier than the least likely listed entry, and no likelier than all the mass the
    listed entries leave over. The bound, not a guess below it: a margin against a missing label
    is never made larger than the judge's distribution supports. Leftover mass under
    MASS_RESOLUTION counts as that much: below it the sum is the listed values' rounding (servers
    send float32 logprobs), which must not decide a margin.
    """
    lowest = min(lp for _, lp in top)
    rest = 1.0 - sum(math.exp(lp) for _, lp in top)
    return min(lowest, math.log(max(rest, MASS_RESOLUTION)))


def label_margin(top: Sequence[tuple[str, float]]) -> float | None:
    """logP("A") - logP("B") from the first reply token's top entries; None with neither label listed."""
    a, b = label_logprob(top, "A"), label_logprob(top, "B")
    if a is None and b is None:
        return None
    floor = absent_bound(top)
    return (floor if a is None else a) - (floor if b is None else b)


def preference(m1: float, m2: float) -> float:
    """The mode's preference from the margins with the mode's answer first (m1) and second (m2)."""
    return (m1 - m2) / 2


def margin_outcome(p: float, tie_margin: float = DEFAULT_TIE_MARGIN) -> Outcome:
    """win above the tie band, lose below it, tie inside it (the band's edges are ties)."""
    if p > tie_margin:
        return "win"
    if p < -tie_margin:
        return "lose"
    return "tie"


# --- single-answer grades ---------------------------------------------------------------------------


def grade_method(band: float) -> str:
    """How graded pairs are decided, as the report and the settings state it."""
    return f"single-answer grades 1-9 (expected digit), tie band ±{band:g} points"


def expected_grade(top: Sequence[tuple[str, float]]) -> float | None:
    """The probability-weighted digit of the first reply token (a finer grade than the greedy digit,
    which a small judge gives nearly always the same); None when digits carry under MIN_GRADE_MASS."""
    mass = dict.fromkeys(range(1, 10), 0.0)
    for piece, lp in top:
        digit = piece.strip()
        if len(digit) == 1 and digit in GRADE_DIGITS:
            mass[int(digit)] += math.exp(lp)
    total = sum(mass.values())
    if total < MIN_GRADE_MASS:
        return None
    return sum(d * p for d, p in mass.items()) / total


def parse_grade(text: str) -> float | None:
    """The first digit 1-9 of a reply ("7", "Rating: 8/9"); None if there is none."""
    m = re.search(r"[1-9]", text)
    return float(m.group()) if m else None


class JudgeError(RuntimeError):
    """The judge could not be asked (network, HTTP status, malformed reply)."""


class Judge(Protocol):
    """Every judge gives text verdicts; a MarginJudge may give logprob margins as well."""

    @property
    def name(self) -> str: ...

    async def reply(self, question: str, answer_a: str, answer_b: str) -> str:
        """The judge's raw reply for one order."""
        ...


@runtime_checkable
class MarginJudge(Judge, Protocol):
    async def margin(self, question: str, answer_a: str, answer_b: str) -> float | None:
        """logP("A") - logP("B") of the first reply token for one order (see label_margin); None when
        this judge gives no log-probabilities, or neither label is among the likeliest tokens."""
        ...


@runtime_checkable
class GradeJudge(Protocol):
    @property
    def name(self) -> str: ...

    async def grade(self, question: str, answer: str) -> float | None:
        """A 1-9 grade of one answer (expected digit with logprobs, else the replied digit); None if
        the reply holds no grade."""
        ...


@dataclass
class EngineJudge:
    """A loaded model role of the embedded engine, greedy: a few tokens of text, or one token's logprobs.

    logprobs: ask for margins. An engine that reads no logits (a remote server, a test fake) sends
    tokens without logprobs; the first such reply turns this off, and later pairs go straight to
    text verdicts instead of asking twice.
    """

    engine: Engine
    role: Role
    name: str = "embedded"
    max_chars: int = DEFAULT_MAX_ANSWER_CHARS
    logprobs: bool = True

    async def reply(self, question: str, answer_a: str, answer_b: str) -> str:
        chunks = await self._ask(question, answer_a, answer_b, JUDGE_MAX_TOKENS, 0)
        return "".join(chunk.text for chunk in chunks)

    async def margin(self, question: str, answer_a: str, answer_b: str) -> float | None:
        if not self.logprobs:
            return None
        chunks = await self._ask(question, answer_a, answer_b, 1, JUDGE_TOP_LOGPROBS)
        entries = [e for chunk in chunks for e in chunk.logprobs]
        if not entries:
            if any(chunk.tokens for chunk in chunks):  # a token came, its logprobs did not
                self.logprobs = False
            return None
        return label_margin(entries[0].top)

    async def grade(self, question: str, answer: str) -> float | None:
        messages = grade_messages(question, answer, self.max_chars)
        chunks = await self._run(messages, 1, JUDGE_TOP_LOGPROBS if self.logprobs else 0)
        entries = [e for chunk in chunks for e in chunk.logprobs]
        if entries:
            return expected_grade(entries[0].top)
        return parse_grade("".join(chunk.text for chunk in chunks))

    async def _ask(self, question: str, answer_a: str, answer_b: str, max_tokens: int,
                   top_logprobs: int) -> list[Chunk]:
        return await self._run(judge_messages(question, answer_a, answer_b, self.max_chars), max_tokens,
                               top_logprobs)

    async def _run(self, messages: Sequence[Message], max_tokens: int, top_logprobs: int) -> list[Chunk]:
        prompt = self.engine.chat_prompt(self.role, messages)
        request = GenerateRequest(prompt=prompt, role=self.role, top_logprobs=top_logprobs,
                                  sampling=Sampling(temperature=0.0, max_tokens=max_tokens))
        return await decode.chunks(self.engine, request)


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
    """Any OpenAI-compatible chat completions endpoint (temperature 0, a short reply).

    logprobs: also ask for margins, a one-token completion with `logprobs` and `top_logprobs` (the
    endpoint must support them; one that sends none gets text verdicts from then on).
    """

    url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    max_chars: int = DEFAULT_MAX_ANSWER_CHARS
    retries: int = 2
    logprobs: bool = False

    @property
    def name(self) -> str:
        return f"{self.model} at {self.url}"

    async def _post(self, messages: Sequence[Message], extra: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 8, **extra,
                           "messages": [{"role": m.role, "content": m.content} for m in messages]}).encode()
        headers = [("Content-Type", "application/json")]
        if self.api_key:
            headers.append(("Authorization", f"Bearer {self.api_key}"))
        try:
            url = http_client.BaseUrl.parse(chat_completions_url(self.url))
        except ValueError as exc:
            raise JudgeError(f"judge endpoint: {exc}") from None
        try:  # the remote engine's HTTP client (h11), not a second one
            async with asyncio.timeout(self.timeout_s):
                async with await http_client.request(url, "POST", "", body=body, headers=headers,
                                                     connect_timeout=self.timeout_s) as response:
                    data = await response.read(limit=MAX_REPLY_BYTES)
        except TimeoutError:
            raise JudgeError(f"judge endpoint gave no answer within {self.timeout_s:g}s") from None
        except http_client.HttpError as exc:
            raise JudgeError(f"judge endpoint unreachable: {exc}") from None
        if response.status >= 400:
            raise JudgeError(f"judge endpoint answered HTTP {response.status}: {response.reason}")
        try:
            payload = json.loads(data.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise JudgeError("judge endpoint did not answer JSON") from None
        try:
            choice = payload["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"unexpected judge reply: {str(payload)[:200]}") from None
        return {"content": content if isinstance(content, str) else "", "logprobs": choice.get("logprobs")}

    async def _ask(self, question: str, answer_a: str, answer_b: str, **extra: Any) -> dict[str, Any]:
        return await self.send(judge_messages(question, answer_a, answer_b, self.max_chars), **extra)

    async def grade(self, question: str, answer: str) -> float | None:
        messages = grade_messages(question, answer, self.max_chars)
        if self.logprobs:
            got = await self.send(messages, max_tokens=1, logprobs=True, top_logprobs=JUDGE_TOP_LOGPROBS)
            top = first_top_logprobs(got["logprobs"])
            if top is not None:
                return expected_grade(top)
            self.logprobs = False
            return parse_grade(str(got["content"]))
        return parse_grade(str((await self.send(messages))["content"]))

    async def send(self, messages: Sequence[Message], **extra: Any) -> dict[str, Any]:
        """One chat completion ({content, logprobs}), retried on transport errors; JudgeError at the end."""
        for attempt in range(self.retries + 1):
            try:
                return await self._post(messages, extra)
            except JudgeError:
                if attempt == self.retries:
                    raise
                await asyncio.sleep(1.0 + attempt)
        raise AssertionError("unreachable")

    async def reply(self, question: str, answer_a: str, answer_b: str) -> str:
        return str((await self._ask(question, answer_a, answer_b))["content"])

    async def margin(self, question: str, answer_a: str, answer_b: str) -> float | None:
        if not self.logprobs:
            return None
        got = await self._ask(question, answer_a, answer_b, max_tokens=1, logprobs=True,
                              top_logprobs=JUDGE_TOP_LOGPROBS)
        top = first_top_logprobs(got["logprobs"])
        if top is None:
            self.logprobs = False
            return None
        return label_margin(top)


def first_top_logprobs(logprobs: Any) -> list[tuple[str, float]] | None:
    """The first token's top entries from an OpenAI `choices[0].logprobs`; None when there are none."""
    try:
        entries = logprobs["content"][0]["top_logprobs"]
        return [(str(e["token"]), float(e["logprob"])) for e in entries]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
