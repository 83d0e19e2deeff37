"""What Bedrock and Vertex share (proxy.providers.base.CloudProvider), and the checks that
were asserts: a body that is not a JSON object, a provider of the wrong kind in a chain."""

from __future__ import annotations

import orjson
import pytest

from proxy.errors import ProxyError
from proxy.providers.base import CloudProvider, load_json
from proxy.providers.bedrock import BedrockProvider
from proxy.providers.passthrough import _of_kind
from proxy.providers.vertex import StaticToken, VertexProvider

PROVIDERS = [
    BedrockProvider("b", "us-east-1", api_key="k", anthropic_version="bedrock-v",
                    drop_fields=("tags",), models={"claude-x": "anthropic.claude-x"}),
    VertexProvider("v", "p", StaticToken("t"), anthropic_version="vertex-v",
                   drop_fields=("tags",), models={"claude-x": "claude-x@1"}),
]


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.kind)
def test_each_platform_puts_its_version_in_and_drops_what_it_refuses(
        provider: CloudProvider) -> None:
    doc = provider.platform_body(orjson.dumps({"model": "m", "tags": ["a"], "max_tokens": 9}))
    assert doc == {"model": "m", "max_tokens": 9,
                   "anthropic_version": provider.anthropic_version}
    named = provider.platform_body(orjson.dumps({"anthropic_version": "mine"}))
    assert named["anthropic_version"] == "mine"  # the client's own wins


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.kind)
def test_configured_models_extend_the_platform_table(provider: CloudProvider) -> None:
    assert provider.models["claude-x"] in ("anthropic.claude-x", "claude-x@1")
    assert "claude-3-haiku" in provider.models  # the shipped table stays under it


@pytest.mark.parametrize("body", [b"[1, 2]", b"not json", b'"text"'])
def test_a_body_that_is_not_a_json_object_is_a_400_not_a_crash(body: bytes) -> None:
    with pytest.raises(ProxyError) as caught:
        load_json(body)
    assert (caught.value.status, caught.value.kind) == (400, "invalid_request_error")


def test_a_provider_of_another_kind_in_a_chain_is_named() -> None:
    bedrock, vertex = PROVIDERS
    assert _of_kind(bedrock, BedrockProvider) is bedrock
    with pytest.raises(TypeError, match="provider v of a bedrock chain is a vertex provider"):
        _of_kind(vertex, BedrockProvider)
