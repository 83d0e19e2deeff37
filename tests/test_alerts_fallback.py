"""A real provider fallback (a Bedrock that refuses the organization's credential, then the
Anthropic API) reaches the admin's alert job through the proxy's report, and a webhook once."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer

from ledger.alerts import Alerter, Destinations, evaluate_ops
from ledger.catalog import Catalog, connect
from tests.conftest import Upstream
from tests.fakes.gateways import Served, StartGateway, anthropic_provider, bedrock_provider
from tests.provider_requests import BODY

pytest_plugins = ("tests.fakes.fixtures", "tests.webhook")  # the fakes, the receiver


async def test_a_real_fallback_is_told_once_with_its_count(
        start_gateway: StartGateway, wrong_secret_bedrock: Served, upstream: Upstream,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        webhook: tuple[TestServer, list[dict[str, Any]]]) -> None:
    server, got = webhook
    gw = await start_gateway(providers={
        "bedrock": bedrock_provider(wrong_secret_bedrock),
        "anthropic": anthropic_provider(upstream, monkeypatch)})
    key = await gw.developer()
    for _ in range(2):
        resp = await gw.client.post("/v1/messages", data=orjson.dumps(BODY),
                                    headers={"x-api-key": key})
        assert resp.status == 200, await resp.text()
    at = datetime.now(UTC)
    await gw.proxy.report_ops(at)  # what its maintenance loop does every second

    catalog = Catalog(connect(tmp_path / "alerts.duckdb"))
    dests = Destinations(catalog)
    dests.add("org", "", "hook", f"json://127.0.0.1:{server.port}/hook", ["fallback"])

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    alerter = Alerter(dests, db, gw.proxy.redis, gw.proxy.keyspace, backoff=0.01)
    try:
        assert await evaluate_ops(alerter, at) == 1
        assert await evaluate_ops(alerter, at) == 0
    finally:
        catalog.conn.close()
    assert [(m["title"], m["message"]) for m in got] == [(
        "Provider bedrock is failing over to anthropic",
        f"2 request(s) that bedrock failed before answering were passed to anthropic since "
        f"{at:%Y-%m-%d %H}:00 UTC.")]
