"""The error type each HTTP status gets, said once (proxy.envelope), and everyone answering in
the Anthropic format using it."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from dashboard.jsonio import json_error
from meterd.mock_upstream import _error
from proxy.envelope import error_body, error_type
from proxy.errors import upstream_failure

# What the Anthropic API documents (docs.claude.com/en/api/errors), then meterd's choices for
# statuses it does not document.
DOCUMENTED = [
    (400, "invalid_request_error"),
    (401, "authentication_error"),
    (402, "billing_error"),
    (403, "permission_error"),
    (404, "not_found_error"),
    (413, "request_too_large"),
    (429, "rate_limit_error"),
    (500, "api_error"),
    (504, "timeout_error"),
    (529, "overloaded_error"),
    (405, "invalid_request_error"),
    (408, "timeout_error"),
    (422, "invalid_request_error"),
    (431, "invalid_request_error"),
    (502, "api_error"),
    (503, "overloaded_error"),
]


@pytest.mark.parametrize(("status", "kind"), DOCUMENTED)
def test_every_status_gets_the_error_type_the_api_documents(status: int, kind: str) -> None:
    assert error_type(status) == kind


def test_the_body_is_the_anthropic_envelope() -> None:
    assert orjson.loads(error_body("not_found_error", "no such model")) == {
        "type": "error", "error": {"type": "not_found_error", "message": "no such model"}}


@pytest.mark.parametrize(("status", "kind"), DOCUMENTED)
def test_admin_api_and_mock_upstream_answer_with_the_documented_type(
        status: int, kind: str) -> None:
    answers = {"admin api": json_error(status, "m"), "mock upstream": _error(status, "rid")}
    for who, response in answers.items():
        assert response.status == status, who
        assert response.content_type == "application/json", who
        assert response.body is not None
        assert orjson.loads(bytes(response.body))["error"]["type"] == kind, who


@pytest.mark.parametrize(("exc", "status"), [
    (TimeoutError(), 504),
    (aiohttp.ServerTimeoutError("read"), 504),  # a ClientError too: the timeout wins
    (aiohttp.ClientConnectionError("refused"), 502),
    (aiohttp.ServerDisconnectedError(), 502),
])
def test_a_provider_that_times_out_is_504_and_one_out_of_reach_502(
        exc: TimeoutError | aiohttp.ClientError, status: int) -> None:
    failure = upstream_failure(exc)
    assert (failure.status, failure.kind) == (status, "api_error")
