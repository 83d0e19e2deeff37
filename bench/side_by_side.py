"""meterd next to Anthropic's gateway (`claude gateway`), endpoint by endpoint of the gateway
protocol, on the same identity provider, the same upstream and the same requests.

    python bench/side_by_side.py [--reference URL] [--markdown]

Needs the reference setup running (`../shared/anchors/claude-apps-gateway/setup.sh`: its test
IdP on 26100, fake Messages API on 26200, gateway on 26300). Starts `meterd serve` on a free
port against that IdP and upstream (embedded Redis, a temporary data directory), signs one user
in on each through the device flow, headlessly, the way a browser would, then sends each probe
to both and prints one row per probe: what each answered (status and the fields that matter).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from bs4 import BeautifulSoup

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import free_port  # noqa: E402

IDP = "http://127.0.0.1:26100"
UPSTREAM = "http://127.0.0.1:26200"
UPSTREAM_KEY = "sk-ant-fake-upstream-key"  # the reference setup's gw/env.sh
CLIENT_ID, CLIENT_SECRET = "cag-client", "cag-secret-0123456789abcdef"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
BODY = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 32,
                     "messages": [{"role": "user", "content": "Hi"}]})
USER = {"sub": "side-by-side", "email": "side@example.com", "name": "Side By Side",
        "groups": ["eng"]}


@dataclass
class Gateway:
    """One of the two gateways: its base URL, its discovery document, and how a browser
    approves a user code on it."""

    name: str
    url: str
    approve: Callable[[Gateway, aiohttp.ClientSession, dict[str, Any]], Awaitable[None]]
    meta: dict[str, Any] = field(default_factory=dict)

    def endpoint(self, name: str) -> str:
        return str(self.meta.get(name) or self.url + "/oauth/token")


def browser() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def approve_reference(gw: Gateway, b: aiohttp.ClientSession, code: dict[str, Any]) -> None:
    """The reference's verification page: submit the code; the IdP approves the set user."""
    async with b.get(code["verification_uri_complete"]) as r:
        await r.read()
    async with b.post(gw.url + "/device", data={"user_code": code["user_code"]},
                      headers={"Origin": gw.url}) as r:
        await r.read()


async def approve_meterd(gw: Gateway, b: aiohttp.ClientSession, code: dict[str, Any]) -> None:
    """meterd's verification page: the code form (CSRF), the IdP, then the approval form."""
    async with b.get(code["verification_uri_complete"]) as r:
        page = BeautifulSoup(await r.text(), "html.parser")
    form = page.select_one("#device-code")
    fields = {i["name"]: i.get("value", "") for i in form.select("input[name]")} if form else {}
    async with b.post(gw.url + "/oauth/device", data={**fields, "user_code": code["user_code"]},
                      headers={"Origin": gw.url}) as r:
        page = BeautifulSoup(await r.text(), "html.parser")
    approval = {i["name"]: i["value"] for i in page.select("#approve-form input[type=hidden]")}
    async with b.post(gw.url + "/oauth/approve", data={**approval, "decision": "approve"},
                      headers={"Origin": gw.url}) as r:
        await r.read()


async def call(method: str, url: str, **kw: Any) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as s, s.request(method, url, **kw) as r:
        raw = await r.read()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode(errors="replace")[:60]
        return r.status, dict(r.headers), body


def shown(status: int, headers: dict[str, str], body: Any, *keys: str) -> str:
    """`status` and what matters of the answer: an OAuth error code, an Anthropic error type,
    the named keys, and x-should-retry when present."""
    parts = [str(status)]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, str):
            parts.append(err)
        elif isinstance(err, dict):
            parts.append(str(err.get("type")))
        parts += [f"{k}={body[k]!r}" if not isinstance(body[k], (dict, list)) else k
                  for k in keys if k in body]
    elif body:
        parts.append(repr(body[:40]))
    if "x-should-retry" in {h.lower() for h in headers}:
        retry = {k.lower(): v for k, v in headers.items()}["x-should-retry"]
        parts.append(f"x-should-retry: {retry}")
    return " ".join(parts)


async def device_code(gw: Gateway) -> dict[str, Any]:
    _, _, body = await call("POST", gw.endpoint("device_authorization_endpoint"),
                            data={"surface": "claude_code"})
    return dict(body)


async def poll(gw: Gateway, code: str) -> tuple[int, dict[str, str], Any]:
    return await call("POST", gw.endpoint("token_endpoint"),
                      data={"grant_type": DEVICE_GRANT, "device_code": code})


async def sign_in(gw: Gateway) -> tuple[dict[str, Any], str]:
    """The token answer of a whole device flow, and the used device code."""
    code = await device_code(gw)
    async with browser() as b:
        await gw.approve(gw, b, code)
    for _ in range(10):
        status, _, body = await poll(gw, code["device_code"])
        if status == 200:
            return dict(body), code["device_code"]
        await asyncio.sleep(1)
    raise RuntimeError(f"{gw.name}: the device flow did not complete: {status} {body}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "content-type": "application/json",
            "anthropic-version": "2023-06-01"}


def forged(token: str) -> str:
    head, payload, sig = token.split(".")
    return f"{head}.{payload}.{sig[:-4]}AAAA"


def alg_none(token: str) -> str:
    payload = token.split(".")[1]
    head = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    return f"{head}.{payload}."


