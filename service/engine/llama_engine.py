"""LlamaEngine: the Engine protocol over embedded llama.cpp contexts, one worker thread per role.

Owns model loading per role (blocking work done off the event loop), the asyncio face of the
workers (generate iterators, prefix handles), resident template prefixes and orderly shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

from espalier.planner.engine import (
    Chunk,
    EngineFault,
    EngineStats,
    GenerateRequest,
    InvalidRequest,
    Message,
    ModelIdentity,
    Pooling,
    Prefix,
    PrefixBase,
    Role,
    RoleNotLoaded,
    Speculation,
    role_entry,
)
from espalier.service.engine.calibrate import measure_curve
from espalier.service.engine.config import ConfigError, ContextConfig, EngineConfig
from espalier.service.engine.drafter import Drafter
from espalier.service.engine.embedder import RoleEmbedder
from espalier.service.engine.exact_rows import (
    MEASURE,
    PROBE_DEPTH,
    log_choice,
    measure_exact_rows,
    verify_rows_from,
)
from espalier.service.engine.native import Context, ContextParams, Model
from espalier.service.engine.scheduler import Scheduler
from espalier.service.engine.spec_policy import CostCurve, DraftSource, SpecPolicy
from espalier.service.engine.speculator import Speculator
from espalier.service.engine.worker import ContextWorker, Delivery, PrefixHolder

log = logging.getLogger(__name__)


class LlamaPrefix(PrefixBase):
    """A shared prefix handle (see espalier.planner.engine.Prefix): prefilled in the role's context on opening."""

    def __init__(self, engine: LlamaEngine, role: Role, text: str) -> None:
        super().__init__(role, text)
        self._engine = engine
        self._holder: PrefixHolder | None = None
        self._ready: asyncio.Future[int] | None = None

    def holder(self) -> PrefixHolder:
        """The prefix's sequence in the worker, opened (its prefill queued) on first use."""
        if self._holder is None:
            worker = self._engine.worker(self._role)
            self._ready = asyncio.get_running_loop().create_future()
            self._holder = worker.open_prefix(self._text, self._ready)
        return self._holder

    def _open(self) -> PrefixHolder:  # PrefixBase's hook for `async with`
        return self.holder()

    async def ready(self) -> int:
        self.holder()  # opened on first use
        assert self._ready is not None
        return await asyncio.shield(self._ready)

    async def aclose(self) -> None:
        if self._holder is not None:
            self._engine.worker(self._role).close_prefix(self._holder)
            if self._ready is not None and not self._ready.done():
                self._ready.cancel()


