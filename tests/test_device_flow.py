"""The device flow Claude Code signs in with, against the test identity provider: metadata,
device codes, the verification page, tokens, refresh as the deprovisioning hook, revocation,
and the bearer on the proxy's hot path next to static gateway keys."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from bs4 import BeautifulSoup
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey

from dashboard import device_codes
from ledger import tokens
from ledger.signins import SignIns
from meterd.settings import Settings
from tests.conftest import MOCK_KEY, proxy_process
from tests.sso import BODY, DEVICE_GRANT, SSO, claims

pytest_plugins = ("tests.sso_fixtures",)


async def test_metadata_names_same_origin_endpoints_claude_code_will_use(sso: SSO) -> None:
    async with aiohttp.ClientSession() as s, \
            s.get(sso.url + "/.well-known/oauth-authorization-server") as r:
        assert r.status == 200
        meta = await r.json()
    assert meta["issuer"] == sso.url
    assert meta["device_authorization_endpoint"] == sso.url + "/oauth/device_authorization"
    assert meta["token_endpoint"] == sso.url + "/oauth/token"
    assert meta["revocation_endpoint"] == sso.url + "/oauth/revoke"
    assert meta["grant_types_supported"] == [DEVICE_GRANT, "refresh_token"]
    assert "authorization_endpoint" not in meta


async def test_device_authorization_answers_rfc_8628_and_ignores_unknown_fields(
        sso: SSO) -> None:
    async with sso.browser() as s, s.post(sso.url + "/oauth/device_authorization", data={
            "surface": "claude_code", "something_new": "1"}) as r:
        assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
        code = await r.json()
    assert len(base64.urlsafe_b64decode(code["device_code"] + "==")) >= 32  # ≥ 256 bits
    user_code = code["user_code"]
    assert len(user_code) == 9 and user_code[4] == "-"
    assert set(user_code.replace("-", "")) <= set(device_codes.ALPHABET)
    assert code["verification_uri"] == sso.url + "/oauth/device"
    assert code["verification_uri_complete"] == f"{sso.url}/oauth/device?user_code={user_code}"
    assert (code["expires_in"], code["interval"]) == (600, 5)


async def test_first_sign_in_provisions_the_developer_and_the_bearer_is_metered_to_them(
        sso: SSO) -> None:
    answer = await sso.sign_in("u-ada", "Ada@Example.com", ["eng-platform"])
    assert answer["token_type"] == "Bearer" and answer["email"] == "ada@example.com"
    assert answer["expires_in"] == 900 and answer["refresh_token"].startswith("mtdr_")
    jwt_claims = claims(answer["access_token"])
    assert jwt_claims["aud"] == "claude-gateway" and jwt_claims["iss"] == sso.url
    assert jwt_claims["exp"] - jwt_claims["iat"] == 900

    admin = sso.gateway.admin
    devs = await admin.db(admin.catalog.developers)
    assert [(d["email"], d["team_name"]) for d in devs] == [("ada@example.com", "platform")]
    assert jwt_claims["sub"] == devs[0]["id"]

    await sso.gateway.proxy.refresh_policy()
    r = await sso.messages(answer["access_token"])
    assert r.status == 200
    [event] = await sso.gateway.settled(1)
    assert event["developer_id"] == devs[0]["id"] and event["key_id"] == jwt_claims["sid"]
    assert [a["target"] for a in await sso.audit("signin.device")] == [jwt_claims["sid"]]

    # A second sign-in finds the same developer (by the provider's subject) and makes no other.
    again = await sso.sign_in("u-ada", "ada@example.com", ["eng-platform"])
    assert claims(again["access_token"])["sub"] == devs[0]["id"]
    assert len(await admin.db(admin.catalog.developers)) == 1


async def test_token_endpoint_answers_the_contracts_errors(sso: SSO) -> None:
    async with sso.browser() as s:
        code = await sso.device_code(s)
        assert await sso.poll(s, code["device_code"]) == (400, {
            "error": "authorization_pending"})
        status, body = await sso.poll(s, code["device_code"])  # again at once
        assert (status, body["error"]) == (400, "slow_down")
        status, body = await sso.poll(s, "not-a-device-code")
        assert (status, body["error"]) == (400, "expired_token")
        async with s.post(sso.url + "/oauth/token", data={"grant_type": DEVICE_GRANT}) as r:
            assert (r.status, (await r.json())["error"]) == (400, "invalid_request")
        async with s.post(sso.url + "/oauth/token", data={"grant_type": "password"}) as r:
            assert (r.status, (await r.json())["error"]) == (400, "unsupported_grant_type")
        status, body = await sso.refresh(s, "mtdr_not-a-refresh-token")
        assert (status, body["error"]) == (401, "invalid_grant")


async def test_a_device_code_is_single_use(sso: SSO) -> None:
    sso.idp.add_user("u-ada", "ada@example.com", ["eng"])
    sso.idp.sign_in("u-ada")
    async with sso.browser() as cli, sso.browser() as browser:
        code = await sso.device_code(cli)
        _, approval = await sso.verify(browser, code["user_code"])
        await sso.decide(browser, approval)
        first = await asyncio.gather(*(sso.poll(cli, code["device_code"]) for _ in range(5)))
        assert sorted(status for status, _ in first) == [200, 400, 400, 400, 400]
        # expired_token: the device grant's answer that makes the client stop polling (the
        # contract's table has no invalid_grant for it)
        assert {b["error"] for status, b in first if status == 400} == {"expired_token"}
        status, body = await sso.poll(cli, code["device_code"])
        assert (status, body["error"]) == (400, "expired_token")
    assert len(await sso.audit("signin.device")) == 1


async def test_an_expired_device_code_answers_expired_token(
        sso: SSO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_codes, "EXPIRES_IN", 1)
    sso.idp.add_user("u-ada", "ada@example.com", ["eng"])
    sso.idp.sign_in("u-ada")
    async with sso.browser() as cli, sso.browser() as browser:
        code = await sso.device_code(cli)
        await asyncio.sleep(1.1)
        status, body = await sso.poll(cli, code["device_code"])
        assert (status, body["error"]) == (400, "expired_token")
        status, page = await sso.verify(browser, code["user_code"])
        assert status == 400 and "has expired" in page


async def test_someone_outside_every_group_rule_is_refused_and_the_device_told_so(
        sso: SSO) -> None:
    sso.idp.add_user("u-eve", "eve@example.com", ["marketing"])
    sso.idp.sign_in("u-eve")
    async with sso.browser() as cli, sso.browser() as browser:
        code = await sso.device_code(cli)
        status, page = await sso.verify(browser, code["user_code"])
        assert status == 403
        text = BeautifulSoup(page, "html.parser").select_one("#device-message").get_text(" ")
        assert "You cannot sign in to meterd" in text and "(marketing)" in text
        assert "is mapped to a team in meterd, and there is no default team" in text
        status, body = await sso.poll(cli, code["device_code"])
        assert (status, body["error"]) == (400, "access_denied")
    admin = sso.gateway.admin
    assert await admin.db(admin.catalog.developers) == []
    [denied] = await sso.audit("signin.denied")
    assert denied["target"] == "eve@example.com"


@pytest.mark.parametrize("name", ["Ada\r\nSet-Cookie: a=b", "A" * 300],
                         ids=["cr lf", "300 characters"])
async def test_a_name_claim_meterd_cannot_store_signs_in_under_the_email(
        sso: SSO, name: str) -> None:
    sso.idp.add_user("u-ada", "ada@example.com", ["eng-platform"], name=name)
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng-platform"])
    assert answer["token_type"] == "Bearer"
    devs = await sso.gateway.admin.db(sso.gateway.admin.catalog.developers)
    assert [(d["name"], d["email"]) for d in devs] == [("ada@example.com", "ada@example.com")]


async def test_an_email_claim_meterd_cannot_store_is_refused_on_the_page(sso: SSO) -> None:
    sso.idp.add_user("u-mal", "mal\r\n@example.com", ["eng"])
    sso.idp.sign_in("u-mal")
    async with sso.browser() as cli, sso.browser() as browser:
        code = await sso.device_code(cli)
        status, page = await sso.verify(browser, code["user_code"])
        assert status == 403, page
        text = BeautifulSoup(page, "html.parser").select_one("#device-message").get_text(" ")
        assert "You cannot sign in to meterd" in text and "control characters" in text
        status, body = await sso.poll(cli, code["device_code"])
        assert (status, body["error"]) == (400, "access_denied")
    assert await sso.gateway.admin.db(sso.gateway.admin.catalog.developers) == []


async def test_a_default_team_takes_whoever_no_rule_maps(start_sso: Any) -> None:
    sso = await start_sso(oidc_default_team="everyone")
    await sso.sign_in("u-eve", "eve@example.com", ["marketing"])
    devs = await sso.gateway.admin.db(sso.gateway.admin.catalog.developers)
    assert [d["team_name"] for d in devs] == ["everyone"]


async def test_an_email_outside_the_allowed_domains_is_refused(sso: SSO) -> None:
    sso.idp.add_user("u-mal", "mal@elsewhere.example", ["eng"])
    sso.idp.sign_in("u-mal")
    async with sso.browser() as cli, sso.browser() as browser:
        code = await sso.device_code(cli)
        status, page = await sso.verify(browser, code["user_code"])
        assert status == 403 and "not in a domain allowed" in page
    assert [a["target"] for a in await sso.audit("signin.denied")] == ["mal@elsewhere.example"]


async def test_denying_in_the_browser_tells_the_device_access_denied(sso: SSO) -> None:
    sso.idp.add_user("u-ada", "ada@example.com", ["eng"])
    sso.idp.sign_in("u-ada")
    async with sso.browser() as cli, sso.browser() as browser:
        code = await sso.device_code(cli)
        _, approval = await sso.verify(browser, code["user_code"])
        status, page = await sso.decide(browser, approval, "deny")
        assert status == 200 and "Sign-in denied" in page
        status, body = await sso.poll(cli, code["device_code"])
        assert (status, body["error"]) == (400, "access_denied")


async def test_the_provider_is_asked_with_pkce_and_its_id_token_checked(sso: SSO) -> None:
    await sso.sign_in("u-ada", "ada@example.com", ["eng"])
    [(_, authorize)] = [r for r in sso.idp.requests if r[0] == "/authorize"]
    assert authorize["code_challenge_method"] == "S256" and authorize["nonce"]
    assert authorize["redirect_uri"] == sso.url + "/oauth/callback"

    # An ID token for another audience is refused, and so is one signed with a key that is
    # not in the provider's JWKS.
    from joserfc.jwk import RSAKey
    for tamper in ({"aud": "someone-else"}, None):
        if tamper:
            sso.idp.id_token_overrides = tamper
        else:
            sso.idp.id_token_overrides = {}
            sso.idp.sign_with = RSAKey.generate_key(2048, parameters={"kid": "idp-1"})
        async with sso.browser() as cli, sso.browser() as browser:
            code = await sso.device_code(cli)
            status, page = await sso.verify(browser, code["user_code"])
            assert status == 403 and "ID token is not valid" in page


async def test_verification_page_fills_in_the_code_but_never_submits_it(sso: SSO) -> None:
    async with sso.browser() as browser:
        code = await sso.device_code(browser)
        async with browser.get(code["verification_uri_complete"]) as r:
            assert r.status == 200
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
            page = BeautifulSoup(await r.text(), "html.parser")
    assert page.select_one("#device-code input[name=user_code]")["value"] == code["user_code"]
    assert page.select_one("#device-code")["method"] == "post"
    assert not page.select("script") and not page.select("meta[http-equiv]")
    assert not sso.idp.requests  # nothing went to the provider until someone presses Continue


async def test_verification_page_refuses_posts_from_elsewhere_or_without_its_token(
        sso: SSO) -> None:
    async with sso.browser() as cli, sso.browser() as browser:
        code = await sso.device_code(cli)
        async with browser.get(sso.url + "/oauth/device") as r:
            csrf = BeautifulSoup(await r.text(), "html.parser").select_one(
                "#device-code input[name=csrf]")["value"]
        form = {"csrf": csrf, "user_code": code["user_code"]}
        for data, headers in (({**form, "csrf": "wrong"}, {"Origin": sso.url}),
                              (form, {"Origin": "https://evil.example"}),
                              (form, {"Sec-Fetch-Site": "cross-site"})):
            async with browser.post(sso.url + "/oauth/device", data=data, headers=headers,
                                    allow_redirects=False) as r:
                assert r.status == 403, (data, headers)
        async with sso.browser() as stranger, stranger.post(
                sso.url + "/oauth/device", data=form, headers={"Origin": sso.url},
                allow_redirects=False) as r:
            assert r.status == 403  # a token without the cookie it belongs to
    assert not sso.idp.requests


async def test_verification_page_limits_attempts_per_address(sso: SSO) -> None:
    async with sso.browser() as browser:
        async with browser.get(sso.url + "/oauth/device") as r:
            csrf = BeautifulSoup(await r.text(), "html.parser").select_one(
                "#device-code input[name=csrf]")["value"]
        statuses = []
        for _ in range(22):
            async with browser.post(sso.url + "/oauth/device", headers={"Origin": sso.url},
                                    data={"csrf": csrf, "user_code": "BCDF-GHJK"}) as r:
                statuses.append(r.status)
    assert statuses[:20] == [400] * 20 and statuses[20:] == [429, 429]


async def test_behind_a_trusted_proxy_the_limit_counts_each_client(start_sso: Any) -> None:
    sso = await start_sso(trusted_proxies=("127.0.0.1",))
    async with sso.browser() as browser:
        async with browser.get(sso.url + "/oauth/device") as r:
            csrf = BeautifulSoup(await r.text(), "html.parser").select_one(
                "#device-code input[name=csrf]")["value"]

        async def submit(client: str) -> int:
            async with browser.post(sso.url + "/oauth/device", data={
                    "csrf": csrf, "user_code": "BCDF-GHJK"}, headers={
                    "Origin": sso.url, "X-Forwarded-For": client}) as r:
                return r.status
        assert [await submit("203.0.113.7") for _ in range(21)][-1] == 429
        assert await submit("203.0.113.8") == 400  # another client behind the same router


async def test_refresh_after_expiry_gives_a_new_working_bearer(start_sso: Any) -> None:
    # exp is whole seconds (iat + ttl, iat truncated): a token lives between ttl - 1 and ttl
    # seconds, so 1 s could be gone before the first request.
    sso = await start_sso(access_token_ttl=2)
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng"])
    await sso.gateway.proxy.refresh_policy()
    assert (await sso.messages(answer["access_token"])).status == 200
    await asyncio.sleep(2.1)
    r = await sso.messages(answer["access_token"])
    assert r.status == 401 and r.headers["x-should-retry"] == "false"
    async with sso.browser() as s:
        status, fresh = await sso.refresh(s, answer["refresh_token"])
    assert status == 200 and fresh["refresh_token"] != answer["refresh_token"]
    assert claims(fresh["access_token"])["sid"] == claims(answer["access_token"])["sid"]
    assert (await sso.messages(fresh["access_token"])).status == 200
    assert len(await sso.audit("signin.refresh")) == 1


async def test_a_refresh_token_rotated_away_ends_the_sign_in_when_presented_again(
        sso: SSO) -> None:
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng"])
    sid = claims(answer["access_token"])["sid"]
    chain = [answer["refresh_token"]]
    async with sso.browser() as s:
        for _ in range(2):
            status, fresh = await sso.refresh(s, chain[-1])
            assert status == 200
            chain.append(fresh["refresh_token"])
        status, body = await sso.refresh(s, chain[0])  # two rotations back
        assert (status, body["error"]) == (401, "invalid_grant")
        status, body = await sso.refresh(s, chain[2])  # the family is gone
        assert (status, body["error"]) == (401, "invalid_grant")
    r = await sso.refused_within(fresh["access_token"], 1.0)
    assert r.status == 401 and r.headers["x-should-retry"] == "false"
    [revoked] = await sso.audit("signin.revoke")
    assert revoked["target"] == sid
    assert orjson.loads(revoked["after"])["reason"] == (
        "a replaced refresh token was presented again")
    # Each token rotated away is remembered in Redis by its SHA-256 under the deployment's
    # hash tag, for at least as long as a refresh token lives; no key holds a token.
    redis, base = sso.gateway.admin.redis, sso.gateway.admin.keyspace.base
    for old in chain[:2]:
        key = f"{base}:oauth:spent:{hashlib.sha256(old.encode()).hexdigest()}"
        assert await redis.get(key) == sid.encode()
        assert await redis.ttl(key) >= Settings.refresh_token_ttl - 60
    names = [k.decode() async for k in redis.scan_iter(match="*")]
    assert not [k for k in names for token in chain if token in k]


async def test_two_refreshes_of_one_token_at_once_leave_the_sign_in_standing(
        sso: SSO) -> None:
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng"])
    asked = len(sso.idp.requests)
    async with sso.browser() as a, sso.browser() as b:
        both = await asyncio.gather(sso.refresh(a, answer["refresh_token"]),
                                    sso.refresh(b, answer["refresh_token"]))
    [(_, won)] = [(st, body) for st, body in both if st == 200]
    [(lost_status, lost)] = [(st, body) for st, body in both if st != 200]
    assert (lost_status, lost["error"]) == (401, "invalid_grant")
    # The loser never reached the provider, and the winner's new pair works: not ended.
    assert [r for r, _ in sso.idp.requests[asked:]] == ["/token"]
    assert (await sso.messages(won["access_token"])).status == 200
    async with sso.browser() as s:
        status, _ = await sso.refresh(s, won["refresh_token"])
    assert status == 200
    assert await sso.audit("signin.revoke") == []


async def test_leaving_the_mapped_group_at_the_provider_ends_access_at_refresh(
        sso: SSO) -> None:
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng"])
    await sso.gateway.proxy.refresh_policy()
    assert (await sso.messages(answer["access_token"])).status == 200
    sso.idp.users["u-ada"].groups = ["marketing"]
    async with sso.browser() as s:
        status, body = await sso.refresh(s, answer["refresh_token"])
    assert (status, body["error"]) == (401, "invalid_grant")
    r = await sso.refused_within(answer["access_token"], 1.0)
    assert r.status == 401 and r.headers["x-should-retry"] == "false"
    assert "revoked" in (await r.json())["error"]["message"]
    [revoked] = await sso.audit("signin.revoke")
    assert "is mapped to a team" in orjson.loads(revoked["after"])["reason"]


async def test_moving_group_at_the_provider_moves_the_developer_at_refresh(sso: SSO) -> None:
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng"])
    sso.idp.users["u-ada"].groups = ["eng-platform"]
    async with sso.browser() as s:
        status, _ = await sso.refresh(s, answer["refresh_token"])
    assert status == 200
    devs = await sso.gateway.admin.db(sso.gateway.admin.catalog.developers)
    assert [d["team_name"] for d in devs] == ["platform"]
    assert len(await sso.audit("developer.team")) == 1


async def test_removed_or_disabled_at_the_provider_gets_invalid_grant(sso: SSO) -> None:
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng"])
    sso.idp.users["u-ada"].active = False
    async with sso.browser() as s:
        status, body = await sso.refresh(s, answer["refresh_token"])
    assert (status, body["error"]) == (401, "invalid_grant")


async def test_a_developer_disabled_in_meterd_is_refused_on_the_proxy_and_at_refresh(
        sso: SSO) -> None:
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng"])
    await sso.gateway.proxy.refresh_policy()
    assert (await sso.messages(answer["access_token"])).status == 200
    admin = sso.gateway.admin
    dev_id = claims(answer["access_token"])["sub"]
    with admin.catalog.lock:
        admin.catalog.conn.execute("UPDATE developers SET disabled = true WHERE id = ?",
                                   [dev_id])
    await admin.publish()
    r = await sso.refused_within(answer["access_token"], 1.0)
    assert r.status == 401 and r.headers["x-should-retry"] == "false"
    async with sso.browser() as s:
        status, body = await sso.refresh(s, answer["refresh_token"])
    assert (status, body["error"]) == (401, "invalid_grant")


@pytest.mark.parametrize("which", ["access", "refresh"])
async def test_once_revocation_answers_the_bearers_next_request_is_refused(
        start_sso: Any, which: str) -> None:
    """Proxies hear of a revocation at their policy refresh (here every 0.5 s): the endpoint
    answers only once they all can have, so Claude Code's next request is refused at once."""
    sso = await start_sso(policy_refresh=0.5)
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng"])
    assert (await sso.messages(answer["access_token"])).status == 200
    form = {"token": answer[f"{which}_token"]}
    if which == "refresh":
        form["token_type_hint"] = "refresh_token"
    async with sso.browser() as s, s.post(sso.url + "/oauth/revoke", data=form) as r:
        assert r.status == 200
    r = await sso.messages(answer["access_token"])
    assert r.status == 401 and r.headers["x-should-retry"] == "false"
    body = await r.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    async with sso.browser() as s:
        status, grant = await sso.refresh(s, answer["refresh_token"])
        assert (status, grant["error"]) == (401, "invalid_grant")
        async with s.post(sso.url + "/oauth/revoke", data={"token": "unknown"}) as r:
            assert r.status == 200  # RFC 7009: an unknown token is no error
    assert len(await sso.audit("signin.revoke")) == 1


