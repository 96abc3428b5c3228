"""The Engine protocol's request vocabulary: GenerateRequest validation and its logprob fields (that a plain
request gets no logprobs is checked on the real engine, tests/integration/engine/test_logprobs_real.py)."""

from __future__ import annotations

import pytest

from espalier.planner.engine import MAX_TOP_LOGPROBS, GenerateRequest, InvalidRequest, Sampling


def test_top_logprobs_accepted_are_exactly_zero_to_the_maximum() -> None:
    def accepted(n: int) -> bool:
        try:
            GenerateRequest("hi", top_logprobs=n).validate()
        except InvalidRequest:
            return False
        return True

    assert [n for n in range(-3, MAX_TOP_LOGPROBS + 4) if accepted(n)] == list(range(MAX_TOP_LOGPROBS + 1))


@pytest.mark.parametrize("n", [-1, MAX_TOP_LOGPROBS + 1, 1000])
def test_top_logprobs_out_of_range_names_the_field(n: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        GenerateRequest("hi", top_logprobs=n).validate()
    assert info.value.field == "top_logprobs" and str(n) in str(info.value)


def test_sampling_is_checked_first() -> None:
    with pytest.raises(InvalidRequest) as info:
        GenerateRequest("hi", sampling=Sampling(max_tokens=0), top_logprobs=99).validate()
    assert info.value.field == "sampling.max_tokens"

