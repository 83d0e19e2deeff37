"""Fixtures that start the provider fakes on local servers (loaded with `pytest_plugins`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from tests.fakes.bedrock import FakeBedrock
from tests.fakes.gateways import (
    AWS_KEY,
    AWS_SECRET,
    AWS_TOKEN,
    VERTEX_PROJECT,
    VERTEX_REGION,
    Served,
)
from tests.fakes.vertex import FakeVertex, make_service_account


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The organization's AWS credentials, from the environment (botocore's chain) only."""
    for var, value in {"AWS_ACCESS_KEY_ID": AWS_KEY, "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
                       "AWS_SESSION_TOKEN": AWS_TOKEN, "AWS_REGION": "us-east-1",
                       "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                       "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
async def bedrock(aiohttp_server: Callable[..., Awaitable[TestServer]], aws_env: None) -> Served:
    fake = FakeBedrock(AWS_KEY, AWS_SECRET, "us-east-1", session_token=AWS_TOKEN)
    return Served(fake, await aiohttp_server(fake.app()))


@pytest.fixture
async def vertex(aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Served:
    """A fake Vertex whose token endpoint knows a service account written for the test;
    MTD_PROVIDER_VERTEX_CREDENTIALS_FILE names that account's key file."""
    fake = FakeVertex(VERTEX_PROJECT, VERTEX_REGION)
    server = await aiohttp_server(fake.app())
    fake.token_uri = str(server.make_url("/token"))
    key_file = tmp_path / "service-account.json"
    fake.public_key = make_service_account(key_file, fake.token_uri, VERTEX_PROJECT)
    monkeypatch.setenv("MTD_PROVIDER_VERTEX_CREDENTIALS_FILE", str(key_file))
    return Served(fake, server)