def _forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    return ".".join((part(orjson.dumps(header)), part(orjson.dumps(payload)), part(signature)))


async def test_forged_expired_and_unsigned_bearers_are_refused(sso: SSO) -> None:
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng"])
    await sso.gateway.proxy.refresh_policy()
    good = claims(answer["access_token"])
    admin = sso.gateway.admin
    key = await admin.db(SignIns(admin.catalog).signing_key)
    kid = str(key.kid)
    other = ECKey.generate_key("P-256")
    now = int(time.time())
    bearers = {
        "another key under our kid": jwt.encode({"alg": "ES256", "kid": kid}, good, other),
        "expired": tokens.issue(key, issuer=sso.url, developer_id=good["sub"],
                                sid=good["sid"], email=good["email"], ttl=60,
                                now=now - 120)[0],
        "alg none": _forge({"alg": "none", "kid": kid}, good),
        "HS256 keyed with our public key": jwt.encode(
            {"alg": "HS256", "kid": kid}, good,
            OctKey.import_key(orjson.dumps(tokens.public_jwk(key))), algorithms=["HS256"]),
        "payload changed": ".".join((answer["access_token"].split(".")[0],
                                     _forge({}, {**good, "sub": "dev_other"}).split(".")[1],
                                     answer["access_token"].split(".")[2])),
    }
    for what, bearer in bearers.items():
        r = await sso.messages(bearer)
        assert r.status == 401, what
        assert r.headers["x-should-retry"] == "false", what
    assert (await sso.messages(answer["access_token"])).status == 200
    assert len(await sso.gateway.settled(1)) == 1  # only the real one reached the provider


