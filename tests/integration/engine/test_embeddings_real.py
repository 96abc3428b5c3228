"""Embeddings on the real small model: shapes, pooling, depth, the prefix a router prompt shares with
the last one, errors, and that decoding goes on undisturbed beside them."""

from __future__ import annotations

import asyncio
import math

import pytest

from espalier.planner.decode import collect
from espalier.planner.engine import Embedder, GenerateRequest, InvalidRequest, Pooling, Role, Sampling
from espalier.planner.plan import Route
from espalier.planner.router import route
from espalier.planner.router_model import RouterWeights

pytestmark = pytest.mark.model

LEAD = "Could a good answer be a list of points? Request: "


def close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-4) for x, y in zip(a, b, strict=True))


async def test_vectors_per_pooling_and_depth_and_a_shared_start_changes_nothing(small_engine) -> None:
    assert isinstance(small_engine, Embedder)
    first = LEAD + "How can I improve my time management skills?"
    second = LEAD + "What were the causes of the French revolution?"
    last = await small_engine.embed(Role.SMALL, [first], Pooling.LAST)
    mean = await small_engine.embed(Role.SMALL, [first], Pooling.MEAN)
    (inner,) = await small_engine.embed(Role.SMALL, [first], Pooling.LAST, 0.75)
    assert len(last[0]) == len(mean[0]) == len(inner) == 896  # the 0.5B model's width
    assert not close(last[0], mean[0]) and not close(last[0], inner)
    # the second text starts like the first: only its own tokens are decoded, the vector is the same
    shared = await small_engine.embed(Role.SMALL, [first, second], Pooling.LAST, 0.75)
    (alone,) = await small_engine.embed(Role.SMALL, [second], Pooling.LAST, 0.5)  # another depth: fresh
    (again,) = await small_engine.embed(Role.SMALL, [second], Pooling.LAST, 0.75)
    assert close(shared[0], inner) and close(shared[1], again) and not close(alone, again)
    # an inner read stops the pass at its layer (the layers above keep no cache of the text): a final
    # read afterwards still gives the first one's vector
    (final_again,) = await small_engine.embed(Role.SMALL, [first], Pooling.LAST)
    assert close(final_again, last[0])


async def test_bad_embedding_requests_are_refused_and_decoding_goes_on(small_engine) -> None:
    for texts, pooling, depth, field in (([""], Pooling.LAST, 1.0, "texts"), (["x " * 3000], Pooling.LAST, 1.0, "texts"),
                                         (["hello"], "max", 1.0, "pooling"), (["hello"], Pooling.LAST, 1.5, "depth")):
        with pytest.raises(InvalidRequest) as info:
            await small_engine.embed(Role.SMALL, texts, pooling, depth)
        assert info.value.field == field
    request = GenerateRequest("The capital of France is", Role.SMALL, Sampling(max_tokens=4, temperature=0.0))
    out, vectors = await asyncio.gather(collect(small_engine, request),
                                        small_engine.embed(Role.SMALL, [LEAD + "Tips for sleep?"], Pooling.LAST))
    assert out.text.strip() and len(vectors[0]) == 896


async def test_the_packaged_router_fits_the_default_small_model_and_decides(small_engine) -> None:
    weights = RouterWeights.load()
    identity = await small_engine.model_identity(Role.SMALL)
    assert weights.sources()[0].fits(identity), (weights.model, identity)
    listy = await route(small_engine, "What are the most effective ways to deal with stress?")
    direct = await route(small_engine, "What is the boiling point of water at sea level in Celsius?")
    assert listy.source == direct.source == "classifier", (listy, direct)
    assert listy.route is not Route.DIRECT and direct.route is Route.DIRECT, (listy, direct)
