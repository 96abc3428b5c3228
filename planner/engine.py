"""The Engine protocol: the one seam between the planner and whatever decodes tokens.

Owns the request/response vocabulary shared by every engine (embedded llama.cpp, remote
OpenAI-compatible servers, the scripted fake in unit tests) and the error hierarchy they raise.
Nothing here imports grpc or llama_cpp: the planner depends on this module only.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, Self, TypeVar, runtime_checkable

from espalier.planner.fields import field_meta, first_bad_field


class Role(enum.StrEnum):
    """Which loaded model a request runs on."""

    LARGE = "large"
    SMALL = "small"


class Speculation(enum.StrEnum):
    """Whether a request's tokens may be drafted and verified (speculative decoding)."""

    DEFAULT = "default"  # the engine's configured default for the role
    AUTO = "auto"  # a cost model measured on this hardware decides per step (never a loss)
    ON = "on"  # always draft (measurements, tests)
    OFF = "off"


class Priority(enum.IntEnum):
    """Which waiting sequence gets the next free slot: lower first, first come first served within one.

    Under load every slot is taken by the points of answers already under way. A request's first
    sequence (its skeleton, its router's question, its direct answer, its opening) gates everything
    the caller sees of it, so it takes the next free slot ahead of further points: a newcomer starts
    showing text after one point ends instead of after the whole queue ahead of it.
    """

    FIRST = 0
    NORMAL = 1


class FinishReason(enum.StrEnum):
    STOP = "stop"  # end-of-generation token or a stop string
    LENGTH = "length"  # max_tokens reached
    CANCELLED = "cancelled"
    ERROR = "error"


# --- errors: a small hierarchy, mapped to status codes at exactly one boundary (service) ---


class EngineError(Exception):
    """Base of every error an engine raises on purpose."""