class LlamaEngine:
    """Build with `await LlamaEngine.load(config)`; close with `await engine.aclose()`."""

    def __init__(self, workers: dict[Role, ContextWorker], models: dict[Role, Model],
                 drafts: list[Model] | None = None) -> None:
        self._workers = workers
        self._models = models
        self._drafts = drafts or []
        self._closing = False
        self._embedders: dict[Role, RoleEmbedder] = {}
        self._identities: dict[Role, ModelIdentity] = {}

    @classmethod
    async def load(cls, config: EngineConfig) -> LlamaEngine:
        """Load every configured role (in a thread: loading takes seconds) and start its worker."""
        config.validate()
        workers: dict[Role, ContextWorker] = {}
        models: dict[Role, Model] = {}
        by_path: dict[Path, Model] = {}  # a draft that is also a role shares that role's weights
        extra: list[Model] = []  # drafts loaded only as drafts

        async def model_at(name: str, cfg: ContextConfig) -> Model:
            path = await asyncio.to_thread(_resolve, name, config.models_dir)
            if path not in by_path:
                by_path[path] = await asyncio.to_thread(Model, str(path), n_gpu_layers=cfg.n_gpu_layers,
                                                        verbose=config.verbose)
            return by_path[path]

        try:
            for role, cfg in config.roles().items():
                models[role] = await model_at(cfg.model, cfg)
            for role, cfg in config.roles().items():
                draft = None
                if cfg.draft:
                    draft = await model_at(cfg.draft, cfg)
                    if draft not in models.values():
                        extra.append(draft)
                    check_draft_vocab(models[role], draft)
                workers[role] = await asyncio.to_thread(_start_worker, role, models[role], cfg, draft)
                log.info("loaded %s model %s with %d slots%s", role.value, models[role].description, cfg.slots,
                         f", speculating ({cfg.draft_source}, default {cfg.speculation})" if cfg.speculates else "")
        except BaseException:
            engine = cls(workers, models, extra)
            await engine.aclose(0)
            for model in by_path.values():
                model.close()
            raise
        engine = cls(workers, models, extra)
        for role, text in config.resident_prefixes:
            if role in workers:
                await engine.add_resident_prefix(role, text)
        return engine

    # --- Engine protocol --------------------------------------------------------------------

    def roles(self) -> frozenset[Role]:
        return frozenset(self._workers)

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Chunk, None]:
        worker = self.worker(request.role)
        request.validate()
        if request.speculation not in tuple(Speculation):
            raise InvalidRequest(f"speculation must be auto, on or off (got {request.speculation!r})",
                                 field="speculation")
        if isinstance(request.prompt, str) and not request.prompt and request.prefix is None:
            raise InvalidRequest("the prompt is empty", field="prompt")
        parent = None
        if request.prefix is not None:
            if not isinstance(request.prefix, LlamaPrefix) or request.prefix.role != request.role:
                raise InvalidRequest("the prefix was opened on another engine or role", field="prefix")
            parent = request.prefix.holder()
        delivery = Delivery(asyncio.get_running_loop())
        job = worker.submit(request.prompt, request.sampling, parent, delivery, request.speculation,
                            request.top_logprobs, request.priority)
        try:
            while True:
                item = await delivery.queue.get()
                if isinstance(item, BaseException):
                    delivery.finished = True
                    raise item
                if item.finish is not None:
                    delivery.finished = True
                yield item
                if item.finish is not None:
                    return
        finally:
            if not delivery.finished:
                worker.cancel(job)  # frees the slot within one step

    def prefix(self, role: Role, text: str) -> Prefix:
        self.worker(role)
        return LlamaPrefix(self, role, text)

    async def add_resident_prefix(self, role: Role, text: str) -> int:
        """Prefill a template's fixed part once; later prompts starting with it fork from it."""
        worker = self.worker(role)
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        worker.open_prefix(text, ready)  # never closed: resident for the engine's life
        return await ready

    def chat_prompt(self, role: Role, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        # A pure string function over the template stored in the model: microseconds, and it never
        # touches a context, so calling it here does not block the loop or race the worker.
        model = self._models.get(role)
        if model is None:
            raise RoleNotLoaded(f"the {role.value} model is not loaded")
        return model.apply_chat_template([(m.role, m.content) for m in messages], add_generation_prompt)

    async def embed(self, role: Role, texts: Sequence[str], pooling: Pooling,
                    depth: float = 1.0) -> list[tuple[float, ...]]:
        worker = self.worker(role)
        try:
            pooling = Pooling(pooling)
        except ValueError:
            raise InvalidRequest(f"pooling must be mean or last (got {pooling!r})", field="pooling") from None
        embedder = self._embedders.get(role)
        if embedder is None:
            embedder = self._embedders[role] = RoleEmbedder(self._models[role], worker.ctx.params.threads)
        return await embedder.embed(texts, pooling, depth)

    async def model_identity(self, role: Role) -> ModelIdentity:
        self.worker(role)
        if role not in self._identities:
            from espalier.service.engine.models import file_sha256

            path = Path(self._models[role].path)
            try:
                digest = await asyncio.to_thread(file_sha256, path)
            except OSError as exc:  # the file went away or became unreadable since it was loaded
                raise EngineFault(f"cannot hash the {role.value} model file {path.name}: {exc}") from exc
            self._identities[role] = ModelIdentity(path.name, digest)
        return self._identities[role]

    def free_slots(self, role: Role) -> int:
        worker = self._workers.get(role)
        return worker.free_slots() if worker is not None else 0

    def stats(self) -> EngineStats:
        return EngineStats(tuple(w.stats() for w in self._workers.values()))

    async def kv_positions(self, role: Role) -> dict[str, list[int]]:
        """Highest KV position per sequence id in the role's context (and its draft's); -1 = empty."""
        done: asyncio.Future[dict[str, list[int]]] = asyncio.get_running_loop().create_future()
        self.worker(role).kv_positions(done)
        return await done

    def speculation_choices(self, role: Role) -> dict[int, int]:
        """How often the cost model chose each k so far (empty without speculation)."""
        spec = self.worker(role).spec_stats()
        return dict(spec.choices) if spec is not None else {}

    def model(self, role: Role) -> Model:
        """The loaded model of a role (for tokenization in tools and benchmarks)."""
        self.worker(role)
        return self._models[role]

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Stop taking work, let running sequences finish for up to grace_s, free native memory."""
        self._closing = True
        for worker in self._workers.values():
            worker.stop(grace_s)
        for worker in self._workers.values():
            await asyncio.to_thread(worker.join)
        for embedder in self._embedders.values():
            await asyncio.to_thread(embedder.close)
        self._embedders.clear()
        for model in {id(m): m for m in (*self._models.values(), *self._drafts)}.values():
            model.close()  # a model shared by two roles or as a draft is freed once
        self._workers.clear()
        self._models.clear()
        self._drafts.clear()

    # --- the thread boundary ----------------------------------------------------------------------

    def worker(self, role: Role) -> ContextWorker:
        """The role's context worker (for this engine's own prefixes); EngineClosed while
        closing, RoleNotLoaded for a role not loaded."""
        return role_entry(self._workers, role, closing=self._closing, missing="model is not loaded",
                          held="loaded")


def _resolve(model: str, models_dir: str | None) -> Path:
    from espalier.service.engine.models import resolve_model

    return resolve_model(model, Path(models_dir) if models_dir else None)


def check_draft_vocab(target: Model, draft: Model) -> None:
    """Refuse a draft whose token ids mean other text: its drafts would never be accepted, or worse."""
    if target.vocab_signature() != draft.vocab_signature():
        raise ConfigError(
            f"the draft model {Path(draft.path).name} ({draft.n_vocab} tokens) does not share the vocabulary of "
            f"{Path(target.path).name} ({target.n_vocab} tokens): pick a draft from the same model family")


def _start_worker(role: Role, model: Model, cfg: ContextConfig, draft: Model | None) -> ContextWorker:
    sched = Scheduler(slots=cfg.slots, prefix_slots=cfg.prefix_slots, n_ctx=cfg.n_ctx, n_batch=cfg.n_batch,
                      prefill_chunk=cfg.prefill_chunk, max_waiting=cfg.max_waiting)
    params = ContextParams(n_ctx=cfg.n_ctx, n_batch=cfg.n_batch, n_seq_max=sched.n_seq_max,
                           threads=cfg.n_threads, threads_batch=cfg.n_threads_batch, flash_attn=cfg.flash_attn)
    ctx = Context(model, params)
    try:
        # What a decode step of n tokens costs on this hardware, measured once (about a second): the
        # speculation policy's input, and the batch cost the planner reads (RoleStats.batch_cost).
        sample = model.tokenize("The quick brown fox jumps over the lazy dog. " * 4)
        curve = measure_curve(ctx, params.n_seq_max - 1, sample, max_tokens=64 if cfg.speculates else 16)
        model.warm_token_tables()  # sampling's per-token tables, now rather than in a first answer
        speculator = _speculator(model, ctx, cfg, draft, params, curve, sample) if cfg.speculates else None
    except BaseException:
        ctx.close()
        raise
    return ContextWorker(role, model, ctx, sched, speculator, batch_cost=curve)


def _speculator(model: Model, ctx: Context, cfg: ContextConfig, draft: Model | None,
                params: ContextParams, target_curve: CostCurve, sample: list[int]) -> Speculator:
    """Measure the draft's decode costs (the target's are measured already) and build the speculator."""
    scratch = params.n_seq_max - 1  # no sequence uses any slot before the worker starts
    dctx = Context(draft, params) if draft is not None else None
    try:
        draft_curve = measure_curve(dctx, scratch, sample, max_tokens=max(16, cfg.slots)) if dctx else None
    except BaseException:
        if dctx is not None:
            dctx.close()
        raise
    exact = -1
    rows = cfg.verify_rows
    if rows == MEASURE:
        exact = measure_exact_rows(ctx, scratch, _probe_tokens(model), most=cfg.draft_max + 1,
                                   depth=min(PROBE_DEPTH, params.n_ctx - cfg.draft_max - 2))
        rows = verify_rows_from(exact)
        log_choice(model.description, exact, rows)
    policy = SpecPolicy(target_curve, draft_curve, max_k=cfg.draft_max, verify_rows=rows)
    drafter = None
    if draft is not None and dctx is not None:
        drafter = Drafter(draft, dctx, p_min=cfg.draft_p_min,
                          observe=lambda n, s: policy.observe(draft_tokens=n, draft_s=s))
    log.info("speculation costs: target %s, draft %s", target_curve.points, draft_curve.points if draft_curve else None)
    return Speculator(policy, DraftSource(cfg.draft_source), drafter, Speculation(cfg.speculation), exact_rows=exact)


def _probe_tokens(model: Model) -> list[int]:
    return model.tokenize("Espalier trains a fruit tree flat against a wall, one tier of branches at a time. " * 40)
