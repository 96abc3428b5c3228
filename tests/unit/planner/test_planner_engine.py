"""The Engine protocol's request vocabulary: GenerateRequest validation and its logprob fields."""

from __future__ import annotations

import pytest

from planner.engine import MAX_TOP_LOGPROBS, Chunk, GenerateRequest, InvalidRequest, Sampling, TokenLogprobs


@pytest.mark.parametrize("n", [0, 1, MAX_TOP_LOGPROBS])
def test_top_logprobs_in_range_is_valid(n: int) -> None:
    GenerateRequest("hi", top_logprobs=n).validate()


@pytest.mark.parametrize("n", [-1, MAX_TOP_LOGPROBS + 1, 1000])
def test_top_logprobs_out_of_range_names_the_field(n: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        GenerateRequest("hi", top_logprobs=n).validate()
    assert info.value.field == "top_logprobs" and str(n) in str(info.value)


def test_sampling_is_checked_first() -> None:
    with pytest.raises(InvalidRequest) as info:
        GenerateRequest("hi", sampling=Sampling(max_tokens=0), top_logprobs=99).validate()
    assert info.value.field == "sampling.max_tokens"


def test_logprob_fields_default_off() -> None:
    assert GenerateRequest("hi").top_logprobs == 0
    assert Chunk("x", 1).logprobs == ()
    entry = TokenLogprobs(" A", -0.1, ((" A", -0.1), (" B", -2.4)))
    assert Chunk(" A", 1, logprobs=(entry,)).logprobs[0].top[1] == (" B", -2.4)
