"""Typed, validated settings of the embedded engine (one block per model role).

Validation happens once, at start-up, with messages that name the setting and the allowed range.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field

from espalier.planner.engine import Role, Speculation
from espalier.planner.fields import field_meta, first_bad_field
from espalier.service.engine.spec_policy import DraftSource


class ConfigError(ValueError):
    """A setting is out of range or inconsistent; the message names it."""


class FlashAttn(enum.StrEnum):
    AUTO = "auto"  # llama.cpp decides per device
    ON = "on"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class ContextConfig:
    """One llama context: a model and how it is run. The server's `[large]` and `[small]` settings."""

    model: str = field(default="small", metadata=field_meta(
        "'small', 'large' (the default models, fetched with `espalier models fetch`) or a GGUF path"))
    # 16: a skeleton answer runs up to 10 points and its opening at once, and even on 2 CPU cores a batch
    # of 16 decodes 1.6x the tokens/s of 8 (`bench engine --model large --sequences 8 12 16`: 57, 76, 92
    # tok/s on 2026-12-01).
    slots: int = field(default=16, metadata=field_meta("sequences decoded together (parallel points)", 1, 64))
    n_ctx: int = field(default=8192, metadata=field_meta("KV cache cells shared by all sequences", 256, 1 << 20))
    n_batch: int = field(default=512, metadata=field_meta("most tokens one llama_decode call takes", 8, 8192))
    prefill_chunk: int = field(default=64, metadata=field_meta(
        "prompt tokens per step while other sequences decode", 1, 8192))
    prefix_slots: int = field(default=16, metadata=field_meta(
        "sequence ids for shared, resident and streamed-prompt prefixes", 1, 64))
    max_waiting: int = field(default=64, metadata=field_meta(
        "sequences queued for a slot before new ones are refused", 0, 100_000))
    threads: int = field(default=0, metadata=field_meta("CPU threads; 0 = all cores", 0, 1024))
    threads_batch: int = field(default=0, metadata=field_meta("CPU threads for prompt batches; 0 = threads", 0, 1024))
    n_gpu_layers: int = field(default=0, metadata=field_meta(
        "layers offloaded to the GPU on a CUDA/Metal/Vulkan build; -1 = all", -1, 10_000))
    flash_attn: FlashAttn = field(default=FlashAttn.AUTO, metadata=field_meta("flash attention"))
    # Speculative decoding (SeeD): a draft proposes tokens for every running sequence, this context
    # verifies them in one batch.
    draft: str = field(default="", metadata=field_meta(
        "draft model for speculative decoding ('small', 'large' or a GGUF path with this model's "
        "vocabulary); empty = none"))
    draft_source: DraftSource = field(default=DraftSource.MODEL, metadata=field_meta(
        "where drafts come from: the draft model, prompt lookup (n-gram copies, no model needed) or both"))
    speculation: Speculation = field(default=Speculation.AUTO, metadata=field_meta(
        "default per request: auto (a cost model measured at start-up decides, never a loss), on, off",
        choices=("auto", "on", "off")))
    draft_max: int = field(default=8, metadata=field_meta("most drafted tokens per sequence per step", 0, 32))
    draft_p_min: float = field(default=0.3, metadata=field_meta(
        "a draft stops where its top token is less likely than this", 0, 1, hi_open=True))
    # Whether a row limit keeps greedy output identical to plain decoding depends on the hardware's kernels
    # and on how much of the KV cache is in use (service/engine/exact_rows.py), so by default it is measured
    # at start-up: the largest exact count, or no limit where none keeps output exact.
    verify_rows: int = field(default=-1, metadata=field_meta(
        "most tokens per verify call: -1 = measure at start-up the most that keep greedy output identical to "
        "plain decoding (no limit where none does), 0 = no limit, n = at most n", -1, 512))

    def validate(self, where: str) -> None:
        bad = first_bad_field(self)
        if bad is not None:
            raise ConfigError(f"{where}.{bad[0]} {bad[1]}")
        if self.draft_source is DraftSource.BOTH and not self.draft:
            raise ConfigError(f"{where}.draft_source both needs {where}.draft (a draft model)")
        if not self.model:
            raise ConfigError(f"{where}.model is empty: name 'small', 'large' or a GGUF path")

    @property
    def speculates(self) -> bool:
        """Whether this context gets a speculator (a draft model, or prompt lookup alone)."""
        return self.draft != "" or self.draft_source == "lookup"

    @property
    def n_threads(self) -> int:
        return self.threads or os.cpu_count() or 1

    @property
    def n_threads_batch(self) -> int:
        return self.threads_batch or self.n_threads


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Which roles to load. A role left as None is not loaded."""

    large: ContextConfig | None = None
    small: ContextConfig | None = None
    models_dir: str | None = None  # cache of the default models (None = XDG cache)
    verbose: bool = False  # llama.cpp's own log
    resident_prefixes: tuple[tuple[Role, str], ...] = field(default=())

    def roles(self) -> dict[Role, ContextConfig]:
        found = {Role.LARGE: self.large, Role.SMALL: self.small}
        return {role: cfg for role, cfg in found.items() if cfg is not None}

    def validate(self) -> None:
        if not self.roles():
            raise ConfigError("no model role configured: load at least one of large, small")
        for role, cfg in self.roles().items():
            cfg.validate(role.value)
