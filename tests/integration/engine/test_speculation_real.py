"""Speculative decoding on real models: identical greedy output, KV freed in both contexts, vocab check.

The target/draft pair is the default pair (large verifies, small drafts), as shipped. Outputs are
short; speed is measured by `espalier bench spec`, never asserted here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from espalier.planner.engine import GenerateRequest, Message, Role, Sampling
from espalier.service.engine.config import ConfigError, ContextConfig, EngineConfig
from espalier.service.engine.llama_engine import LlamaEngine, check_draft_vocab
from espalier.service.engine.native import Model
from espalier.service.engine.spec_policy import DraftSource

pytestmark = pytest.mark.model

QUESTIONS = ("List three uses of copper.", "Explain what a hash table is.", "Give two tips for sleeping well.",
             "Why do leaves change colour in autumn?")
# Prompts that ask the model to repeat text: prompt lookup finds runs to copy, and misses too.
ECHO = ("Repeat this list exactly, then add one item: apples, pears, plums, cherries, grapes.",
        "Copy this sentence twice: The quick brown fox jumps over the lazy dog.")


def _load(cfg: EngineConfig) -> Iterator[LlamaEngine]:
    engine = asyncio.run(LlamaEngine.load(cfg))
    yield engine
    asyncio.run(engine.aclose())


# Exact greedy output under speculation holds while a verify call's rows take the same kernels as one
# token alone: on the CPUs seen so far up to 7 rows, and only while the cache's used range stays within
# its first 256 cells (service/engine/exact_rows.py). These prompts are short and the limit is pinned,
# so the tests check speculation's own bookkeeping rather than the hardware's kernels.
EXACT_ROWS = 7


@pytest.fixture(scope="module")
def pair_engine(small_model: Path) -> Iterator[LlamaEngine]:
    from espalier.service.engine.models import resolve_model

    large = resolve_model("large")  # `make test` fetches both default models
    yield from _load(EngineConfig(large=ContextConfig(model=str(large), slots=4, n_ctx=2048, n_batch=256, threads=2,
                                                      draft=str(small_model), draft_max=4,
                                                      verify_rows=EXACT_ROWS)))


@pytest.fixture(scope="module")
def lookup_engine(small_model: Path) -> Iterator[LlamaEngine]:
    yield from _load(EngineConfig(small=ContextConfig(model=str(small_model), slots=4, n_ctx=2048, n_batch=256,
                                                      threads=2, draft_source=DraftSource.LOOKUP,
                                                      verify_rows=EXACT_ROWS)))


def prompt(engine: LlamaEngine, role: Role, text: str) -> str:
    return engine.chat_prompt(role, [Message("user", text)])


async def answers(engine: LlamaEngine, role: Role, texts: tuple[str, ...], speculation: str,
                  max_tokens: int = 32) -> list[str]:
    async def one(text: str) -> str:
        parts = []
        req = GenerateRequest(prompt(engine, role, text), role, Sampling(max_tokens=max_tokens), speculation=speculation)
        async with asyncio.timeout(300):
            async for chunk in engine.generate(req):
                parts.append(chunk.text)
        return "".join(parts)
    return list(await asyncio.gather(*(one(t) for t in texts)))


async def wait_empty(engine: LlamaEngine, role: Role) -> dict[str, list[int]]:
    async with asyncio.timeout(20):
        while True:
            kv = await engine.kv_positions(role)
            if engine.stats().slots_busy == 0 and all(p == -1 for ps in kv.values() for p in ps):
                return kv
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("count", [1, 4])
async def test_forced_speculation_gives_plain_greedy_output(pair_engine: LlamaEngine, count: int) -> None:
    before = pair_engine.stats().role(Role.LARGE)
    assert before is not None and before.verify_cost and before.verify_cost[0] == (1, 1.0)
    plain = await answers(pair_engine, Role.LARGE, QUESTIONS[:count], "off")
    spec = await answers(pair_engine, Role.LARGE, QUESTIONS[:count], "on")
    assert spec == plain
    after = pair_engine.stats().role(Role.LARGE)
    assert after is not None
    drafted = after.spec_drafted - before.spec_drafted
    accepted = after.spec_accepted - before.spec_accepted
    assert drafted > 0 and 0 < accepted < drafted  # drafts were kept and rejected: both paths ran
    await wait_empty(pair_engine, Role.LARGE)


async def test_prompt_lookup_gives_plain_greedy_output(lookup_engine: LlamaEngine) -> None:
    before = lookup_engine.stats().role(Role.SMALL)
    assert before is not None
    plain = await answers(lookup_engine, Role.SMALL, ECHO * 2, "off", max_tokens=40)
    spec = await answers(lookup_engine, Role.SMALL, ECHO * 2, "on", max_tokens=40)
    assert spec == plain
    after = lookup_engine.stats().role(Role.SMALL)
    assert after is not None and after.spec_drafted > before.spec_drafted
    assert after.spec_accepted > before.spec_accepted
    await wait_empty(lookup_engine, Role.SMALL)


async def test_a_minimum_length_holds_under_speculation_too(lookup_engine: LlamaEngine) -> None:
    # pre-filled with a list's first line, the small model ends at once: the defect min_tokens prevents
    text = lookup_engine.chat_prompt(Role.SMALL, [Message("user", "List three fruits, one per line.")]) + "1. Apple"

    async def run(min_tokens: int, speculation: str) -> str:
        # the model's next line is the list's next item: a stop there ends the reply empty
        req = GenerateRequest(text, Role.SMALL, Sampling(max_tokens=12, min_tokens=min_tokens, stop=("\n2",)),
                              speculation=speculation)
        async with asyncio.timeout(120):
            return "".join([c.text async for c in lookup_engine.generate(req)])

    assert await run(0, "off") == ""
    plain = await run(4, "off")
    assert plain.strip() and "\n" not in plain
    assert await run(4, "on") == plain  # verified drafts obey the same ban, row by row
    await wait_empty(lookup_engine, Role.SMALL)


async def test_logprob_requests_are_never_speculated(lookup_engine: LlamaEngine) -> None:
    text = prompt(lookup_engine, Role.SMALL, ECHO[0])
    before = lookup_engine.stats().role(Role.SMALL)
    assert before is not None
    request = GenerateRequest(text, Role.SMALL, Sampling(max_tokens=40), speculation="on", top_logprobs=2)
    tokens = entries = 0
    parts = []
    async with asyncio.timeout(300):
        async for chunk in lookup_engine.generate(request):
            tokens += chunk.tokens
            entries += len(chunk.logprobs)
            parts.append(chunk.text)
    after = lookup_engine.stats().role(Role.SMALL)
    assert after is not None and after.spec_drafted == before.spec_drafted  # plain decoding, forced
    assert tokens > 0 and entries == tokens
    assert "".join(parts) == (await answers(lookup_engine, Role.SMALL, ECHO[:1], "on", max_tokens=40))[0]
    await wait_empty(lookup_engine, Role.SMALL)


async def test_cancelling_while_verifying_frees_both_contexts(pair_engine: LlamaEngine) -> None:
    async def run(text: str, stop_after: int | None) -> int:
        req = GenerateRequest(prompt(pair_engine, Role.LARGE, text), Role.LARGE, Sampling(max_tokens=48),
                              speculation="on")
        seen = 0
        gen = pair_engine.generate(req)
        try:
            async for _ in gen:
                seen += 1
                if stop_after is not None and seen >= stop_after:
                    break  # leaves the sequence mid-run: its drafts are in flight step after step
        finally:
            await gen.aclose()
        return seen

    done = await asyncio.gather(run(QUESTIONS[0], 3), run(QUESTIONS[1], None), run(QUESTIONS[2], 5))
    assert done[0] == 3 and done[2] == 5 and done[1] > 5
    kv = await wait_empty(pair_engine, Role.LARGE)
    assert set(kv) == {"target", "draft"}


async def test_bad_speculation_value_is_refused(lookup_engine: LlamaEngine) -> None:
    from espalier.planner.engine import InvalidRequest

    with pytest.raises(InvalidRequest) as err:
        await answers(lookup_engine, Role.SMALL, ("hi",), "sometimes")
    assert err.value.field == "speculation"


class _OtherVocab:
    """A stand-in for a model of another family: same interface, other token texts."""

    path = "/models/other-family.gguf"
    n_vocab = 32000

    def vocab_signature(self) -> tuple[int, tuple[bytes, ...]]:
        return 32000, (b"<unk>", b"<s>")


def test_a_draft_with_another_vocabulary_is_refused(small_model: Path) -> None:
    target = Model(str(small_model))
    try:
        check_draft_vocab(target, target)  # the same tokenizer passes
        with pytest.raises(ConfigError, match="does not share the vocabulary"):
            check_draft_vocab(target, _OtherVocab())  # type: ignore[arg-type]
    finally:
        target.close()
