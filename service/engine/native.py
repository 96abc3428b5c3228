"""Thin, typed wrappers over llama-cpp-python's low-level C API.

Owns every ctypes detail: loading a model, creating a context with a unified KV cache and
n_seq_max sequences, filling a multi-sequence llama_batch, KV memory operations (remove, copy),
tokenization, token pieces, reading a row of logits as log-probabilities (numpy), sampler chains
and the GGUF chat template. The high-level `Llama` class is not used: its batch helper decodes
sequence 0 only.

Every function here may block for a long time and must only be called from the thread that owns
the context (the worker), never from the event loop.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp
import numpy as np  # a dependency of llama-cpp-python itself

from espalier.planner.engine import Sampling

_backend_lock = threading.Lock()
_backend_ready = False


def _init_backend(verbose: bool) -> None:
    """llama.cpp's global state is set up once per process; its log goes through Python logging."""
    global _backend_ready
    with _backend_lock:
        # llama-cpp-python's log callback prints every INFO line unless its logger says otherwise.
        logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.ERROR)
        if not _backend_ready:
            llama_cpp.llama_backend_init()
            _backend_ready = True


class NativeError(RuntimeError):
    """A llama.cpp call failed (model not loadable, context not creatable)."""


class Model:
    """A loaded GGUF model: weights, vocabulary, tokenizer and chat template."""

    def __init__(self, path: str, *, n_gpu_layers: int = 0, repack: bool = False, verbose: bool = False) -> None:
        _init_backend(verbose)
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        # CPU weight repacking (extra buffer types) runs 4-row groups through a GEMM kernel and
        # single rows through a GEMV kernel that rounds differently, so a sequence's tokens would
        # depend on how many others share its batch. Off by default: batched output must equal
        # solo output exactly.
        params.use_extra_bufts = repack
        ptr = llama_cpp.llama_model_load_from_file(path.encode(), params)
        if not ptr:
            raise NativeError(f"llama.cpp could not load the model at {path}")
        self.ptr = ptr
        self.path = path
        self.vocab = llama_cpp.llama_model_get_vocab(ptr)
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train: int = llama_cpp.llama_model_n_ctx_train(ptr)
        self.add_bos: bool = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        buf = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(ptr, buf, len(buf))
        self.description = buf.value.decode(errors="replace")
        tmpl = llama_cpp.llama_model_chat_template(ptr, None)
        self.chat_template: bytes | None = tmpl if tmpl else None
        self._piece_buf = ctypes.create_string_buffer(256)

    def tokenize(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        """Special tokens written in the text (chat markers) become their token ids."""
        data = text.encode()
        bos = self.add_bos if add_bos is None else add_bos
        cap = len(data) + 8
        arr = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), arr, cap, bos, True)
        if n < 0:  # buffer too small: -n is the size needed
            cap = -n
            arr = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), arr, cap, bos, True)
        return list(arr[:n])

    def piece(self, token: int) -> bytes:
        """The bytes of one token; control tokens render as nothing."""
        n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece_buf, len(self._piece_buf), 0, False)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, big, len(big), 0, False)
            return big.raw[:n]
        return self._piece_buf.raw[:n]

    def piece_text(self, token: int) -> str:
        """The token's text; a piece that splits a UTF-8 character shows U+FFFD for the part it holds."""
        return self.piece(token).decode(errors="replace")

    @functools.cached_property
    def end_tokens(self) -> np.ndarray:
        """Every end-of-generation token id (Sampling.min_tokens keeps them out of a reply's first tokens)."""
        return np.asarray([t for t in range(self.n_vocab) if self.is_eog(t)], dtype=np.int64)

    @functools.cached_property
    def _token_classes(self) -> tuple[np.ndarray, np.ndarray]:
        """One pass over the vocabulary (0.44 s for the 1.5B model here): the ids whose text holds a line
        break, and per id whether its text holds a letter. Built at start-up (warm_token_tables), so
        neither an answer's first skeleton nor its first point pays for it."""
        breaks: list[int] = []
        letters = np.zeros(self.n_vocab, dtype=bool)
        for t in range(self.n_vocab):
            piece = self.piece(t)
            if b"\n" in piece:
                breaks.append(t)
            letters[t] = any(c.isalpha() for c in piece.decode(errors="ignore"))
        return np.asarray(breaks, dtype=np.int64), letters

    def warm_token_tables(self) -> None:
        """Build the per-token tables that sampling reads, now rather than in a first request."""
        _ = self._token_classes

    @property
    def line_break_tokens(self) -> np.ndarray:
        """Every token id whose text holds a line break (Sampling.min_tokens keeps them out of a reply
        until its first word)."""
        return self._token_classes[0]

    def has_letter(self, token: int) -> bool:
        """Whether the token's text holds a letter (Sampling.word_repeat_penalty penalises only those)."""
        return bool(self._token_classes[1][token])

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def vocab_signature(self) -> tuple[int, tuple[bytes, ...]]:
        """Vocabulary size plus a sample of token texts: equal signatures mean a shared tokenizer."""
        probe = range(0, self.n_vocab, max(1, self.n_vocab // 512))
        return self.n_vocab, tuple(llama_cpp.llama_vocab_get_text(self.vocab, t) or b"" for t in probe)

    def apply_chat_template(self, messages: Sequence[tuple[str, str]], add_generation_prompt: bool) -> str:
        """Format with the GGUF's own template (llama.cpp recognises the common families)."""
        if self.chat_template is None:
            raise NativeError(f"{self.path} carries no chat template")
        keep = [(r.encode(), c.encode()) for r, c in messages]
        chat = (llama_cpp.llama_chat_message * len(keep))()
        for i, (role, content) in enumerate(keep):
            chat[i].role = role
            chat[i].content = content
        size = 2 * sum(len(r) + len(c) for r, c in keep) + 256
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_chat_apply_template(self.chat_template, chat, len(keep),
                                                    add_generation_prompt, buf, size)
            if n < 0:
                raise NativeError("llama.cpp does not support this model's chat template")
            if n <= size:
                return buf.raw[:n].decode()
            size = n + 1
        raise NativeError("chat template output kept growing")

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None


@dataclass(frozen=True, slots=True)
class ContextParams:
    n_ctx: int
    n_batch: int
    n_seq_max: int
    threads: int
    threads_batch: int
    flash_attn: str = "auto"  # auto | on | off


_FLASH = {"auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
          "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED}


def _init_context(model: Model, params: llama_cpp.llama_context_params, what: str) -> tuple[object, object]:
    """A new llama_context and its memory handle, or NativeError naming `what` could not be made."""
    ptr = llama_cpp.llama_init_from_model(model.ptr, params)
    if not ptr:
        raise NativeError(f"llama.cpp could not create {what}")
    return ptr, llama_cpp.llama_get_memory(ptr)


class Context:
    """One llama_context with a unified KV cache shared by up to n_seq_max sequences."""

    def __init__(self, model: Model, params: ContextParams) -> None:
        p = llama_cpp.llama_context_default_params()
        p.n_ctx = params.n_ctx
        p.n_batch = params.n_batch
        p.n_ubatch = params.n_batch
        p.n_seq_max = params.n_seq_max
        p.n_threads = params.threads
        p.n_threads_batch = params.threads_batch
        p.flash_attn_type = _FLASH[params.flash_attn]
        # Unified KV: a fork (seq_cp) only tags shared cells with another sequence id. With
        # per-sequence streams llama.cpp would copy whole buffers and ignore the position range.
        p.kv_unified = True
        p.no_perf = True
        self.ptr, self.mem = _init_context(model, p, f"a context of {params.n_ctx} cells")
        self.model = model
        self.params = params
        self.n_ctx: int = llama_cpp.llama_n_ctx(self.ptr)
        self.batch = Batch(params.n_batch)

    def decode(self) -> int:
        """0 ok, 1 no KV slot for the batch (retry smaller), other values are errors."""
        return int(llama_cpp.llama_decode(self.ptr, self.batch.raw))

    def logits(self, index: int) -> np.ndarray:
        """The raw logits at batch `index`: a view into llama.cpp's own buffer (no copy), valid until the
        next decode; copy it to keep it."""
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ptr, index), shape=(self.model.n_vocab,))

    def ban(self, index: int, tokens: np.ndarray) -> None:
        """Make `tokens` impossible at batch `index`: their logits become -inf in llama.cpp's own buffer,
        which every sampler reads next (log_probs, read earlier, still shows the model's own view)."""
        self.logits(index)[tokens] = -np.inf

    def log_probs(self, index: int) -> np.ndarray:
        """Log-softmax of the raw logits at batch `index` (n_vocab float64s, a copy).

        The model's own distribution, before any sampler: temperature, top-k and penalties live in
        the sampler chain, which reads the logits without changing them.
        """
        row = self.logits(index).astype(np.float64)
        row -= row.max()
        row -= np.log(np.exp(row).sum())
        return row

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        return bool(llama_cpp.llama_memory_seq_rm(self.mem, seq, p0, p1))

    def seq_cp(self, src: int, dst: int, n_tokens: int) -> None:
        llama_cpp.llama_memory_seq_cp(self.mem, src, dst, 0, n_tokens)

    def seq_pos_max(self, seq: int) -> int:
        return int(llama_cpp.llama_memory_seq_pos_max(self.mem, seq))

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(self.mem, True)

    def close(self) -> None:
        if self.ptr:
            self.batch.close()
            llama_cpp.llama_free(self.ptr)
            self.ptr = None


class _LayerTap:
    """Copies one layer's output as llama.cpp computes it, through ggml's eval callback: llama.cpp
    names each layer's residual output `l_out-<layer>`, and the callback is asked about every tensor
    of the graph; it observes only the one wanted. Through ggml's public tensor functions (name, size,
    backend copy), so it works on any backend without knowing ggml's struct layout."""

    def __init__(self, n_embd: int) -> None:
        lib = llama_cpp.llama_cpp._lib  # libllama resolves the ggml symbols it links to
        self._name = lib.ggml_get_name
        self._name.restype, self._name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
        self._count = lib.ggml_nelements
        self._count.restype, self._count.argtypes = ctypes.c_int64, [ctypes.c_void_p]
        self._bytes = lib.ggml_nbytes
        self._bytes.restype, self._bytes.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
        self._get = lib.ggml_backend_tensor_get
        self._get.restype = None
        self._get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        self.n_embd = n_embd
        self.wanted: bytes | None = None
        self.states: np.ndarray | None = None
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._observe)  # kept alive with self

    def _observe(self, tensor: int, ask: bool, _user: int) -> bool:
        if ask:
            return self.wanted is not None and self._name(tensor) == self.wanted
        n = self._count(tensor)
        if self._bytes(tensor) == n * 4 and n % self.n_embd == 0:  # float32 rows of n_embd
            out = np.empty(n, dtype=np.float32)
            self._get(tensor, out.ctypes.data, 0, n * 4)
            self.states = out.reshape(-1, self.n_embd)
            # Nothing above this layer is wanted: false ends the graph's compute here, so reading layer
            # k of n costs about k/n of a pass (the router's read of the 0.5B model at three quarters:
            # 0.14 s to 0.075 s a question here, the same numbers). The layers above keep no cache of
            # these tokens, so EmbeddingContext reuses a cached prefix only for the same layer.
            return False
        return True


