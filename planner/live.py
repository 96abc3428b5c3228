"""Work on a question while it is still being typed (LiveMind), so the answer comes sooner after the end.

Owns one streamed prompt: the text received so far, a background task that prefills every complete
sentence as it arrives (the answer's own prompt up to that sentence, held open as an engine prefix
so the answer forks from it and prefills only the tail), in live mode the short notes the model
writes after each part, and the live answer. Each new prefix is opened only once the previous one is
in the cache, so the engine forks it from the previous one: a sentence costs its own tokens only,
and a revision costs only what changed after the first changed token. Everything is released on
close, so an abandoned stream leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Self

from espalier.planner import prompts, runner
from espalier.planner.conversation import NO_CONTEXT, Conversation
from espalier.planner.decode import metered, resolve_role
from espalier.planner.engine import Engine, EngineError, GenerateRequest, Prefix
from espalier.planner.events import Event
from espalier.planner.plan import Mode, Plan, Route
from espalier.planner.sentences import complete_prefix, split_sentences
from espalier.planner.settings import PlannerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TypingProgress:
    """What happened while the user was typing (sent to the client as PromptProgress)."""

    chars_received: int
    tokens_prefilled: int  # prompt tokens in the cache, ready for the answer to fork from
    sentences: int  # complete sentences processed
    note: str = ""  # a note written after the latest part (live mode)


class StreamedPrompt:
    """Use as `async with StreamedPrompt(...) as sp`; feed `update(text)`, read `progress`, then answer.

    `update` never blocks: the work runs in a background task that always takes the latest text,
    so a fast typist's sentences are prefilled together in one step rather than queued.
    """

    def __init__(self, engine: Engine, mode: Mode, settings: PlannerSettings, *, request_id: str = "",
                 context: Conversation = NO_CONTEXT) -> None:
        self.engine = engine
        # the caller's system text and earlier turns: in every prompt prefilled, noted on or answered
        self.context = context.fitted(settings.history_max_chars)
        self.mode = mode
        self.settings = settings
        self.request_id = request_id
        self.live = mode is Mode.LIVE
        # The prompt the answer will start with: a forced skeleton mode's skeleton prompt, else the
        # direct prompt (auto routes after the end; most questions the rules cannot place go direct).
        self._route = mode.forced_route if mode in (Mode.SOT, Mode.SGD) else Route.DIRECT
        wanted = settings.skeleton_role if self._route is not Route.DIRECT else settings.direct_role
        self.role = resolve_role(wanted, engine.roles())
        self.progress: asyncio.Queue[TypingProgress | None] = asyncio.Queue()  # None: no more
        self._text = ""
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while the background task has caught up and waits for text
        self._ended = False
        self._task: asyncio.Task[None] | None = None
        self._prefix: Prefix | None = None
        self._held = ""  # the text of the open prefix
        self._tokens = 0
        self._typed = ""  # the question text covered by the prefix (plain) or by the notes (live)
        self._turns: list[tuple[str, str]] = []  # live: (question typed so far, note written on it)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=f"espalier-live-{self.request_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def update(self, text: str) -> None:
        """The prompt as received so far (appended to, or revised)."""
        self._text = text
        self._poke()

    def _poke(self) -> None:
        self._idle.clear()
        self._wake.set()

    @property
    def idle(self) -> bool:
        """Whether the background work has caught up with the text received (or has stopped)."""
        return self._task is None or self._task.done() or self._idle.is_set()

    async def wait_idle(self) -> None:
        """Return once `idle` holds: lets a caller that simulates typing skip the time nothing happens."""
        if not self.idle:
            await self._idle.wait()  # the task sets it when it waits for text, and when it stops

    async def end(self) -> None:
        """The prompt is complete: finish the prefill in flight, whose tokens are most of the prompt.

        Except in auto mode, where the route is not known yet: a skeleton answer would not use the
        direct prompt, so what is in flight is dropped (what is already cached stays).
        """
        self._ended = True
        self._poke()
        if self._task is not None:
            if self.mode is Mode.AUTO:
                self._task.cancel()
            try:
                # Bounded: a prefix may be queued behind other streams' prefixes for a cache slot.
                await asyncio.wait_for(asyncio.shield(self._task), _END_WAIT_S)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            except asyncio.CancelledError:
                if not self._task.cancelled():  # the caller is being cancelled, not our task
                    raise

    async def aclose(self) -> None:
        self._ended = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._release()

    # --- the answer -------------------------------------------------------------------------------

    def answer(self, question: str) -> AsyncGenerator[Event, None]:
        """Live mode's answer: a plain answer written with the notes in view. Call after end()."""
        return self._live_answer(question)

    async def _live_answer(self, question: str) -> AsyncGenerator[Event, None]:
        # the runner's direct route, on the live answer role, with the notes in the prompt
        settings = self.settings.replace(direct_role=self.settings.live_answer_role)
        role = resolve_role(settings.direct_role, self.engine.roles())
        notes = self.notes
        text = prompts.live_answer_prompt(self.engine, role, question, notes, self.context)
        reason = self.context.noted(f"live: answered with {len(notes)} notes written while the question arrived")
        events = runner.run(self.engine, question, Plan.direct(reason), settings, request_id=self.request_id,
                            direct_prompt=text, context=self.context)
        async with contextlib.aclosing(events) as stream:
            async for event in stream:
                yield event

    # --- the background work -----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                if not self._wake.is_set():
                    self._idle.set()
                await self._wake.wait()
                self._wake.clear()
                text = self._text
                typed = text[:complete_prefix(text)].strip()
                if typed and typed != self._typed:
                    await (self._note_and_prefill(typed) if self.live else self._prefill(typed))
                if self._ended and not self._wake.is_set():
                    return
        except EngineError as exc:  # best effort: the answer still works, it just prefills more
            log.info("streamed prefill stopped: %s", exc)
        finally:
            self._idle.set()

    async def _prefill(self, typed: str, *, report: bool = True) -> None:
        if self._route is Route.DIRECT:
            head = prompts.direct_prompt_head(self.engine, self.role, typed, self.context)
        else:
            head = prompts.skeleton_prompt_head(self.engine, self.role, self._route, typed,
                                                difficulty=self.settings.rates_difficulty, context=self.context)
        await self._hold(head)
        self._typed = typed
        if report:
            self._report("")

    async def _note_and_prefill(self, typed: str) -> None:
        if not typed.startswith(self._typed):  # a revision reached noted text: those notes are stale
            self._turns = []
        await self._prefill(typed, report=False)
        note = None if self._ended else await self._note(typed)  # at the end the answer matters more
        if note is not None:
            self._turns.append((typed, note))
        self._report("" if note is None or _waits(note) else note)

    @property
    def notes(self) -> list[str]:
        """The notes worth showing the answer (WAIT replies left out), the latest few."""
        return [n for _, n in self._turns if not _waits(n)][-_MAX_NOTES:]

    async def _note(self, typed: str) -> str | None:
        """The model's note on the question so far, or None when the prompt ended meanwhile."""
        text = prompts.live_note_prompt(self.engine, self.role, typed, self.context)
        sampling = dataclasses.replace(self.settings.sampling, max_tokens=self.settings.live_note_tokens, stop=("\n",))
        parts: list[str] = []
        request = GenerateRequest(text, self.role, sampling, None, f"{self.request_id}/note" if self.request_id else "")
        async with contextlib.aclosing(metered(self.engine, request)) as stream:
            async for chunk in stream:
                parts.append(chunk.text)
                if self._ended:
                    return None
        return "".join(parts).strip() or "WAIT"

    async def _hold(self, head: str) -> None:
        """Open a prefix for `head` and wait until it is cached; the engine forks it from the previous one."""
        if head == self._held:
            return
        prefix = self.engine.prefix(self.role, head)
        await prefix.__aenter__()
        try:
            self._tokens = await prefix.ready()
        except BaseException:
            await prefix.aclose()
            raise
        old, self._prefix, self._held = self._prefix, prefix, head
        if old is not None:
            await old.aclose()

    def summary(self, note: str = "") -> TypingProgress:
        """Where the prefill stands: characters received, tokens cached, sentences processed."""
        return TypingProgress(len(self._text), self._tokens, len(_sentences(self._typed)) if self._typed else 0, note)

    def _report(self, note: str) -> None:
        self.progress.put_nowait(self.summary(note))

    async def _release(self) -> None:
        if self._prefix is not None:
            prefix, self._prefix, self._held = self._prefix, None, ""
            await prefix.aclose()


_END_WAIT_S = 10.0  # longest the answer waits for a prefill in flight at the end marker
_MAX_NOTES = 1  # each note reads the whole question so far, so the latest carries the rest; each costs prefill after the end


def _waits(note: str) -> bool:
    return note.strip().strip(".").upper() == "WAIT" or note.strip().upper().startswith("WAIT")


def _sentences(text: str) -> list[str]:
    """The sentences of text that ends at a sentence boundary (the blank line closes the last)."""
    return [s for s in split_sentences(text + "\n\n") if s.strip()]
