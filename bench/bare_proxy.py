"""The floor: a bare aiohttp pass-through proxy with no auth, no metering, no Redis.

    python bench/bare_proxy.py --port 4200 --upstream http://127.0.0.1:4010 [--key sk-ant-mock]

It does what any HTTP proxy in front of the Messages API must do and nothing more: read the
request body, drop hop-by-hop headers and the client's credential, add the provider key, send
the bytes upstream over one shared `ClientSession` (the same settings as meterd's), and stream
the answer back chunk by chunk as it arrives. Same event loop (uvloop) and no access log, like
`meterd proxy`. The benchmark compares meterd with it.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict

_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                  "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"})
_DROP_REQUEST = _HOP | {"host", "content-length", "authorization", "x-api-key",
                        "accept-encoding"}
_DROP_RESPONSE = _HOP | {"content-length", "date", "server"}
SESSION = web.AppKey("session", aiohttp.ClientSession)


def create_app(upstream: str, key: str) -> web.Application:
    upstream = upstream.rstrip("/")
    added = [("x-api-key", key), ("accept-encoding", "identity")]

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=600),
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            cookie_jar=aiohttp.DummyCookieJar())
        yield
        await app[SESSION].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = CIMultiDict((k, v) for k, v in request.headers.items()
                              if k.lower() not in _DROP_REQUEST)
        headers.extend(added)
        async with request.app[SESSION].request(request.method, upstream + request.path_qs,
                                                data=body, headers=headers) as up:
            response = web.StreamResponse(status=up.status, headers=CIMultiDict(
                (k, v) for k, v in up.headers.items() if k.lower() not in _DROP_RESPONSE))
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application(client_max_size=32_000_000)
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--upstream", default="http://127.0.0.1:4010")
    parser.add_argument("--key", default="sk-ant-mock", help="provider key sent upstream")
    args = parser.parse_args()
    web.run_app(create_app(args.upstream, args.key), host=args.host, port=args.port,
                loop=uvloop.new_event_loop(), access_log=None, print=None)


if __name__ == "__main__":
    main()