class EmbeddingContext:
    """A small llama_context of its own that returns every token's hidden state at the final layer
    or at a chosen one (no KV sharing with decoding, so embedding a text never touches a sequence
    being generated). One text at a time: the memory is cleared before each."""

    def __init__(self, model: Model, *, n_ctx: int, threads: int) -> None:
        self.n_embd: int = llama_cpp.llama_model_n_embd(model.ptr)
        self.n_layer: int = llama_cpp.llama_model_n_layer(model.ptr)
        self._tap = _LayerTap(self.n_embd)
        p = llama_cpp.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = n_ctx
        p.n_ubatch = n_ctx
        p.n_seq_max = 1
        p.n_threads = threads
        p.n_threads_batch = threads
        p.embeddings = True
        p.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE  # pooled by the caller: mean or last from one pass
        p.cb_eval = self._tap.callback
        p.no_perf = True
        self.ptr, self.mem = _init_context(model, p, f"an embedding context of {n_ctx} cells")
        self.model = model
        self.n_ctx: int = llama_cpp.llama_n_ctx(self.ptr)
        self.batch = Batch(self.n_ctx)
        # The last text's tokens and states, per layer: a text that starts like the last one (the
        # router's prompts share their instruction) decodes only what differs.
        self._last: tuple[list[int], int | None, np.ndarray] | None = None

    def hidden_states(self, tokens: Sequence[int], layer: int | None = None) -> np.ndarray:
        """Every token's hidden state, shape (len(tokens), n_embd), float32 (a copy): after the final
        norm (layer None), or the output of layer `layer` (0-based, below n_layer - 1)."""
        tokens = list(tokens)
        if not 0 < len(tokens) <= self.n_ctx:
            raise ValueError(f"{len(tokens)} tokens do not fit an embedding context of {self.n_ctx}")
        if layer is not None and not 0 <= layer < self.n_layer - 1:
            raise ValueError(f"layer {layer} is not an inner layer of this model (0 to {self.n_layer - 2})")
        shared, before = 0, None
        if self._last is not None and self._last[1] == layer:
            last, _, before = self._last
            while shared < min(len(last), len(tokens) - 1) and last[shared] == tokens[shared]:
                shared += 1  # at least the final token is decoded again
        self._last = None  # until this decode has succeeded
        llama_cpp.llama_memory_seq_rm(self.mem, 0, shared, -1)
        new = self._decode(tokens[shared:], shared, layer)
        states = np.concatenate([before[:shared], new]) if before is not None and shared else new
        self._last = (tokens, layer, states)
        return states.copy()

    def _decode(self, tokens: list[int], pos: int, layer: int | None) -> np.ndarray:
        self._tap.wanted = f"l_out-{layer}".encode() if layer is not None else None
        self._tap.states = None
        self.batch.clear()
        self.batch.add(0, tokens, pos, True, logits_all=True)
        rc = int(llama_cpp.llama_decode(self.ptr, self.batch.raw))
        if rc != 0:
            llama_cpp.llama_memory_clear(self.mem, True)
            raise NativeError(f"llama_decode returned {rc} while embedding")
        if layer is not None:
            if self._tap.states is None or len(self._tap.states) != len(tokens):
                raise NativeError(f"llama.cpp did not show layer {layer}'s output (l_out-{layer})")
            return self._tap.states.copy()
        out = llama_cpp.llama_get_embeddings(self.ptr)
        return np.ctypeslib.as_array(out, shape=(len(tokens) * self.n_embd,)).reshape(len(tokens), -1).copy()

    def close(self) -> None:
        if self.ptr:
            self.batch.close()
            llama_cpp.llama_free(self.ptr)
            self.ptr = None


