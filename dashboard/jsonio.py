"""JSON in and out for the admin API: bodies read by declared field, errors in the Anthropic
envelope."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from dashboard.params import parse_int
from proxy.envelope import error_body, error_type


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, default=str), status=status,
                        content_type="application/json")


def json_error(status: int, message: str) -> web.Response:
    return web.Response(body=error_body(error_type(status), message), status=status,
                        content_type="application/json")


# The largest whole number a body field takes: far below DuckDB's BIGINT.
MAX_WHOLE = 10**15


class Body:
    """A JSON object sent as a request body, read field by field: each read names the field
    and what it takes, and a field that is required but missing, or of another type, is a
    ValueError naming it, which the API answers with a 400. Handlers read bodies only through
    this, so a KeyError or TypeError in a handler is a bug (a 500), not the client's error."""

    def __init__(self, fields: dict[str, Any], where: str = "") -> None:
        self.fields = fields
        self._where = where  # of a nested object: "scope."

    def absent(self, name: str) -> bool:
        """Whether the field is missing or null."""
        return self.fields.get(name) is None

    def _required(self, name: str) -> Any:
        value = self.fields.get(name)
        if value is None:
            raise ValueError(f"{self._where}{name} is required")
        return value

    def text(self, name: str, default: str | None = None) -> str:
        """A string; `default` when missing or null, else it is required."""
        if default is not None and self.absent(name):
            return default
        value = self._required(name)
        if not isinstance(value, str):
            raise ValueError(f"{self._where}{name} must be a string")
        return value

    def whole(self, name: str) -> int:
        """A whole number from 0 to MAX_WHOLE, sent as a number or a string of digits."""
        value = self._required(name)
        if isinstance(value, str):
            return parse_int(value, self._where + name, 0, MAX_WHOLE)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WHOLE:
            raise ValueError(f"{self._where}{name} must be a whole number from 0 to "
                             f"{MAX_WHOLE:,}")
        return value

    def figure(self, name: str) -> str:
        """An amount sent as a string or a JSON number, as text for ledger.money to parse
        exactly (a JSON number comes as its shortest decimal form: 99.99 stays "99.99")."""
        value = self._required(name)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"{self._where}{name} must be a number or a string")
        return str(value)

    def texts(self, name: str) -> list[str]:
        """A list of strings."""
        value = self._required(name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{self._where}{name} must be a list of strings")
        return value

    def object(self, name: str) -> Body:
        """A nested JSON object, read the same way."""
        value = self._required(name)
        if not isinstance(value, dict):
            raise ValueError(f"{self._where}{name} must be an object")
        return Body(value, f"{self._where}{name}.")


async def read_body(request: web.Request) -> Body:
    """The request body, a JSON object (an empty body is {})."""
    doc = orjson.loads(await request.read() or b"{}")
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")
    return Body(doc)
