"""Fixtures that start the provider fakes on local servers (loaded with `pytest_plugins`)."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp.connector
import pytest
from aiohttp.test_utils import TestServer

from tests.fakes.bedrock import FakeBedrock
from tests.fakes.foundry import (
    CLIENT_ID,
    CLIENT_SECRET,
    TENANT,
    FakeEntra,
    FakeFoundry,
    loopback_tls,
)
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
async def wrong_secret_bedrock(aiohttp_server: Callable[..., Awaitable[TestServer]],
                               aws_env: None) -> Served:
    """A Bedrock that knows the access key under another secret: every signature mismatches,
    and its answer quotes the canonical request, session token included, as AWS's does."""
    fake = FakeBedrock(AWS_KEY, "another-secret", "us-east-1", session_token=AWS_TOKEN)
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


@pytest.fixture(scope="session")
def loopback_https(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server context for https on 127.0.0.1, its test CA trusted by aiohttp's default
    verifying context (which every session with default `ssl` uses), as a CA in the system
    store would be: azure-identity talks to https authorities only."""
    context, ca = loopback_tls(tmp_path_factory.mktemp("tls"))
    aiohttp.connector._SSL_CONTEXT_VERIFIED.load_verify_locations(cadata=ca.decode())
    return context


@pytest.fixture
async def foundry(aiohttp_server: Callable[..., Awaitable[TestServer]],
                  loopback_https: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch) -> Served:
    """A fake Foundry trusting a fake Entra ID (`foundry.fake.entra`, served over https),
    whose service principal azure-identity's default chain finds in the environment."""
    entra = FakeEntra()
    entra_server = await aiohttp_server(entra.app(), ssl=loopback_https)
    for var, value in {"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": CLIENT_ID,
                       "AZURE_CLIENT_SECRET": CLIENT_SECRET,
                       "AZURE_AUTHORITY_HOST": str(entra_server.make_url("")).rstrip("/")
                       }.items():
        monkeypatch.setenv(var, value)
    fake = FakeFoundry(entra)
    return Served(fake, await aiohttp_server(fake.app()))