async def test_static_gateway_keys_keep_working_next_to_bearers(sso: SSO) -> None:
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng"])
    key = await sso.gateway.developer("Grace", "compilers")
    await sso.gateway.proxy.refresh_policy()
    async with aiohttp.ClientSession() as s:
        for headers in ({"Authorization": f"Bearer {answer['access_token']}"},
                        {"x-api-key": key}, {"Authorization": f"Bearer {key}"}):
            for path in ("/v1/messages", "/v1/messages/count_tokens"):
                async with s.post(sso.url + path, data=BODY, headers=headers) as r:
                    assert r.status == 200, (path, headers, await r.text())
            async with s.get(sso.url + "/v1/models", headers=headers) as r:
                assert r.status == 200


@pytest.mark.parametrize("redis_url", ["real"], indirect=True)
async def test_another_proxy_process_refuses_a_revoked_bearer_once_revocation_answers(
        start_sso: Any, tmp_path: Path) -> None:
    sso = await start_sso(policy_refresh=0.5)
    answer = await sso.sign_in("u-ada", "ada@example.com", ["eng"])
    async with proxy_process(sso.gateway, tmp_path / "proxy2", MTD_UPSTREAM_KEY=MOCK_KEY,
                             MTD_UPSTREAM_URL=sso.gateway.upstream.url,
                             MTD_POLICY_REFRESH="0.5") as (other, _):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while (await sso.messages(answer["access_token"], other)).status != 200:
            assert loop.time() < deadline, "the other process never accepted the bearer"
            await asyncio.sleep(0.05)
        async with sso.browser() as s, s.post(sso.url + "/oauth/revoke",
                                              data={"token": answer["access_token"]}) as r:
            assert r.status == 200
        r = await sso.messages(answer["access_token"], other)
        assert r.status == 401 and r.headers["x-should-retry"] == "false"


async def test_the_first_request_right_after_signing_in_is_served(start_sso: Any) -> None:
    """The token is handed out once every proxy can have heard of the developer the sign-in
    created (policy_refresh, here 1 s): a client that calls at once is served, not refused."""
    sso = await start_sso(policy_refresh=1.0)
    answer = await sso.sign_in("u-new", "new@example.com", ["eng"])
    assert (await sso.messages(answer["access_token"])).status == 200
