"""espalier.service.errors: the one table from domain errors to gRPC status codes."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from espalier.planner.engine import (
    EngineClosed,
    EngineError,
    EngineFault,
    Exhausted,
    InvalidRequest,
    RoleNotLoaded,
)
from espalier.planner.plan import PlanInvalid
from espalier.service import errors

C = grpc.StatusCode


@pytest.mark.parametrize(("exc", "code"), [
    (InvalidRequest("the question must not be empty", field="question"), C.INVALID_ARGUMENT),
    (PlanInvalid("dependencies form a cycle: 1 -> 2 -> 1", field="graph.nodes[0].depends_on"), C.INVALID_ARGUMENT),
    (errors.Overloaded("queue full", retry_after_ms=250), C.RESOURCE_EXHAUSTED),
    (Exhausted("all slots busy"), C.RESOURCE_EXHAUSTED),
    (RoleNotLoaded("the large model is not loaded"), C.FAILED_PRECONDITION),
    (EngineClosed("shutting down"), C.UNAVAILABLE),
    (errors.NotServing("loading"), C.UNAVAILABLE),
    (errors.Unauthenticated("no token"), C.UNAUTHENTICATED),
    (TimeoutError(), C.DEADLINE_EXCEEDED),
    (EngineFault("llama_decode failed with status -3"), C.INTERNAL),
    (EngineError("something engine-ish"), C.INTERNAL),
    (RuntimeError("boom"), C.INTERNAL),
    (KeyError("x"), C.INTERNAL),
])
def test_each_error_kind_maps_to_its_code(exc: Exception, code: grpc.StatusCode,
                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.CRITICAL, logger="espalier.service.errors"):
        status = errors.status_for(exc, "rid-1")
    assert status.code is code
    assert (errors.REQUEST_ID_KEY, "rid-1") in status.trailers


def test_invalid_argument_names_the_field_first_and_in_metadata() -> None:
    status = errors.status_for(PlanInvalid("node 2 depends on unknown node 9", field="graph.nodes[1].depends_on"))
    assert status.details == "graph.nodes[1].depends_on: node 2 depends on unknown node 9"
    assert (errors.FIELD_KEY, "graph.nodes[1].depends_on") in status.trailers
    # a message that already starts with its field is not prefixed twice
    status = errors.status_for(InvalidRequest("settings.top_p must be in (0, 1]", field="settings.top_p"))
    assert status.details == "settings.top_p must be in (0, 1]"


def test_resource_exhausted_carries_a_retry_hint() -> None:
    status = errors.status_for(errors.Overloaded("full", retry_after_ms=250))
    assert dict(status.trailers)[errors.RETRY_AFTER_KEY] == "250"
    assert "retry after 250 ms" in status.details
    status = errors.status_for(Exhausted("engine queue full"))  # the engine gives no estimate: the default
    assert dict(status.trailers)[errors.RETRY_AFTER_KEY] == str(errors.DEFAULT_RETRY_AFTER_MS)


def test_internal_errors_are_logged_with_the_request_id_and_say_nothing_inside(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="espalier.service.errors"):
        status = errors.status_for(RuntimeError("secret path /home/x/model.gguf"), "req-42")
    assert status.code is C.INTERNAL
    assert "secret" not in status.details and "req-42" in status.details
    (record,) = caplog.records
    assert "req-42" in record.getMessage() and record.exc_info is not None
    with caplog.at_level(logging.ERROR, logger="espalier.service.errors"):
        status = errors.status_for(EngineFault("llama_decode failed with status -3"), "req-43")
    assert "-3" not in status.details and "decoder failed" in status.details


def test_classification_is_by_type_never_by_text() -> None:
    # the same words under different types map differently
    assert errors.code_for(InvalidRequest("engine fault")) is C.INVALID_ARGUMENT
    assert errors.code_for(EngineFault("invalid request")) is C.INTERNAL


def test_cancellation_is_never_mapped() -> None:
    with pytest.raises(TypeError):
        errors.status_for(asyncio.CancelledError())  # type: ignore[arg-type]
