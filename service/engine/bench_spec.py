"""`espalier bench spec`: what speculative decoding buys (or costs) on this machine, measured.

Owns the speculation benchmark: the target (large default) with a draft (small default) loaded once;
for 1 and 4 concurrent sequences, plain decoding against speculation on `auto` and forced `on`,
alternated over rounds in one run so machine noise hits every mode alike; acceptance, the k the
cost model chose, whether greedy output stayed identical, and the measured verify costs.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from dataclasses import dataclass

from espalier.planner.engine import GenerateRequest, Message, Role, Sampling, Speculation
from espalier.service.console import progress_lines
from espalier.service.engine.config import ContextConfig, EngineConfig
from espalier.service.engine.llama_engine import LlamaEngine
from espalier.service.engine.spec_policy import DraftSource

# Point-expansion-like requests: the shape of text Espalier decodes most.
QUESTIONS = (
    "Explain how a refrigerator keeps food cold, step by step.",
    "Describe three habits that help people sleep better, with a reason for each.",
    "What are the main differences between a list and a tuple in Python?",
    "Give practical advice for a first job interview.",
    "Explain why the sky is blue to a ten-year-old.",
    "Summarise the water cycle in a short paragraph.",
    "List the steps to plant a tomato seedling.",
    "How does compound interest work? Give an example.",
)


@dataclass(frozen=True)
class SpecBenchSettings:
    target: str = "large"
    draft: str = "small"
    source: str = "model"  # model | lookup | both
    tokens: int = 64
    counts: tuple[int, ...] = (1, 4)
    rounds: int = 2
    threads: int = 0
    gpu_layers: int = 0
    draft_max: int = 8
    verify_rows: int = -1  # measured at start-up, as `espalier serve` does by default


_progress = progress_lines("bench spec")


@dataclass
class _Run:
    seconds: float
    tokens: int
    texts: list[str]
    drafted: int
    accepted: int
    ks: Counter[int]


def first_difference(expected: list[_Run], got: list[_Run]) -> dict[str, object] | None:
    """Where `got` first departs from `expected`, round by round and sequence by sequence: the round,
    the sequence, the character offset and the text on each side around it (None when identical)."""
    for round_, (a, b) in enumerate(zip(expected, got, strict=True)):
        for seq, (x, y) in enumerate(zip(a.texts, b.texts, strict=True)):
            if x == y:
                continue
            at = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
            return {"round": round_, "sequence": seq, "offset": at, "common": x[max(0, at - 40):at],
                    "expected": x[at:at + 40], "got": y[at:at + 40]}
    return None


async def _run(engine: LlamaEngine, prompts: list[str], tokens: int, mode: Speculation) -> _Run:
    before = engine.stats().role(Role.LARGE)
    k_before = Counter(engine.speculation_choices(Role.LARGE))

    async def one(prompt: str) -> tuple[str, int]:
        parts: list[str] = []
        count = 0
        req = GenerateRequest(prompt, Role.LARGE, Sampling(max_tokens=tokens), speculation=mode)
        async for chunk in engine.generate(req):
            parts.append(chunk.text)
            count += chunk.tokens
        return "".join(parts), count

    t0 = time.perf_counter()
    done = await asyncio.gather(*(one(p) for p in prompts))
    seconds = time.perf_counter() - t0
    after = engine.stats().role(Role.LARGE)
    assert before is not None and after is not None
    ks = Counter(engine.speculation_choices(Role.LARGE))
    ks.subtract(k_before)
    return _Run(seconds, sum(n for _, n in done), [t for t, _ in done], after.spec_drafted - before.spec_drafted,
                after.spec_accepted - before.spec_accepted, +ks)


async def run_spec_bench(s: SpecBenchSettings) -> dict[str, object]:
    source = s.source
    cfg = EngineConfig(large=ContextConfig(
        model=s.target, slots=max(s.counts), n_ctx=4096, n_batch=512, threads=s.threads,
        n_gpu_layers=s.gpu_layers, draft=s.draft if source != "lookup" else "", draft_source=DraftSource(source),
        speculation=Speculation.AUTO, draft_max=s.draft_max, verify_rows=s.verify_rows))
    _progress(f"loading target {s.target} and draft {s.draft if source != 'lookup' else '(prompt lookup)'}; "
              "measuring decode costs")
    t0 = time.perf_counter()
    engine = await LlamaEngine.load(cfg)
    _progress(f"loaded and calibrated in {time.perf_counter() - t0:.1f} s")
    try:
        stats = engine.stats().role(Role.LARGE)
        assert stats is not None
        modes = (Speculation.OFF, Speculation.AUTO, Speculation.ON)
        runs: dict[tuple[int, Speculation], list[_Run]] = {}
        total = len(s.counts) * s.rounds * len(modes)
        done = 0
        for n in s.counts:
            prompts = [engine.chat_prompt(Role.LARGE, [Message("user", q)]) for q in QUESTIONS[:n]]
            for r in range(s.rounds):
                order = modes[r % 3:] + modes[:r % 3]  # rotate which mode runs first each round
                for mode in order:
                    run = await _run(engine, prompts, s.tokens, mode)
                    runs.setdefault((n, mode), []).append(run)
                    done += 1
                    _progress(f"{done}/{total} {n} seq {mode.value:>4}: {run.tokens / run.seconds:6.2f} tok/s"
                              + (f", accepted {run.accepted}/{run.drafted}" if run.drafted else ""))
        results = []
        for n in s.counts:
            plain = runs[(n, Speculation.OFF)]
            plain_rate = statistics.median(r.tokens / r.seconds for r in plain)
            for mode in (Speculation.AUTO, Speculation.ON):
                spec = runs[(n, mode)]
                rate = statistics.median(r.tokens / r.seconds for r in spec)
                drafted = sum(r.drafted for r in spec)
                accepted = sum(r.accepted for r in spec)
                ks = sum((r.ks for r in spec), Counter())
                results.append({
                    "sequences": n, "mode": mode.value,
                    "tokens_per_s_plain": round(plain_rate, 2), "tokens_per_s_spec": round(rate, 2),
                    "speedup": round(rate / plain_rate, 3),
                    "acceptance_rate": round(accepted / drafted, 3) if drafted else None,
                    "drafted_tokens": drafted,
                    "identical_greedy": all(a.texts == b.texts for a, b in zip(spec, plain, strict=True)),
                    # plain greedy decoding against itself, round by round: if it differs, the
                    # difference above is not speculation's but the machine's (threads, batch shapes)
                    "plain_repeatable": first_difference(plain[:1] * len(plain), plain) is None,
                    "first_difference": first_difference(plain, spec),
                    "chosen_k": ks.most_common(1)[0][0] if ks else 0,
                    "k_histogram": dict(sorted(ks.items())),
                })
        return {
            "target": s.target, "draft": s.draft if source != "lookup" else None, "source": source,
            "tokens_per_sequence": s.tokens, "rounds": s.rounds, "verify_rows_setting": s.verify_rows,
            # the limit in use (0 = none) and, when measured, the most rows the start-up probe found exact
            "verify_rows": stats.verify_rows, "exact_rows": stats.exact_rows,
            "verify_cost": {str(k): c for k, c in stats.verify_cost},
            "results": results,
        }
    finally:
        await engine.aclose()
