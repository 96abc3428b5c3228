"""The verify-row probe's rules, on a fake context whose kernels round differently at chosen batch sizes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from espalier.service.engine.exact_rows import measure_exact_rows, verify_rows_from

N_VOCAB = 4


class FakeContext:
    """Logits depend on the token's position, plus a rounding error in batches whose size is in `off`."""

    def __init__(self, off: set[int]) -> None:
        self.off = off
        self.model = SimpleNamespace(n_vocab=N_VOCAB)
        self.batch = self
        self.capacity = 64
        self.rows: list[tuple[int, int]] = []  # (seq, pos) of this batch
        self.cells: set[tuple[int, int]] = set()
        self.out: list[np.ndarray] = []

    def clear(self) -> None:
        self.rows = []

    def add(self, seq: int, tokens: list[int], pos: int, logits_last: bool, *, logits_all: bool = False) -> int:
        self.rows += [(seq, pos + i) for i in range(len(tokens))]
        return len(self.rows) - 1

    def decode(self) -> int:
        err = 1e-3 if len(self.rows) in self.off else 0.0
        self.cells |= set(self.rows)
        self.out = [np.full(N_VOCAB, pos + err, dtype=np.float32) for _, pos in self.rows]
        return 0

    def logits(self, index: int) -> np.ndarray:
        return self.out[index]

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        self.cells = {(s, p) for s, p in self.cells if s != seq or p < max(p0, 0) or (p1 >= 0 and p >= p1)}
        return True


def test_the_exact_count_is_contiguous_from_one() -> None:
    assert measure_exact_rows(FakeContext(set()), 1, list(range(50)), most=8, depth=8) == 8
    assert measure_exact_rows(FakeContext({8, 9}), 1, list(range(50)), most=9, depth=8) == 7
    # a size that matches above one that does not is still ruled out: a verify holds any count up to the limit
    assert measure_exact_rows(FakeContext({3}), 1, list(range(50)), most=8, depth=8) == 2
    assert measure_exact_rows(FakeContext({2, 3, 4}), 1, list(range(50)), most=8, depth=8) == 1


def test_the_probe_leaves_its_slot_empty() -> None:
    ctx = FakeContext({5})
    measure_exact_rows(ctx, 1, list(range(50)), most=8, depth=8)
    assert not ctx.cells


def test_no_exact_limit_means_no_limit() -> None:
    assert verify_rows_from(1) == 0  # a limit would cost speed and keep nothing exact (GPUs)
    assert verify_rows_from(2) == 2
    assert verify_rows_from(7) == 7
