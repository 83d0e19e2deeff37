"""Managed settings per team at GET /managed/settings, with the protocol's checksum, ETag,
304 and 404, edited through the admin API (checked, previewed as a diff, audited)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from dashboard.accounts import Accounts
from ledger.managed import ManagedSettings, checksum
from tests.sso import SSO

pytest_plugins = ("tests.sso_fixtures",)


@pytest.mark.parametrize(("settings", "canonical"), [
    ({}, "{}"),
    ({"b": 1, "a": {"d": [1, 2], "c": "é"}}, '{"a":{"c":"é","d":[1,2]},"b":1}'),
    ({"env": {"Z": "1", "A": "x y"}, "permissions": {"deny": ["Bash(rm:*)"]}},
     '{"env":{"A":"x y","Z":"1"},"permissions":{"deny":["Bash(rm:*)"]}}'),
    ({"list": [{"y": True, "x": None}]}, '{"list":[{"x":null,"y":true}]}'),
])
def test_checksum_is_sha256_of_json_with_sorted_keys_and_no_whitespace(
        settings: dict[str, Any], canonical: str) -> None:
    assert checksum(settings) == "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


async def _get(sso: SSO, bearer: str, etag: str | None = None) -> tuple[int, Any, str]:
    headers = {"Authorization": f"Bearer {bearer}"}
    if etag is not None:
        headers["If-None-Match"] = etag
    async with aiohttp.ClientSession() as s, s.get(sso.url + "/managed/settings",
                                                   headers=headers) as r:
        body = await r.read()
        return r.status, orjson.loads(body) if body else None, r.headers.get("ETag", "")


async def _api(sso: SSO, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    admin = sso.gateway.admin
    _, key = await admin.db(Accounts(admin.catalog).issue_admin_key, "rw", "test")
    async with aiohttp.ClientSession() as s, s.request(
            method, f"{sso.url}/admin/api/v1/managed_settings{path}", data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {key}"}) as r:
        return r.status, await r.json()


async def _published(sso: SSO) -> None:
    await sso.gateway.proxy.refresh_policy()


async def test_the_callers_team_policy_is_served_with_etag_and_304(sso: SSO) -> None:
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng-platform"])
    bearer = answer["access_token"]
    await _published(sso)
    assert (await _get(sso, bearer))[0] == 404  # no policy at all

    org = {"env": {"CLAUDE_CODE_ENABLE_TELEMETRY": "1"}}
    status, saved = await _api(sso, "PUT", "/org", org)
    assert status == 200 and saved["checksum"] == checksum(org)
    await _published(sso)
    status, doc, etag = await _get(sso, bearer)
    assert status == 200 and doc == {"uuid": saved["uuid"], "checksum": checksum(org),
                                     "settings": org}
    assert etag == f'"{checksum(org)}"'
    assert (await _get(sso, bearer, etag))[:2] == (304, None)
    assert (await _get(sso, bearer, '"sha256:stale"'))[0] == 200
    assert (await _get(sso, bearer, "*"))[0] == 200  # Claude Desktop's probe: as if absent

    team = {"permissions": {"deny": ["WebFetch"]}, "env": {}}
    await _api(sso, "PUT", "/platform", team)
    await _published(sso)
    status, doc, etag = await _get(sso, bearer, etag)
    assert status == 200 and doc["settings"] == team and etag == f'"{checksum(team)}"'

    # Another team's developer (a static key works here too) still gets the org's.
    key = await sso.gateway.developer("Grace", "compilers")
    async with aiohttp.ClientSession() as s, s.get(sso.url + "/managed/settings",
                                                   headers={"x-api-key": key}) as r:
        assert r.status == 200 and (await r.json())["settings"] == org

    await _api(sso, "PUT", "/platform", {})  # an empty policy is not "no policy"
    await _published(sso)
    status, doc, _ = await _get(sso, bearer)
    assert status == 200 and doc["settings"] == {}
    assert (await _api(sso, "DELETE", "/platform", None))[0] == 200
    await _published(sso)
    assert (await _get(sso, bearer))[1]["settings"] == org


async def test_settings_are_checked_previewed_as_a_diff_and_audited(sso: SSO) -> None:
    await sso.gateway.developer("Grace", "compilers")
    for bad, says in (([1, 2], "JSON object"), ({"env": {"A": 1}}, '"env" maps'),
                      ({"permissions": "all"}, '"permissions" is a JSON object')):
        status, body = await _api(sso, "PUT", "/compilers", bad)
        assert status == 400 and says in body["error"]["message"]
    await _api(sso, "PUT", "/compilers", {"env": {"A": "1"}})
    status, preview = await _api(sso, "POST", "/compilers/preview", {"env": {"A": "2"}})
    assert status == 200 and preview["checksum"] == checksum({"env": {"A": "2"}})
    assert [line for line in preview["diff"] if line[:1] in "+-" and line[:3] not in
            ("+++", "---")] == ['-    "A": "1"', '+    "A": "2"']
    admin = sso.gateway.admin
    assert (await admin.db(ManagedSettings(admin.catalog).get, "compilers"))["settings"] == {
        "env": {"A": "1"}}  # a preview saves nothing
    audit = [a for a in await admin.db(admin.catalog.audit, 100)
             if a["action"] == "managed_settings.set"]
    assert len(audit) == 1 and orjson.loads(audit[0]["after"])["settings"] == {"env": {"A": "1"}}
    assert (await _api(sso, "GET", "/nobody"))[0] == 404


async def test_a_put_whose_if_match_is_stale_is_refused_with_409(sso: SSO) -> None:
    await sso.gateway.developer("Grace", "compilers")
    await _api(sso, "PUT", "/compilers", {"env": {"A": "1"}})
    _, preview = await _api(sso, "POST", "/compilers/preview", {"env": {"A": "2"}})
    assert preview["base"] == checksum({"env": {"A": "1"}})
    await _api(sso, "PUT", "/compilers", {"env": {"A": "3"}})  # someone else, meanwhile
    admin = sso.gateway.admin
    _, key = await admin.db(Accounts(admin.catalog).issue_admin_key, "rw", "test")

    async def put(etag: str) -> int:
        async with aiohttp.ClientSession() as s, s.put(
                f"{sso.url}/admin/api/v1/managed_settings/compilers",
                data=orjson.dumps({"env": {"A": "2"}}),
                headers={"Authorization": f"Bearer {key}", "If-Match": etag}) as r:
            return r.status
    assert await put(f'"{preview["base"]}"') == 409
    assert (await admin.db(ManagedSettings(admin.catalog).get, "compilers"))["settings"] == {
        "env": {"A": "3"}}
    assert await put(f'"{checksum({"env": {"A": "3"}})}"') == 200


@pytest.mark.parametrize("redis_url", ["embedded"], indirect=True)
def test_cli_shows_and_sets_managed_settings(tmp_path: Path, redis_url: str) -> None:
    """Direct mode (no server running): show prints JSON that set reads back."""
    env = {**os.environ, "MTD_DATA_DIR": str(tmp_path / "data")}

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "meterd.cli", *args], env=env,
                              input=stdin, capture_output=True, text=True, timeout=60)
    assert cli("team", "create", "platform").returncode == 0
    settings = {"env": {"CLAUDE_CODE_GATEWAY_HINT_HEADERS": "1"}}
    preview = cli("managed", "set", "platform", "-", "--preview", stdin=orjson.dumps(
        settings).decode())
    assert preview.returncode == 0 and f"would serve: {checksum(settings)}" in preview.stdout
    assert cli("managed", "show", "platform").returncode == 2  # nothing saved by a preview
    (tmp_path / "s.json").write_bytes(orjson.dumps(settings))
    saved = cli("managed", "set", "platform", str(tmp_path / "s.json"))
    assert saved.returncode == 0 and '+    "CLAUDE_CODE_GATEWAY_HINT_HEADERS": "1"' in \
        saved.stdout.splitlines()
    shown = cli("managed", "show", "platform")
    assert orjson.loads(shown.stdout) == settings and checksum(settings) in shown.stderr
    refused = cli("managed", "set", "org", "-", stdin="[1]")
    assert refused.returncode == 2 and "JSON object" in refused.stderr