class Batch:
    """A reusable llama_batch; `add` appends a run of tokens of one sequence."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.raw = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.n = 0

    def clear(self) -> None:
        self.n = 0
        self.raw.n_tokens = 0

    def add(self, seq: int, tokens: Sequence[int], pos: int, logits_last: bool, *, logits_all: bool = False) -> int:
        """Returns the batch index of the last token (where its logits will be).

        logits_all: every token's logits are kept (a speculative verify samples at each position).
        """
        raw, n = self.raw, self.n
        if n + len(tokens) > self.capacity:
            raise ValueError("batch overflow")
        tok, ps, nsq, sq, lg = raw.token, raw.pos, raw.n_seq_id, raw.seq_id, raw.logits
        for i, t in enumerate(tokens):
            j = n + i
            tok[j] = t
            ps[j] = pos + i
            nsq[j] = 1
            sq[j][0] = seq
            lg[j] = 1 if logits_all else 0
        last = n + len(tokens) - 1
        lg[last] = 1 if logits_last or logits_all else 0
        self.n = last + 1
        raw.n_tokens = self.n
        return last

    def close(self) -> None:
        if self.raw is not None:
            llama_cpp.llama_batch_free(self.raw)
            self.raw = None


class SamplerChain:
    """A per-sequence llama_sampler chain built from Sampling settings."""

    def __init__(self, sampling: Sampling, n_vocab: int) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        if sampling.repeat_penalty != 1.0:
            add(chain, llama_cpp.llama_sampler_init_penalties(n_vocab, 64, sampling.repeat_penalty, 0.0, 0.0))
        if sampling.temperature <= 0.0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if sampling.top_k > 0:
                add(chain, llama_cpp.llama_sampler_init_top_k(sampling.top_k))
            if sampling.top_p < 1.0:
                add(chain, llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
            if sampling.min_p > 0.0:
                add(chain, llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
            add(chain, llama_cpp.llama_sampler_init_temp(sampling.temperature))
            add(chain, llama_cpp.llama_sampler_init_dist(sampling.seed))
        self.ptr = chain

    def sample(self, ctx: Context, index: int) -> int:
        """Sample from the logits at batch `index` and record the token in the chain's history."""
        return int(llama_cpp.llama_sampler_sample(self.ptr, ctx.ptr, index))

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None
