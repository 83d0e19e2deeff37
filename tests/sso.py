"""Signing developers in through the test identity provider: a client that walks the device
flow the way Claude Code and a browser do (fixtures: tests/sso_fixtures.py)."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from bs4 import BeautifulSoup

from tests.conftest import Gateway
from tests.fakes.idp import FakeIdP

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
RULES = ({"group": "eng-platform", "team": "platform"},
         {"group": "eng", "team": "engineering"},
         {"group": "finops", "role": "finance"})
BODY = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 64,
                     "messages": [{"role": "user", "content": "Hi"}]})


def claims(jwt: str) -> dict[str, Any]:
    """A JWT's payload, read without verifying (as Claude Code reads it)."""
    payload = jwt.split(".")[1]
    return dict(orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


@dataclass
class SSO:
    gateway: Gateway
    idp: FakeIdP

    @property
    def url(self) -> str:
        return self.gateway.url

    def browser(self) -> aiohttp.ClientSession:
        """A cookie-keeping client, like a browser (cookies on a bare IP need unsafe=True)."""
        return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def device_code(self, s: aiohttp.ClientSession) -> dict[str, Any]:
        async with s.post(self.url + "/oauth/device_authorization",
                          data={"surface": "claude_code"}) as r:
            assert r.status == 200, await r.text()
            return dict(await r.json())

    async def poll(self, s: aiohttp.ClientSession, device_code: str) -> tuple[int, Any]:
        async with s.post(self.url + "/oauth/token", data={
                "grant_type": DEVICE_GRANT, "device_code": device_code}) as r:
            return r.status, await r.json()

    async def refresh(self, s: aiohttp.ClientSession, refresh_token: str) -> tuple[int, Any]:
        async with s.post(self.url + "/oauth/token", data={
                "grant_type": "refresh_token", "refresh_token": refresh_token}) as r:
            return r.status, await r.json()

    async def verify(self, browser: aiohttp.ClientSession, user_code: str) -> tuple[int, str]:
        """Open the verification page, submit the code: (status, page) where the provider
        sends the browser back (the approval page, or a refusal)."""
        async with browser.get(self.url + "/oauth/device", params={"user_code": user_code}) as r:
            page = BeautifulSoup(await r.text(), "html.parser")
        csrf = page.select_one("#device-code input[name=csrf]")["value"]
        async with browser.post(self.url + "/oauth/device", data={
                "csrf": csrf, "user_code": user_code}, headers={"Origin": self.url}) as r:
            return r.status, await r.text()

    async def decide(self, browser: aiohttp.ClientSession, approval_page: str,
                     decision: str = "approve") -> tuple[int, str]:
        page = BeautifulSoup(approval_page, "html.parser")
        form = {i["name"]: i["value"] for i in page.select("#approve-form input[type=hidden]")}
        async with browser.post(self.url + "/oauth/approve", data={**form, "decision": decision},
                                headers={"Origin": self.url}) as r:
            return r.status, await r.text()

    async def sign_in(self, sub: str, email: str, groups: list[str]) -> dict[str, Any]:
        """The whole flow for one person: the token answer Claude Code gets."""
        if sub not in self.idp.users:
            self.idp.add_user(sub, email, groups)
        self.idp.sign_in(sub)
        async with self.browser() as cli, self.browser() as browser:
            code = await self.device_code(cli)
            status, approval = await self.verify(browser, code["user_code"])
            assert status == 200, approval
            status, done = await self.decide(browser, approval)
            assert status == 200, done
            status, answer = await self.poll(cli, code["device_code"])
            assert status == 200, answer
            return dict(answer)

    async def messages(self, bearer: str, url: str | None = None) -> aiohttp.ClientResponse:
        async with aiohttp.ClientSession() as s, s.post(
                (url or self.url) + "/v1/messages", data=BODY,
                headers={"Authorization": f"Bearer {bearer}",
                         "content-type": "application/json"}) as r:
            await r.read()
            return r

    async def refused_within(self, bearer: str, seconds: float,
                             url: str | None = None) -> aiohttp.ClientResponse:
        """Send requests with `bearer` until one is refused; fail if that takes longer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            r = await self.messages(bearer, url)
            if r.status != 200:
                return r
            assert loop.time() < deadline, f"bearer still served after {seconds} s"
            await asyncio.sleep(0.02)

    async def audit(self, action: str) -> list[dict[str, Any]]:
        rows = await self.gateway.admin.db(self.gateway.admin.catalog.audit, 1000)
        return [r for r in rows if r["action"] == action]
