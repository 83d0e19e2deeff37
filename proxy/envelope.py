"""The Anthropic error envelope: the error type that goes with each HTTP status, and the body.

Every part of meterd that answers in the Anthropic API's format (the proxy, the provider
translations, the admin API, the mock upstream) builds its error bodies here.
"""

from __future__ import annotations

import orjson

# The statuses the Anthropic API documents (docs.claude.com/en/api/errors), and two it does
# not that providers answer with: a request timeout and an unavailable service.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """The Anthropic error type for an HTTP status: the table's, else the client's fault
    (invalid_request_error) below 500 and the server's (api_error) from 500."""
    return ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_body(kind: str, message: str) -> bytes:
    """An Anthropic error body: `{"type": "error", "error": {"type": kind, "message": ...}}`."""
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
