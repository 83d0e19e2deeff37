"""Real Claude Code signed in to `meterd serve` over https, the way `/login` leaves it: the
credential from meterd's device flow and the pinned certificate in `.credentials.json`. The
client then fetches its team's managed settings and applies them, and renews an expired sign-in
with the refresh grant.

How the client keeps a gateway sign-in (read from the 2.1.332 binary): `$CLAUDE_CONFIG_DIR/
.credentials.json` (plaintext on Linux) holds `enterpriseGateway` = {url, jwt, expiresAt (ms),
idpRefreshToken, email, ...} and `gatewayTrust` = {hostname: hex SHA-256 of the leaf}. At start it
restores that sign-in only when the pin matches the live certificate; such a sign-in is "pinned"
and fetches `<url>/managed/settings` (an env `ANTHROPIC_AUTH_TOKEN` is "unpinned" and does not).
It refreshes when `expiresAt` is less than 5 minutes away, POSTing the refresh grant to
`<url>/oauth/token`, and writes the renewed credential back.

Managed settings are cached in `remote-settings.json` and asked for again with `If-None-Match`
only when the client may keep them: settings it counts as dangerous (`env`, hooks, ...) need the
user's approval, which `claude -p` cannot ask for, so it applies them for that run only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.claude_code import claude_p
from tests.conftest import MOCK_KEY, Gateway, Upstream, free_port
from tests.fakes.idp import CLIENT_ID, CLIENT_SECRET, FakeIdP
from tests.sso import BODY, SSO, claims
from tests.test_tls import make_certificate, trusting

pytest_plugins = ("tests.sso_fixtures",)

POLICY = {"model": "claude-sonnet-4-6"}  # nothing that needs the user's approval


@dataclass
class HttpsSSO(SSO):
    """The device-flow client of tests/sso.py against a meterd in its own https process."""

    base: str = ""
    trust: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return self.base

    def browser(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     connector=aiohttp.TCPConnector(ssl=self.trust))


@dataclass
class Served:
    url: str
    cert: Path
    env: dict[str, str]

    async def cli(self, *args: str, stdin: bytes = b"") -> str:
        """`meterd …` against the running server (its admin API on the data dir's socket)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meterd.cli", *args, env=self.env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate(stdin)
        assert proc.returncode == 0, err.decode()
        return out.decode()

    async def set_policy(self, settings: dict[str, Any]) -> None:
        """Team platform's managed settings, saved through the admin API (`meterd managed set`)."""
        await self.cli("managed", "set", "platform", "-", stdin=json.dumps(settings).encode())

    def sso(self, idp: FakeIdP) -> HttpsSSO:
        return HttpsSSO(cast(Gateway, None), idp, self.url, trusting(self.cert))

    async def sign_in(self, idp: FakeIdP) -> dict[str, Any]:
        """Ada's device flow, approved at the verification page: the token answer."""
        return await self.sso(idp).sign_in("u-ada", "ada@example.com", ["eng-platform"])


@contextlib.asynccontextmanager
async def _serve(tmp_path: Path, upstream: Upstream, idp: FakeIdP,
                 **more: str) -> AsyncIterator[Served]:
    """`meterd serve` on https://localhost:<port> with a fresh certificate, signing developers
    in through the loopback identity provider into team platform (more `MTD_*` in `more`)."""
    cert, key = make_certificate(tmp_path)
    port = free_port()
    env = {**os.environ, "MTD_UPSTREAM_URL": upstream.url, "MTD_UPSTREAM_KEY": MOCK_KEY,
           "MTD_LOG_LEVEL": "warning", "MTD_DATA_DIR": str(tmp_path / "data"),
           "MTD_TLS_CERT_FILE": str(cert), "MTD_TLS_KEY_FILE": str(key),
           "MTD_OIDC_ISSUER": idp.issuer, "MTD_OIDC_CLIENT_ID": CLIENT_ID,
           "MTD_OIDC_CLIENT_SECRET": CLIENT_SECRET, "MTD_OIDC_ALLOW_LOOPBACK": "1",
           "MTD_OIDC_ALLOWED_DOMAINS": "example.com", "MTD_OIDC_DEFAULT_TEAM": "platform",
           **more}
    env.pop("MTD_REDIS_URL", None)  # the embedded Redis: one process, nothing shared
    env.pop("REDIS_URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meterd.cli", "serve", "--port", str(port), env=env)
    url = f"https://localhost:{port}"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                ssl=trusting(cert))) as s:
            for _ in range(300):
                try:
                    async with s.get(url + "/.well-known/oauth-authorization-server") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert proc.returncode is None, "meterd serve exited"
                await asyncio.sleep(0.05)
            else:
                pytest.fail("meterd serve did not answer over https")
        served = Served(url, cert, env)
        await served.cli("team", "create", "platform")
        yield served
    finally:
        proc.terminate()
        await proc.wait()


def _fingerprint(cert: Path) -> str:
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    return leaf.fingerprint(hashes.SHA256()).hex()


def _sign_in_as_login_does(config: Path, served: Served, answer: dict[str, Any],
                           expires_at_ms: int) -> None:
    """What `/login` leaves in the config dir after the user confirmed the certificate."""
    config.mkdir(parents=True, exist_ok=True)
    (config / ".credentials.json").write_text(json.dumps({
        "enterpriseGateway": {"url": served.url, "jwt": answer["access_token"],
                              "expiresAt": expires_at_ms,
                              "idpRefreshToken": answer["refresh_token"],
                              "email": answer["email"]},
        "gatewayTrust": {"localhost": _fingerprint(served.cert)}}))
    (config / ".credentials.json").chmod(0o600)


