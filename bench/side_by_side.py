"""meterd next to Anthropic's gateway (`claude gateway`), endpoint by endpoint of the gateway
protocol, on the same identity provider, the same upstream and the same requests.

    python bench/side_by_side.py [--reference URL] [--markdown]

Needs the reference setup running (`../shared/anchors/claude-apps-gateway/setup.sh`: its test
IdP on 26100, fake Messages API on 26200, gateway on 26300). Starts `meterd serve` on a free
port against that IdP and upstream (embedded Redis, a temporary data directory), signs one user
in on each through the device flow, headlessly, the way a browser would, then sends each probe
to both and prints one row per probe: what each answered (status and the fields that matter).

Then the caps, each on a fresh user with a $1 monthly cap set through each gateway's own admin
interface: the usage-limit headers as spend passes 75 % and 95 %, the 429 once blocked and
`/api/oauth/usage`; and 100 concurrent requests against the cap (the fake upstream charges
about $0.08 per request, for ~46,000 prompt tokens the body carries), with the spend each
gateway let through.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import secrets
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
REFERENCE_WRITE_KEY = "cag-admin-write-key-0123456789abcdef0123"  # its admin write key
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


async def sign_in(gw: Gateway, user: dict[str, Any] = USER) -> tuple[dict[str, Any], str]:
    """The token answer of a whole device flow for `user` (the IdP approves whoever was set
    last), and the used device code."""
    await call("POST", IDP + "/_user", json=user)
    code = await device_code(gw)
    async with browser() as b:
        await gw.approve(gw, b, code)
    for _ in range(10):
        status, _, body = await poll(gw, code["device_code"])
        if status == 200:
            # A client polls every few seconds: by its first request every proxy has the
            # new developer (meterd's proxies refresh their policy every 0.25 s).
            await asyncio.sleep(0.5)
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


U = "anthropic-ratelimit-unified-"
CAP_CENTS = 100
RUN = secrets.token_hex(3)  # fresh users each run: the reference keeps its spend in Postgres
# The fake upstream answers every request with ~46,000 prompt tokens (mostly cache reads) and
# 321 output tokens: the body carries that much context (~4 bytes a token), as a Claude Code
# request whose usage says so would.
BURST_BODY = orjson.dumps({"model": "claude-opus-4-8", "max_tokens": 1024, "stream": True,
                           "system": "You are a careful coding assistant. " * 5_300,
                           "messages": [{"role": "user", "content": "hello"}]})


async def cap_reference(gw: Gateway, user: dict[str, Any], data_dir: str) -> None:
    status, _, body = await call(
        "POST", gw.url + "/v1/organizations/spend_limits",
        headers={"x-api-key": REFERENCE_WRITE_KEY},
        json={"scope": {"type": "user", "user_id": user["sub"]}, "amount": str(CAP_CENTS),
              "period": "monthly"})
    if status != 200:
        raise RuntimeError(f"the reference refused the cap: {status} {body}")


async def cap_meterd(gw: Gateway, user: dict[str, Any], data_dir: str) -> None:
    """`meterd budget set` reaches the running `meterd serve` over its admin socket."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meterd.cli", "budget", "set", "developer", user["email"],
        "--usd", f"{CAP_CENTS / 100:.2f}", "--period", "monthly",
        env={**os.environ, "MTD_DATA_DIR": data_dir}, cwd=HERE.parent,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"meterd budget set failed: {err.decode()}")
    await asyncio.sleep(1)  # the proxies' next policy refresh


async def streamed(session: aiohttp.ClientSession, gw: Gateway,
                   token: str) -> tuple[int, dict[str, str], str]:
    async with session.post(gw.url + "/v1/messages", data=BURST_BODY,
                            headers=bearer(token)) as r:
        text = await r.text()
        headers = {k.lower(): v for k, v in r.headers.items() if k.lower().startswith(U)}
        for name in ("retry-after", "x-should-retry"):
            if name in r.headers:
                headers[name] = r.headers[name]
        return r.status, headers, text


async def spent_cents(gw: Gateway, token: str) -> Any:
    _, _, doc = await call("GET", gw.url + "/api/oauth/usage", headers=bearer(token))
    return doc.get("extra_usage", {}).get("used_credits") if isinstance(doc, dict) else None


