"""The speculation cost model: injected costs decide between plain decoding and drafting."""

from __future__ import annotations

import pytest

from espalier.planner.engine import Speculation
from espalier.service.engine.spec_policy import (
    Acceptance,
    Candidate,
    CostCurve,
    SpecPolicy,
    expected_tokens,
    pack_verifies,
    prompt_lookup,
)

# A small CPU: a batch of n tokens costs nearly n single decodes.
CPU = CostCurve(((1, 0.050), (2, 0.095), (4, 0.190), (8, 0.380), (16, 0.760), (32, 1.52)))
# A GPU: verifying up to 16 tokens costs about what one costs.
GPU = CostCurve(((1, 0.010), (2, 0.0101), (4, 0.0102), (8, 0.0105), (16, 0.011), (32, 0.014)))
DRAFT_CPU = CostCurve(((1, 0.020), (4, 0.070), (16, 0.26)))
DRAFT_GPU = CostCurve(((1, 0.002), (4, 0.0021), (16, 0.0023)))


def model_cands(n: int, alpha: float = 0.7, cap: int = 8) -> list[Candidate]:
    return [Candidate(alpha, cap, True) for _ in range(n)]


def test_cost_curve_interpolates_and_extrapolates() -> None:
    assert CPU(1) == 0.050
    assert CPU(3) == pytest.approx(0.1425)
    assert CPU(64) == pytest.approx(1.52 + (1.52 - 0.76) / 16 * 32)
    assert CPU.relative([1, 2, 4]) == {1: 1.0, 2: 1.9, 4: 3.8}
    with pytest.raises(ValueError):
        CostCurve(((4, 0.1), (2, 0.2)))


@pytest.mark.parametrize("seqs", [1, 4])
def test_plain_decoding_where_verifying_costs_k_times(seqs: int) -> None:
    policy = SpecPolicy(CPU, DRAFT_CPU, max_k=8)
    assert policy.choose(Speculation.AUTO, model_cands(seqs)) == 0
    assert policy.last_k == 0


@pytest.mark.parametrize("seqs", [1, 4])
def test_drafting_where_verifying_is_nearly_free(seqs: int) -> None:
    policy = SpecPolicy(GPU, DRAFT_GPU, max_k=8)
    cands = model_cands(seqs, alpha=0.8)
    k = policy.choose(Speculation.AUTO, cands)
    assert k >= 2
    assert policy.rate(k, cands) > 1.5 * policy.rate(0, cands)


def test_low_acceptance_turns_speculation_off_even_on_a_gpu() -> None:
    policy = SpecPolicy(GPU, CostCurve(((1, 0.004),)), max_k=8)  # a draft round costs 40% of a verify
    assert policy.choose(Speculation.AUTO, model_cands(1, alpha=0.05)) == 0
    assert policy.choose(Speculation.AUTO, model_cands(1, alpha=0.95)) > 0


def test_free_lookup_drafts_pay_even_on_a_cpu_when_they_land() -> None:
    policy = SpecPolicy(CostCurve(((1, 0.05), (4, 0.08), (8, 0.15))), None, max_k=8)
    lookups = [Candidate(0.9, 6, False)]
    assert policy.choose(Speculation.AUTO, lookups) > 0


def test_auto_drafts_only_for_a_clear_gain() -> None:
    # Drafting promises about 5% here: within the noise of the estimates, so plain decoding.
    target = CostCurve(((1, 0.050), (2, 0.0845)))
    policy = SpecPolicy(target, None, max_k=1)
    lookups = [Candidate(0.8, 1, False)]
    assert policy.rate(1, lookups) / policy.rate(0, lookups) == pytest.approx(1.065, abs=0.01)
    assert policy.choose(Speculation.AUTO, lookups) == 0
    assert policy.rate(3, model_cands(1)) == 0.0  # model drafts without a draft model: never


def test_forced_mode_always_drafts_and_off_never() -> None:
    policy = SpecPolicy(CPU, DRAFT_CPU, max_k=5, verify_rows=4)
    assert policy.choose(Speculation.ON, model_cands(2)) == 1  # a loss here: the least drafting
    assert policy.choose(Speculation.OFF, model_cands(2)) == 0
    fast = SpecPolicy(GPU, DRAFT_GPU, max_k=5, verify_rows=4)
    assert fast.choose(Speculation.ON, model_cands(1, alpha=0.95)) == 3  # a verify run must fit 4 rows
    assert policy.choices == {1: 1, 0: 1}


def test_row_limit_makes_many_sequence_verifies_cost_several_calls() -> None:
    policy = SpecPolicy(GPU, DRAFT_GPU, max_k=8, verify_rows=7)
    cands = model_cands(4)
    # 4 sequences x (1 + 2) tokens = 12 rows = two calls of 6
    assert policy.rate(2, cands) == pytest.approx(4 * expected_tokens(0.7, 2) / (2 * GPU(6) + DRAFT_GPU(4) + DRAFT_GPU(4)))


def test_pack_verifies_first_fit() -> None:
    assert pack_verifies([3, 3, 3], 7) == [[0, 1], [2]]
    assert pack_verifies([4, 2, 3, 1], 7) == [[0, 1, 3], [2]]
    assert pack_verifies([3, 3], 0) == [[0, 1]]
    assert pack_verifies([], 7) == []


def test_expected_tokens() -> None:
    assert expected_tokens(0.5, 0) == 1.0
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)
    assert expected_tokens(1.0, 3) == 4.0


def test_acceptance_tracks_recent_verifies() -> None:
    acc = Acceptance()
    start = acc.rate
    for _ in range(10):
        acc.record(4, 4)
    assert acc.rate > 0.9 > start
    for _ in range(30):
        acc.record(4, 0)
    assert acc.rate < 0.2
    acc.record(0, 0)  # nothing drafted: no evidence
    assert acc.rate < 0.2


def test_prompt_lookup_copies_what_followed_the_latest_match() -> None:
    history = [1, 2, 3, 4, 5, 9, 9, 1, 2, 3, 7, 8, 1, 2, 3]
    assert prompt_lookup(history, 2) == [7, 8]  # the most recent earlier "1 2 3"
    assert prompt_lookup(history, 0) == []
    assert prompt_lookup([5, 6, 7], 3) == []  # no earlier match
    assert prompt_lookup([4, 5, 6, 4, 5], 4) == [6, 4, 5]


def test_costs_seen_in_service_correct_an_optimistic_calibration() -> None:
    # Start-up measured a 2-token verify at barely more than one token: drafting looks like a win.
    optimistic = CostCurve(((1, 0.050), (2, 0.052), (4, 0.19), (8, 0.38)))
    policy = SpecPolicy(optimistic, CostCurve(((1, 0.005), (4, 0.012))), max_k=3)
    cands = [Candidate(0.8, 3, True)]
    assert policy.choose(Speculation.AUTO, cands) == 1
    for _ in range(40):  # in service, 2-token batches really cost 1.9 times one
        policy.observe(target_tokens=2, target_s=0.095)
    assert policy.target(2) == pytest.approx(0.095, rel=0.02)
    assert policy.choose(Speculation.AUTO, cands) == 0
    assert policy.target.observed(3, 1.0) is policy.target  # only measured sizes move


def test_draft_costs_seen_in_service_move_the_draft_curve() -> None:
    policy = SpecPolicy(GPU, CostCurve(((1, 0.001), (4, 0.002))), max_k=4)
    policy.observe(draft_tokens=1, draft_s=0.011)
    assert policy.draft is not None and policy.draft(1) == pytest.approx(0.002)  # a tenth of the way