async def _claude(home: Path, served: Served) -> tuple[int, str, str]:
    """`claude -p` with no credential in the environment: (exit status, output, debug log)."""
    run = await claude_p(home, {"NODE_EXTRA_CA_CERTS": str(served.cert),
                                "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1"},
                         model=None, debug=True)
    return run.code, run.output, run.debug



async def _answer(sso: SSO, bearer: str) -> tuple[int, str]:
    async with sso.browser() as s, s.post(sso.url + "/v1/messages", data=BODY, headers={
            "Authorization": f"Bearer {bearer}", "content-type": "application/json"}) as r:
        return r.status, await r.text()


async def _until(sso: SSO, bearer: str, status: int, seconds: float) -> str:
    """Send requests with `bearer` until one is answered `status`; its body."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        got, body = await _answer(sso, bearer)
        if got == status:
            return body
        assert loop.time() < deadline, f"no {status} within {seconds} s: {got} {body}"
        await asyncio.sleep(0.05)


def _models(upstream: Upstream) -> list[str]:
    return [json.loads(r["body"])["model"] for r in upstream.recorded
            if r["path_qs"].startswith("/v1/messages") and r["body"]]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("redis_url", ["embedded"], indirect=True)
async def test_signed_in_claude_code_fetches_and_applies_its_team_managed_settings(
        idp: FakeIdP, upstream: Upstream, tmp_path: Path, redis_url: str) -> None:
    home = tmp_path / "home"
    async with _serve(tmp_path, upstream, idp) as served:
        await served.set_policy(POLICY)
        answer = await served.sign_in(idp)
        _sign_in_as_login_does(home / ".claude", served, answer,
                               claims(answer["access_token"])["exp"] * 1000)
        first = await _claude(home, served)
        # The next start asks with the checksum it has (If-None-Match) and meterd answers 304.
        second = await _claude(home, served)

    returncode, out, debug = first
    assert returncode == 0, out[-2000:] + debug[-3000:]
    assert "Hello from the meterd mock upstream" in out
    assert "Remote settings: Fetched successfully" in debug, debug[-3000:]
    assert "Remote settings: Applied new settings successfully" in debug
    # No --model: the model came from the team's managed settings.
    assert "dispatching to gateway model=claude-sonnet-4-6" in debug
    assert _models(upstream)[-1] == "claude-sonnet-4-6"
    cached = home / ".claude" / "remote-settings.json"
    assert json.loads(cached.read_text()) == POLICY

    returncode, out, debug = second
    assert returncode == 0, out[-2000:] + debug[-3000:]
    assert "Remote settings: Cache still valid (304 Not Modified)" in debug, debug[-3000:]
    assert "Remote settings: Fetched successfully" not in debug
    assert _models(upstream)[-1] == "claude-sonnet-4-6"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("redis_url", ["embedded"], indirect=True)
async def test_claude_code_renews_an_expired_sign_in_with_the_refresh_grant_and_goes_on(
        idp: FakeIdP, upstream: Upstream, tmp_path: Path, redis_url: str) -> None:
    async with _serve(tmp_path, upstream, idp, MTD_ACCESS_TOKEN_TTL="8") as served:
        sso = served.sso(idp)
        answer = await served.sign_in(idp)
        expires_at = claims(answer["access_token"])["exp"] * 1000
        home = tmp_path / "home"
        _sign_in_as_login_does(home / ".claude", served, answer, expires_at)
        # Served once the proxy's snapshot has the new developer, then refused as expired.
        await _until(sso, answer["access_token"], 200, 5.0)
        assert "has expired" in await _until(sso, answer["access_token"], 401, 12.0)

        returncode, out, debug = await _claude(home, served)
    assert returncode == 0, out[-2000:] + debug[-3000:]
    assert "Hello from the meterd mock upstream" in out
    renewed = json.loads((home / ".claude" / ".credentials.json").read_text())["enterpriseGateway"]
    assert renewed["jwt"] != answer["access_token"]
    assert renewed["expiresAt"] > expires_at
    assert claims(renewed["jwt"])["sid"] == claims(answer["access_token"])["sid"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("redis_url", ["embedded"], indirect=True)
async def test_claude_p_applies_settings_needing_approval_for_the_run_without_caching_them(
        idp: FakeIdP, upstream: Upstream, tmp_path: Path, redis_url: str) -> None:
    async with _serve(tmp_path, upstream, idp) as served:
        await served.set_policy({**POLICY, "env": {"CLAUDE_CODE_GATEWAY_HINT_HEADERS": "1"}})
        answer = await served.sign_in(idp)
        home = tmp_path / "home"
        _sign_in_as_login_does(home / ".claude", served, answer,
                               claims(answer["access_token"])["exp"] * 1000)
        for _ in range(2):
            returncode, out, debug = await _claude(home, served)
            assert returncode == 0, out[-2000:] + debug[-3000:]
            assert "Remote settings: Fetched successfully" in debug, debug[-3000:]
            assert "consent deferred" in debug
            assert "dispatching to gateway model=claude-sonnet-4-6" in debug
            assert "304 Not Modified" not in debug
            assert not (home / ".claude" / "remote-settings.json").exists()
