"""Typed, validated settings of the embedded engine (one block per model role).

Validation happens once, at start-up, with messages that name the setting and the allowed range.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from planner.engine import Role


class ConfigError(ValueError):
    """A setting is out of range or inconsistent; the message names it."""


@dataclass(frozen=True, slots=True)
class ContextConfig:
    """One llama context: a model and how it is run."""

    model: str  # "small", "large" (the default models) or a path to any GGUF file
    # Sequences that decode together (parallel points). 16: a skeleton answer runs up to 10 points and
    # its opening at once, and even on 2 CPU cores a batch of 16 decodes 1.6x the tokens/s of 8
    # (`bench engine --model large --sequences 8 12 16`: 57, 76, 92 tok/s on 2026-12-01).
    slots: int = 16
    n_ctx: int = 8192  # KV cells shared by all sequences of this context (unified cache)
    n_batch: int = 512  # most tokens one llama_decode takes
    prefill_chunk: int = 64  # prompt tokens per step while other sequences decode
    prefix_slots: int = 16  # sequence ids for shared, resident and streamed-prompt prefixes
    max_waiting: int = 64  # requests queued for a slot before new ones are refused
    threads: int = 0  # 0 = all cores
    threads_batch: int = 0  # 0 = same as threads
    n_gpu_layers: int = 0  # layers offloaded to the GPU on a CUDA/Metal/Vulkan build; -1 = all
    flash_attn: str = "auto"  # auto | on | off
    # Speculative decoding (SeeD): a draft proposes tokens for every running sequence, this
    # context verifies them in one batch. draft: "small", "large" or a GGUF path sharing this
    # model's vocabulary; "" = no draft model. draft_source "lookup" needs no draft model.
    draft: str = ""
    draft_source: str = "model"  # model | lookup | both
    speculation: str = "auto"  # the default per request: auto (cost model decides) | on | off
    draft_max: int = 8  # most drafted tokens per sequence per step
    draft_p_min: float = 0.3  # a draft stops where its top token is less likely than this
    # Most tokens per verify decode call. llama.cpp's CPU attention switches to a tiled kernel
    # with other rounding at 8 rows, so 7 keeps greedy output identical to plain decoding; 0 = no
    # limit (fastest on a GPU, where outputs may then differ from plain decoding in near-ties).
    verify_rows: int = 7

    def validate(self, where: str) -> None:
        bounds = {
            "slots": (1, 64), "n_ctx": (256, 1 << 20), "n_batch": (8, 8192), "prefill_chunk": (1, 8192),
            "prefix_slots": (1, 64), "max_waiting": (0, 100_000), "threads": (0, 1024),
            "threads_batch": (0, 1024), "n_gpu_layers": (-1, 10_000),
        }
        for f in fields(self):
            if f.name in bounds:
                lo, hi = bounds[f.name]
                value = getattr(self, f.name)
                if not lo <= value <= hi:
                    raise ConfigError(f"{where}.{f.name} must be between {lo} and {hi} (got {value})")
        if not 0 <= self.verify_rows <= 512:
            raise ConfigError(f"{where}.verify_rows must be between 0 and 512 (got {self.verify_rows})")
        if not 0 <= self.draft_max <= 32:
            raise ConfigError(f"{where}.draft_max must be between 0 and 32 (got {self.draft_max})")
        if not 0.0 <= self.draft_p_min < 1.0:
            raise ConfigError(f"{where}.draft_p_min must be in [0, 1) (got {self.draft_p_min})")
        if self.draft_source not in ("model", "lookup", "both"):
            raise ConfigError(f"{where}.draft_source must be model, lookup or both (got {self.draft_source!r})")
        if self.speculation not in ("auto", "on", "off"):
            raise ConfigError(f"{where}.speculation must be auto, on or off (got {self.speculation!r})")
        if self.draft_source == "both" and not self.draft:
            raise ConfigError(f"{where}.draft_source both needs {where}.draft (a draft model)")
        if self.flash_attn not in ("auto", "on", "off"):
            raise ConfigError(f"{where}.flash_attn must be auto, on or off (got {self.flash_attn!r})")
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
