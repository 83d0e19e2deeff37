"""Helpers of the provider tests: the fakes' credentials and the provider tables that point a
gateway at them. The fixtures that start the fakes are in `tests.fakes.fixtures`, which a test
module loads with `pytest_plugins`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import MOCK_KEY, Gateway, Upstream

AWS_KEY, AWS_SECRET, AWS_TOKEN = "AKIDMETERDTEST", "meterd-test-secret/abc+xyz", "session-tok"
VERTEX_PROJECT, VERTEX_REGION = "fake-project", "us-east5"


@dataclass
class Served:
    fake: Any
    server: TestServer

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


def anthropic_provider(upstream: Upstream, monkeypatch: pytest.MonkeyPatch,
                       name: str = "anthropic") -> dict[str, Any]:
    """A provider table for the mock Anthropic API, its key in the environment."""
    monkeypatch.setenv(f"MTD_PROVIDER_{name.upper().replace('-', '_')}_KEY", MOCK_KEY)
    return {"kind": "anthropic", "base_url": upstream.url}


def bedrock_provider(bedrock: Served, **extra: Any) -> dict[str, Any]:
    return {"kind": "bedrock", "region": "us-east-1", "base_url": bedrock.url, **extra}


def vertex_provider(vertex: Served, **extra: Any) -> dict[str, Any]:
    return {"kind": "vertex", "project": VERTEX_PROJECT, "region": VERTEX_REGION,
            "base_url": vertex.url + "/v1", **extra}


StartGateway = Callable[..., Awaitable[Gateway]]