async def probes(gw: Gateway) -> dict[str, str]:
    """Every probe on one gateway, in order (later probes revoke what earlier ones used)."""
    out: dict[str, str] = {}
    status, headers, meta = await call("GET", gw.url + "/.well-known/oauth-authorization-server")
    gw.meta = meta if isinstance(meta, dict) else {}
    out["discovery"] = shown(status, headers, None) + " " + ", ".join(sorted(gw.meta))
    token_url = gw.endpoint("token_endpoint")
    out["device code, unknown"] = shown(*await poll(gw, "no-such-code"))
    out["unsupported grant"] = shown(*await call("POST", token_url, data={"grant_type": "foo"}))
    out["refresh, unknown token"] = shown(*await call(
        "POST", token_url, data={"grant_type": "refresh_token", "refresh_token": "nope"}))
    pending = await device_code(gw)
    out["device authorization"] = "200 " + ", ".join(sorted(pending))
    out["poll before approval"] = shown(*await poll(gw, pending["device_code"]))
    out["poll again at once"] = shown(*await poll(gw, pending["device_code"]))
    answer, used = await sign_in(gw)
    out["poll after approval"] = "200 " + ", ".join(sorted(answer))
    out["device code, used"] = shown(*await poll(gw, used))
    access, refresh = answer["access_token"], answer.get("refresh_token", "")
    msgs = gw.url + "/v1/messages"
    out["messages, bearer"] = shown(*await call("POST", msgs, data=BODY, headers=bearer(access)))
    out["messages, no credential"] = shown(*await call(
        "POST", msgs, data=BODY, headers={"content-type": "application/json"}))
    out["messages, forged signature"] = shown(*await call(
        "POST", msgs, data=BODY, headers=bearer(forged(access))))
    out["messages, alg none"] = shown(*await call(
        "POST", msgs, data=BODY, headers=bearer(alg_none(access))))
    status, headers, models = await call("GET", gw.url + "/v1/models", headers=bearer(access))
    count = len(models.get("data", [])) if isinstance(models, dict) else 0
    out["models"] = f"{status} {count} models"
    out["managed settings"] = shown(*await call("GET", gw.url + "/managed/settings",
                                                headers=bearer(access)))
    out["managed settings, no credential"] = shown(*await call(
        "GET", gw.url + "/managed/settings"))
    out["usage (/api/oauth/usage)"] = shown(*await call(
        "GET", gw.url + "/api/oauth/usage", headers=bearer(access)), "extra_usage")
    status, headers, fresh = await call("POST", token_url, data={
        "grant_type": "refresh_token", "refresh_token": refresh})
    out["refresh"] = shown(status, headers, fresh, "token_type", "expires_in")
    out["refresh, old token again"] = shown(*await call("POST", token_url, data={
        "grant_type": "refresh_token", "refresh_token": refresh}))
    current = fresh.get("refresh_token", refresh) if isinstance(fresh, dict) else refresh
    revoke = gw.meta.get("revocation_endpoint")
    if revoke:
        out["revoke (RFC 7009)"] = shown(*await call("POST", revoke, data={"token": current}))
    else:
        out["revoke (RFC 7009)"] = "no revocation_endpoint"
    out["refresh after revoke"] = shown(*await call("POST", token_url, data={
        "grant_type": "refresh_token", "refresh_token": current}))
    await asyncio.sleep(1.5)
    latest = fresh.get("access_token", access) if isinstance(fresh, dict) else access
    out["messages 1.5 s after revoke"] = shown(*await call("POST", msgs, data=BODY,
                                                           headers=bearer(latest)))
    return out


@contextlib.asynccontextmanager
async def meterd() -> AsyncIterator[str]:
    """`meterd serve` against the reference IdP and upstream, on a free port."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="meterd-sbs-") as tmp:
        env = {**os.environ, "MTD_DATA_DIR": tmp, "MTD_PROXY_PORT": str(port),
               "MTD_ADMIN_PORT": str(free_port()), "MTD_UPSTREAM_URL": UPSTREAM,
               "MTD_UPSTREAM_KEY": UPSTREAM_KEY, "MTD_OIDC_ISSUER": IDP,
               "MTD_OIDC_CLIENT_ID": CLIENT_ID, "MTD_OIDC_CLIENT_SECRET": CLIENT_SECRET,
               "MTD_OIDC_ALLOW_LOOPBACK": "1", "MTD_OIDC_DEFAULT_TEAM": "eng",
               "MTD_OIDC_ALLOWED_DOMAINS": "example.com",
               "MTD_SESSION_SECRET": "side-by-side-" + "x" * 32,
               "MTD_PUBLIC_URL": f"http://127.0.0.1:{port}", "MTD_LOG_LEVEL": "warning"}
        proc = subprocess.Popen([sys.executable, "-m", "meterd.cli", "serve"], env=env,
                                cwd=HERE.parent, stdout=subprocess.DEVNULL,
                                stderr=open(Path(tmp) / "meterd.log", "wb"))  # noqa: SIM115
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    status, _, _ = await call("GET", url + "/readyz")
                    if status == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((Path(tmp) / "meterd.log").read_text()[-2000:])
                await asyncio.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(30)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", default="http://127.0.0.1:26300")
    args = parser.parse_args(argv)
    status, _, _ = await call("POST", IDP + "/_user", json=USER)
    if status != 200:
        raise SystemExit(f"the reference IdP at {IDP} answered {status}: is setup.sh running?")
    reference = Gateway("Anthropic's gateway", args.reference, approve_reference)
    async with meterd() as url:
        ours = Gateway("meterd", url, approve_meterd)
        theirs, mine = await probes(reference), await probes(ours)
    print(f"| probe | {reference.name} | meterd |\n|---|---|---|")
    for probe in theirs:
        same = "" if theirs[probe] != mine.get(probe) else " (same)"
        print(f"| {probe} | `{theirs[probe]}` | `{mine.get(probe, '')}`{same} |")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