class InvalidRequest(EngineError):
    """The request itself is wrong (empty or over-long prompt, bad sampling values)."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class RoleNotLoaded(EngineError):
    """The request names a model role that this engine did not load."""


class Exhausted(EngineError):
    """All slots are busy and the waiting queue is full; retry later."""


class NoEmbeddings(EngineError):
    """The engine serving this role gives no embeddings (a remote server, for now)."""


class EngineClosed(EngineError):
    """The engine is draining or closed and takes no new work."""


_Entry = TypeVar("_Entry")


def role_entry(entries: Mapping[Role, _Entry], role: Role, *, closing: bool, missing: str, held: str) -> _Entry:
    """An engine's entry for a role (its worker, its servers): EngineClosed while the engine closes, and
    for a role it has none of, RoleNotLoaded saying so ("the small <missing> (<held>: large)")."""
    if closing:
        raise EngineClosed("the engine is shutting down")
    entry = entries.get(role)
    if entry is None:
        names = ", ".join(sorted(r.value for r in entries)) or "none"
        raise RoleNotLoaded(f"the {Role(role).value} {missing} ({held}: {names})")
    return entry


class EngineFault(EngineError):
    """The native decoder failed for this sequence; other sequences keep running."""


# --- request / response ---


MAX_STOPS = 16  # a detailed point has 16 (espalier.planner.prompts.point_stop)


@dataclass(frozen=True, slots=True)
class Sampling:
    """Per-sequence sampling settings. temperature 0 means greedy and deterministic."""

    # The bounds are the server's settings' too (service/settings.py exposes the first six).
    temperature: float = field(default=0.0, metadata=field_meta(
        "sampling temperature; 0 = greedy and deterministic", 0, 5))
    top_p: float = field(default=1.0, metadata=field_meta("nucleus sampling; 1 = off", 0, 1, lo_open=True))
    top_k: int = field(default=0, metadata=field_meta("top-k sampling; 0 = off", 0, 1000))
    min_p: float = field(default=0.0, metadata=field_meta("min-p sampling; 0 = off", 0, 1, hi_open=True))
    repeat_penalty: float = field(default=1.0, metadata=field_meta("repetition penalty; 1 = off", 0.5, 2))
    # Like repeat_penalty, over every token the reply wrote, but only tokens that hold a letter: a list's
    # numbers, punctuation and line breaks keep their odds. The skeleton uses it so that points do not
    # repeat each other's words ("No rock music would exist", "No rock culture would develop", ...);
    # repeat_penalty there cut the list short instead (it also pushes away "\n", "." and the digits).
    # Embedded engine only: an OpenAI-compatible server has no such setting and does not get it.
    word_repeat_penalty: float = field(default=1.0, metadata=field_meta(
        "penalty on words the reply already wrote (numbers, punctuation and line breaks exempt); 1 = off", 1, 2))
    seed: int = field(default=0, metadata=field_meta("seed of the random sampler when temperature > 0",
                                                     0, 2**32 - 1))
    max_tokens: int = field(default=256, metadata=field_meta("most tokens to generate", 1, 32768))
    # Text that ends the sequence (not sent). A stop made only of whitespace matches only after the
    # first non-whitespace text in the embedded engine; a remote server applies stops its own way.
    stop: tuple[str, ...] = ()
    # With min_tokens > 0, the first min_tokens tokens are never an end of generation, and no line
    # break comes before the reply's first word: a reply cannot end, or jump to a new line where a stop
    # could end it, before it has said something (a point pre-filled with its title otherwise sometimes
    # ends at once); after its first word a code block or list may start a line. Embedded engine; a
    # remote server gets `min_tokens` (vLLM honours it) and the planner retries an empty point.
    min_tokens: int = field(default=0, metadata=field_meta("tokens before an end may come", 0, 256))

    def validate(self) -> None:
        """Raise InvalidRequest naming the first bad field."""
        bad = first_bad_field(self)
        if bad is None and self.min_tokens > self.max_tokens:
            bad = "min_tokens", f"must not exceed max_tokens (got {self.min_tokens!r})"
        if bad is None and not (len(self.stop) <= MAX_STOPS and all(0 < len(s) <= 64 for s in self.stop)):
            bad = "stop", f"must be at most {MAX_STOPS} strings of 1 to 64 characters (got {self.stop!r})"
        if bad is not None:
            name, why = bad
            raise InvalidRequest(f"sampling.{name} {why}", field=f"sampling.{name}")


@runtime_checkable
class Prefix(Protocol):
    """A prompt prefix prefilled once and shared by the requests that fork from it.

    Obtained from Engine.prefix(); usable as `async with`. While open, its KV stays resident.
    """

    @property
    def role(self) -> Role: ...

    @property
    def text(self) -> str: ...

    async def ready(self) -> int:
        """Wait until the prefix is prefilled; returns its token count."""
        ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...


MAX_TOP_LOGPROBS = 20


class PrefixBase:
    """What every Prefix implementation shares: its role and text, and `async with` that opens it on
    entry (`_open`, a no-op unless overridden) and closes it on exit. Subclasses give ready/aclose."""

    def __init__(self, role: Role, text: str) -> None:
        self._role = role
        self._text = text

    @property
    def role(self) -> Role:
        return self._role

    @property
    def text(self) -> str:
        return self._text

    def _open(self) -> object:
        return None

    async def ready(self) -> int:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One sequence to decode.

    prompt: text (special tokens such as chat markers are parsed) or token ids.
    prefix: an open Prefix; the sequence's full prompt is prefix.text + prompt, and the prefix's
    KV is copied instead of prefilled again.
    top_logprobs: 0 = off; n > 0 (at most MAX_TOP_LOGPROBS) asks for each sampled token's
    log-probability and the n most likely tokens at its position (Chunk.logprobs). Engines that
    cannot read logits (remote servers) ignore it and send no logprobs. Such a sequence is never
    speculated: each token is sampled from its own step's logits.
    """

    prompt: str | Sequence[int]
    role: Role = Role.LARGE
    sampling: Sampling = field(default_factory=Sampling)
    prefix: Prefix | None = None
    request_id: str = ""
    speculation: Speculation = Speculation.DEFAULT
    top_logprobs: int = 0
    priority: Priority = Priority.NORMAL  # the embedded engine's slot order; remote servers ignore it

    def validate(self) -> None:
        """Raise InvalidRequest naming the first bad field (the sampling settings, then top_logprobs)."""
        self.sampling.validate()
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS} "
                                 f"(got {self.top_logprobs!r})", field="top_logprobs")


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """One sampled token as the model saw it.

    Log-probabilities (natural log) are of the raw model distribution, a log-softmax of the logits
    before any sampling setting (temperature, top-k, top-p, min-p, repeat penalty) reshapes it; so
    they do not depend on the request's sampling, and the sampled token need not be the top one.
    token: the token's text piece (bytes decoded with errors="replace"; control tokens are "").
    top: the most likely tokens at this position as (piece, logprob), most likely first.
    """

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a sequence's output. The last chunk of a sequence carries `finish`."""

    text: str
    tokens: int  # tokens this chunk covers (a chunk may hold 0 when text was held back)
    finish: FinishReason | None = None
    prompt_tokens: int = 0  # set on the last chunk: prompt length including any prefix
    reused_tokens: int = 0  # set on the last chunk: prompt tokens copied from a prefix, not prefilled
    # With GenerateRequest.top_logprobs > 0 (and an engine that reads logits): one entry per token
    # this chunk covers, in order; an end-of-generation token is covered by no chunk and has none.
    logprobs: tuple[TokenLogprobs, ...] = ()


