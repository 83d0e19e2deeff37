"""`meterd doctor` finds the settings Claude Code will use and says what is wrong."""

from __future__ import annotations

from pathlib import Path

import orjson

from ledger.money import parse_usd
from meterd.doctor import check, discover
from tests.conftest import Gateway, free_port

NO_MANAGED: tuple[Path, ...] = ()


def test_missing_base_url_is_named(tmp_path: Path) -> None:
    found = discover({"ANTHROPIC_AUTH_TOKEN": "mtd_abc"}, tmp_path, NO_MANAGED)
    assert any("ANTHROPIC_BASE_URL is not set" in p for p in found.problems)


def test_key_in_the_wrong_variable_is_named(tmp_path: Path) -> None:
    found = discover({"ANTHROPIC_BASE_URL": "http://gw", "ANTHROPIC_TOKEN": "mtd_abc"},
                     tmp_path, NO_MANAGED)
    assert any("your gateway key is in ANTHROPIC_TOKEN" in p for p in found.problems)
    assert any("no gateway key" in p for p in found.problems)


def test_provider_key_instead_of_gateway_key_is_named(tmp_path: Path) -> None:
    found = discover({"ANTHROPIC_BASE_URL": "http://gw", "ANTHROPIC_API_KEY": "sk-ant-api03-x"},
                     tmp_path, NO_MANAGED)
    assert any("holds an Anthropic API key" in p for p in found.problems)


def test_managed_settings_override_user_settings_and_environment(tmp_path: Path) -> None:
    (tmp_path / ".claude").mkdir()
    (tmp_path / ".claude" / "settings.json").write_bytes(orjson.dumps(
        {"env": {"ANTHROPIC_BASE_URL": "http://user"}, "apiKeyHelper": "echo mtd_from_helper"}))
    managed = tmp_path / "managed-settings.json"
    managed.write_bytes(orjson.dumps({"env": {"ANTHROPIC_BASE_URL": "http://managed"}}))
    found = discover({"ANTHROPIC_BASE_URL": "http://shell"}, tmp_path, (managed,))
    assert (found.base_url, found.base_url_from) == ("http://managed", str(managed))
    assert found.key == "mtd_from_helper" and found.key_from.startswith("apiKeyHelper")
    assert found.problems == []


async def test_doctor_reports_identity_and_remaining_budget(gateway: Gateway,
                                                            tmp_path: Path) -> None:
    key = await gateway.developer("Ada", "platform")
    await gateway.change(gateway.admin.catalog.set_budget, "developer", "Ada", "monthly",
                         parse_usd("40"))
    ok, lines = await check(discover({"ANTHROPIC_BASE_URL": gateway.url,
                                      "ANTHROPIC_AUTH_TOKEN": key}, tmp_path, NO_MANAGED))
    assert ok, lines
    assert "you are: Ada (team platform)" in lines
    assert ("budget:  developer Ada, monthly: $0.00 of $40.00 spent, $40.00 left"
            in "\n".join(lines))
    assert key not in "\n".join(lines)


async def test_doctor_explains_a_revoked_key(gateway: Gateway, tmp_path: Path) -> None:
    key = await gateway.developer("Ada", "platform")
    key_id = (await gateway.admin.db(gateway.admin.catalog.keys))[0]["id"]
    await gateway.change(gateway.admin.catalog.revoke_key, key_id)
    ok, lines = await check(discover({"ANTHROPIC_BASE_URL": gateway.url,
                                      "ANTHROPIC_AUTH_TOKEN": key}, tmp_path, NO_MANAGED))
    assert not ok
    assert "problem: the gateway refused the key: gateway key has been revoked" in lines


async def test_doctor_explains_an_unreachable_gateway(tmp_path: Path) -> None:
    ok, lines = await check(discover({"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{free_port()}",
                                      "ANTHROPIC_AUTH_TOKEN": "mtd_x" * 5}, tmp_path,
                                     NO_MANAGED))
    assert not ok and any("cannot reach the gateway" in line for line in lines)
