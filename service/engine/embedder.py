"""Embeddings for the router: one vector per text from a role's model, apart from decoding.

Owns a small embedding context per role (created on first use, from the role's loaded weights) and
the one thread that may touch it; pooling (mean or last token) is done here from every token's final
hidden state. Decoding never waits for it and it never touches a decoding sequence's KV cache; on
2 CPU cores the two share the cores, as any two requests do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence

from espalier.planner.engine import InvalidRequest, Pooling
from espalier.service.engine.native import EmbeddingContext, Model

# Cells of the embedding context: a router question with its instruction fits (the router cuts the
# question to RouterWeights.max_question_chars); longer texts are refused, not truncated silently.
EMBED_CTX = 1024


class RoleEmbedder:
    def __init__(self, model: Model, threads: int) -> None:
        self._model = model
        self._threads = threads
        self._ctx: EmbeddingContext | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="espalier-embed")

    async def embed(self, texts: Sequence[str], pooling: Pooling, depth: float) -> list[tuple[float, ...]]:
        if not 0.0 < depth <= 1.0:
            raise InvalidRequest(f"depth must be in (0, 1] (got {depth})", field="depth")
        loop = asyncio.get_running_loop()
        out: list[tuple[float, ...]] = []
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidRequest(f"texts[{i}] is empty", field="texts")
            # one text per call: a cancelled caller stops at the next text (a call takes ~0.1 s)
            out.append(await loop.run_in_executor(self._pool, self._embed_one, i, text, pooling, depth))
        return out

    def _embed_one(self, index: int, text: str, pooling: Pooling, depth: float) -> tuple[float, ...]:
        if self._ctx is None:
            self._ctx = EmbeddingContext(self._model, n_ctx=EMBED_CTX, threads=self._threads)
        tokens = self._model.tokenize(text)
        if len(tokens) > self._ctx.n_ctx:
            raise InvalidRequest(f"texts[{index}] is {len(tokens)} tokens, over the embedding context's "
                                 f"{self._ctx.n_ctx}", field="texts")
        layer = round(depth * self._ctx.n_layer) - 1  # the output of that layer (0-based)
        states = self._ctx.hidden_states(tokens, layer if layer < self._ctx.n_layer - 1 else None)
        vector = states[-1] if pooling is Pooling.LAST else states.mean(axis=0)
        return tuple(float(x) for x in vector)

    def close(self) -> None:
        """Wait for a text in flight, then free the context (before the model it was made from)."""
        self._pool.shutdown(wait=True)
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None