async def notices(gw: Gateway, cap: Any, data_dir: str) -> dict[str, str]:
    """One request at a time until refused: the headers of the first answer, of the first past
    75 % and 95 %, the 429's, and the usage document once blocked."""
    user = {"sub": f"notices-{RUN}-{len(gw.name)}",
            "email": f"notices-{RUN}-{len(gw.name)}@example.com", "name": "Notices",
            "groups": ["eng"]}
    answer, _ = await sign_in(gw, user)
    token = answer["access_token"]
    await cap(gw, user, data_dir)
    out: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        for n in range(1, 40):
            status, headers, text = await streamed(session, gw, token)
            passed = headers.get(U + "overage-surpassed-threshold")
            label = ("first answer" if n == 1 else "429 (blocked)" if status == 429
                     else f"first answer past {passed}" if passed else "")
            if label and label not in out:
                out[label] = f"#{n} {status} " + " ".join(
                    f"{k.removeprefix(U)}={v}" for k, v in sorted(headers.items()))
                if status == 429:
                    out["429 message"] = text[:200]
            if status != 200:
                break
    _, _, doc = await call("GET", gw.url + "/api/oauth/usage", headers=bearer(token))
    out["/api/oauth/usage once blocked"] = orjson.dumps(doc).decode()[:400]
    return out


async def burst(gw: Gateway, cap: Any, data_dir: str, n: int = 100) -> str:
    """`n` concurrent streamed requests from one user with a $1 cap: what was let through."""
    user = {"sub": f"burst-{RUN}-{len(gw.name)}",
            "email": f"burst-{RUN}-{len(gw.name)}@example.com", "name": "Burst",
            "groups": ["eng"]}
    answer, _ = await sign_in(gw, user)
    token = answer["access_token"]
    await cap(gw, user, data_dir)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(*(streamed(session, gw, token) for _ in range(n)))
    await asyncio.sleep(2)  # settlement after the last answer
    served = sum(1 for status, _, _ in results if status == 200)
    spent = await spent_cents(gw, token)
    times = f"{spent / CAP_CENTS:.2f}x the cap" if isinstance(spent, int | float) else "?"
    return (f"{served} of {n} served, {sum(1 for s, _, _ in results if s == 429)} refused; "
            f"spent {spent} cents of {CAP_CENTS} ({times})")


@contextlib.asynccontextmanager
async def meterd() -> AsyncIterator[tuple[str, str]]:
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
            yield url, tmp
        finally:
            proc.terminate()
            proc.wait(30)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", default="http://127.0.0.1:26300")
    args = parser.parse_args(argv)
    status, _, _ = await call("GET", IDP + "/.well-known/openid-configuration")
    if status != 200:
        raise SystemExit(f"the reference IdP at {IDP} answered {status}: is setup.sh running?")
    reference = Gateway("Anthropic's gateway", args.reference, approve_reference)
    async with meterd() as (url, data_dir):
        ours = Gateway("meterd", url, approve_meterd)
        theirs, mine = await probes(reference), await probes(ours)
        caps = [(await notices(reference, cap_reference, ""),
                 await notices(ours, cap_meterd, data_dir))]
        bursts = (await burst(reference, cap_reference, ""),
                  await burst(ours, cap_meterd, data_dir))
    print(f"| probe | {reference.name} | meterd |\n|---|---|---|")
    for probe in theirs:
        same = "" if theirs[probe] != mine.get(probe) else " (same)"
        print(f"| {probe} | `{theirs[probe]}` | `{mine.get(probe, '')}` {same} |")
    print(f"\n$1 monthly cap, one request at a time\n\n| | {reference.name} | meterd |\n"
          "|---|---|---|")
    for theirs_cap, mine_cap in caps:
        for label in dict.fromkeys([*theirs_cap, *mine_cap]):
            print(f"| {label} | `{theirs_cap.get(label, '')}` | `{mine_cap.get(label, '')}` |")
    print(f"\n100 concurrent requests, $1 monthly cap\n\n| {reference.name} | meterd |\n"
          f"|---|---|\n| {bursts[0]} | {bursts[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