@dataclass(frozen=True, slots=True)
class RoleStats:
    role: Role
    model: str
    slots_total: int
    slots_busy: int
    queue_depth: int
    prefilled_tokens: int  # prompt tokens actually run through the model
    reused_tokens: int  # prompt tokens copied from a resident or explicit prefix
    generated_tokens: int
    tokens_per_s: float  # recent decode throughput, all sequences together
    steps: int
    # Speculative decoding (spec_k -1: none configured for this role)
    spec_k: int = -1  # drafts per sequence the cost model chose last (0 = plain decoding pays best)
    spec_drafted: int = 0  # drafted tokens verified so far
    spec_accepted: int = 0  # of those, kept
    verify_cost: tuple[tuple[int, float], ...] = ()  # (k, measured cost of a k-token batch / 1 token)
    verify_rows: int = 0  # most tokens per verify call in use (0 = no limit)
    # most tokens one decode call held and still gave each the logits it gets alone, as measured at
    # start-up in a short context (-1: not measured)
    exact_rows: int = -1
    # (n, measured cost of a decode step of n sequences / one sequence), measured at start-up on this
    # hardware: what running more sequences beside one costs it (a planner's scheduling input). Empty
    # when unknown (a remote server).
    batch_cost: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class EngineStats:
    roles: tuple[RoleStats, ...] = ()

    def role(self, role: Role) -> RoleStats | None:
        return next((r for r in self.roles if r.role == role), None)

    @property
    def slots_busy(self) -> int:
        return sum(r.slots_busy for r in self.roles)

    @property
    def queue_depth(self) -> int:
        return sum(r.queue_depth for r in self.roles)


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


class Engine(Protocol):
    """What the planner needs from a decoder."""

    def roles(self) -> frozenset[Role]:
        """The model roles that are loaded."""
        ...

    def generate(self, request: GenerateRequest) -> AsyncGenerator[Chunk, None]:
        """Decode one sequence: an async generator (`async def ... yield`) in every implementation, so a bad
        request or an unknown role raises on the first iteration, never at the call. Closing or cancelling
        it frees the sequence at once."""
        ...

    def prefix(self, role: Role, text: str) -> Prefix:
        """Open a shared prefix (prefilled once, forked per request)."""
        ...

    def chat_prompt(self, role: Role, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        """Format messages with the model's own chat template."""
        ...

    def free_slots(self, role: Role) -> int:
        """Slots not busy right now (a scheduling hint, not a reservation)."""
        ...

    def stats(self) -> EngineStats: ...

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Take no new work, let running sequences finish for up to grace_s, then end them and free resources."""
        ...


class Pooling(enum.StrEnum):
    """How one vector is made from a text's token states."""

    MEAN = "mean"  # the average over every token
    LAST = "last"  # the last token's state (after an instruction: what the model would answer next)


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """Which weights a role runs: a classifier trained on one model's states fits only that model."""

    name: str  # the model's file name
    sha256: str


@runtime_checkable
class Embedder(Protocol):
    """An optional engine capability: one vector per text from a loaded model's final hidden states,
    computed apart from decoding (it never disturbs a sequence being generated)."""

    async def embed(self, role: Role, texts: Sequence[str], pooling: Pooling,
                    depth: float = 1.0) -> list[tuple[float, ...]]:
        """One vector per text, in order, pooled from the states `depth` of the way through the model
        (1.0: the final layer, after its norm; 0.75: the output of the layer three quarters down,
        which a linear probe often reads better). InvalidRequest for an empty text, one longer than
        the embedding context or a depth outside (0, 1]; RoleNotLoaded / EngineClosed as for
        generate; cancellable between texts."""
        ...

    async def model_identity(self, role: Role) -> ModelIdentity:
        """The role's model file name and sha256 (read from the download's stamp or hashed once)."""
        ...

