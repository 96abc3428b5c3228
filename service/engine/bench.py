"""`espalier bench engine`: what batching and prefix forks buy on this machine, measured.

Owns the engine benchmark: aggregate decode throughput of the engine at 1, 2, 4, 8 concurrent
sequences against a bare llama_decode loop on a context with the same settings (measured in the same
run, so the ratio is fair), and how many prompt tokens a shared-prefix fork saves.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass

from espalier.planner.engine import GenerateRequest, Message, Role, Sampling
from espalier.service.console import progress_lines
from espalier.service.engine.config import ContextConfig, EngineConfig
from espalier.service.engine.llama_engine import LlamaEngine
from espalier.service.engine.native import Context, ContextParams, Model, SamplerChain

TOPICS = ("the sea", "a clockmaker", "winter in a mountain village", "a lost robot", "the first train",
          "a lighthouse keeper", "an old library", "a desert caravan")


@dataclass(frozen=True)
class BenchSettings:
    model: str = "small"
    tokens: int = 128  # generated tokens per sequence
    counts: tuple[int, ...] = (1, 2, 4, 8)
    prefix_tokens: int = 200
    threads: int = 0
    rounds: int = 3
    gpu_layers: int = 0  # layers offloaded on a GPU build (-1 = all)


_progress = progress_lines("bench engine")


def _prompts(engine: LlamaEngine, n: int) -> list[str]:
    return [engine.chat_prompt(Role.SMALL, [Message("user", f"Write a long, detailed story about {TOPICS[i % 8]}.")])
            for i in range(n)]


async def _engine_rate(engine: LlamaEngine, prompts: list[str], tokens: int) -> float:
    """Aggregate tok/s once every sequence is decoding (prefill excluded, as in the raw loop)."""
    firsts: list[float] = []
    stamps: list[tuple[float, int]] = []

    async def one(prompt: str) -> None:
        seen = False
        async for chunk in engine.generate(GenerateRequest(prompt, Role.SMALL, Sampling(max_tokens=tokens))):
            now = time.perf_counter()
            if not seen and chunk.tokens:
                seen = True
                firsts.append(now)
            else:
                stamps.append((now, chunk.tokens))

    await asyncio.gather(*(one(p) for p in prompts))
    start = max(firsts)
    window = [(t, n) for t, n in stamps if t > start]
    end = max((t for t, _ in window), default=start)
    return sum(n for _, n in window) / (end - start) if end > start else 0.0


def _raw_rate(model: Model, params: ContextParams, prompts: list[list[int]], tokens: int) -> float:
    """A bare llama_decode loop: prefill all prompts, then one token per sequence per decode."""
    ctx = Context(model, params)
    samplers = [SamplerChain(Sampling(), model.n_vocab) for _ in prompts]
    try:
        batch = ctx.batch
        batch.clear()
        idx = [batch.add(i, p, 0, True) for i, p in enumerate(prompts)]
        if ctx.decode() != 0:
            raise RuntimeError("raw prefill failed")
        next_tok = [s.sample(ctx, j) for s, j in zip(samplers, idx)]
        pos = [len(p) for p in prompts]
        start = time.perf_counter()
        for _ in range(tokens - 1):
            batch.clear()
            for i, t in enumerate(next_tok):
                batch.add(i, (t,), pos[i], True)
                pos[i] += 1
            if ctx.decode() != 0:
                raise RuntimeError("raw decode failed")
            next_tok = [s.sample(ctx, i) for i, s in enumerate(samplers)]
        elapsed = time.perf_counter() - start
        return len(prompts) * (tokens - 1) / elapsed
    finally:
        for s in samplers:
            s.close()
        ctx.close()


async def _prefix_reuse(engine: LlamaEngine, n_prefix: int) -> dict[str, float]:
    """Prompt tokens prefilled for 4 requests sharing a prefix: with a fork over without."""
    model = engine.model(Role.SMALL)
    words = " ".join(f"fact {i}: the {TOPICS[i % 8]} matters." for i in range(n_prefix))

    def first_tokens_text() -> str:  # llama.cpp calls stay off the event loop
        toks = model.tokenize(words)
        return b"".join(model.piece(t) for t in toks[:n_prefix]).decode(errors="ignore") + "\n"

    shared = await asyncio.to_thread(first_tokens_text)
    suffixes = [f"Question {i}: which fact comes first?\n" for i in range(4)]
    sampling = Sampling(max_tokens=2)

    async def drain(req: GenerateRequest) -> None:
        async for _ in engine.generate(req):
            pass

    before = engine.stats().role(Role.SMALL)
    assert before is not None
    t0 = time.perf_counter()
    await asyncio.gather(*(drain(GenerateRequest(shared + s, Role.SMALL, sampling)) for s in suffixes))
    t_plain = time.perf_counter() - t0
    mid = engine.stats().role(Role.SMALL)
    assert mid is not None
    t0 = time.perf_counter()
    async with engine.prefix(Role.SMALL, shared) as prefix:
        await asyncio.gather(*(drain(GenerateRequest(s, Role.SMALL, sampling, prefix=prefix)) for s in suffixes))
    t_fork = time.perf_counter() - t0
    after = engine.stats().role(Role.SMALL)
    assert after is not None
    plain = mid.prefilled_tokens - before.prefilled_tokens
    forked = after.prefilled_tokens - mid.prefilled_tokens
    return {"prefix_reuse": round(forked / plain, 3), "prefilled_without_fork": plain,
            "prefilled_with_fork": forked, "seconds_without_fork": round(t_plain, 2),
            "seconds_with_fork": round(t_fork, 2)}


async def run_engine_bench(s: BenchSettings) -> dict[str, object]:
    threads = s.threads or os.cpu_count() or 1
    # room for every sequence's prompt and tokens at the largest count, and the prefix test's forks
    n_ctx = max(4096, max(s.counts) * (s.tokens + 96) + 8 * s.prefix_tokens)
    cfg = ContextConfig(model=s.model, slots=max(s.counts), n_ctx=n_ctx, n_batch=512, threads=threads,
                        n_gpu_layers=s.gpu_layers)
    _progress(f"loading {s.model} model ({threads} threads, {s.gpu_layers} GPU layers)")
    engine = await LlamaEngine.load(EngineConfig(small=cfg))
    try:
        model = engine.model(Role.SMALL)
        params = ContextParams(n_ctx=cfg.n_ctx, n_batch=cfg.n_batch, n_seq_max=cfg.slots + cfg.prefix_slots,
                               threads=threads, threads_batch=threads, flash_attn=cfg.flash_attn)
        await _engine_rate(engine, _prompts(engine, 1), 8)  # warm-up
        # This machine's speed drifts by tens of percent within minutes (shared cores), so engine and
        # raw runs alternate, round after round, and each figure is the median of its rounds.
        engine_runs: dict[int, list[float]] = {n: [] for n in s.counts}
        raw_runs: dict[int, list[float]] = {n: [] for n in s.counts}
        token_lists = {n: [await asyncio.to_thread(model.tokenize, p) for p in _prompts(engine, n)] for n in s.counts}
        for r in range(s.rounds):
            for n in s.counts:
                _progress(f"round {r + 1}/{s.rounds}: {n} sequence(s) x {s.tokens} tokens, engine then raw loop")
                engine_runs[n].append(await _engine_rate(engine, _prompts(engine, n), s.tokens))
                raw_runs[n].append(await asyncio.to_thread(_raw_rate, model, params, token_lists[n], s.tokens))
                _progress(f"  engine {engine_runs[n][-1]:.1f} tok/s, raw {raw_runs[n][-1]:.1f} tok/s")
        results = [{"sequences": n, "tokens_per_s": round(statistics.median(engine_runs[n]), 2),
                    "raw_tokens_per_s": round(statistics.median(raw_runs[n]), 2),
                    "tokens_per_s_rounds": [round(x, 2) for x in engine_runs[n]],
                    "raw_tokens_per_s_rounds": [round(x, 2) for x in raw_runs[n]]} for n in s.counts]
        _progress(f"prefix reuse: 4 forks of a {s.prefix_tokens}-token prefix")
        reuse = await _prefix_reuse(engine, s.prefix_tokens)
    finally:
        await engine.aclose()
    by_n = {r["sequences"]: r for r in results}
    out: dict[str, object] = {"model": model.description, "model_role": s.model, "threads": threads,
                              "gpu_layers": s.gpu_layers, "tokens_per_sequence": s.tokens, "rounds": s.rounds,
                              "results": results}
    if 1 in by_n:  # what batching buys at each count: all sequences' tokens/s over one sequence's
        out["gain_over_one"] = {str(n): round(r["tokens_per_s"] / by_n[1]["tokens_per_s"], 3) for n, r in by_n.items()}
    if 4 in by_n and 1 in by_n:
        out["speedup_4"] = round(by_n[4]["tokens_per_s"] / by_n[1]["tokens_per_s"], 3)
        out["raw_speedup_4"] = round(by_n[4]["raw_tokens_per_s"] / by_n[1]["raw_tokens_per_s"], 3)
    if 4 in by_n:
        out["engine_vs_raw_4"] = round(by_n[4]["tokens_per_s"] / by_n[4]["raw_tokens_per_s"], 3)
    out.update(reuse)
    return out
