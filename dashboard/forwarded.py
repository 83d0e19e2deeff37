"""Who is on the other end when the admin app sits behind a reverse proxy, and over what.

Behind a proxy the peer of every request is the proxy, so every user would share one sign-in
throttle. Each proxy appends the address it saw to `X-Forwarded-For`, but anyone can send that
header too: it is believed only when the peer is one of `trusted_proxies`, and then read from
the right, skipping the trusted proxies, up to the first address that is not one. Likewise a
request counts as https when it came over TLS, when a trusted proxy's `X-Forwarded-Proto`
says the client used https (its first value: what the outermost proxy saw), or when
`public_url` is https (then every answer goes out over TLS, whatever terminates it).

Handlers get a clone of the request whose `remote` is the client's address and whose scheme
is the client's (aiohttp's way: `request.clone`), so `request.remote` and `request.secure`
mean the client's everywhere: the throttle, the session cookie's Secure flag, and HSTS
(dashboard.headers).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address | None:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d.
    return (ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else ip


class Forwarding:
    """The trusted proxies (addresses or CIDR networks, as validated by the settings), and
    whether every answer goes out over https (public_url is https)."""

    def __init__(self, trusted: Iterable[str], always_https: bool = False) -> None:
        self.networks = tuple(ipaddress.ip_network(t, strict=False) for t in trusted)
        self.always_https = always_https

    def trusts(self, address: str) -> bool:
        ip = _address(address)
        return ip is not None and any(ip in net for net in self.networks)

    def client_address(self, peer: str, forwarded_for: Iterable[str]) -> str:
        """The peer's address, or when it is a trusted proxy, the nearest address in the
        `X-Forwarded-For` values that is not one (the leftmost when all are)."""
        client = peer
        if not self.trusts(peer):
            return client
        hops = [hop for value in forwarded_for for hop in value.split(",")]
        for hop in reversed(hops):
            ip = _address(hop)
            if ip is None:
                break  # not an address: look no further than the last trusted proxy
            client = str(ip)
            if not self.trusts(client):
                break
        return client

    def is_https(self, request: web.BaseRequest) -> bool:
        """Whether the client reached us over https (the request or a clone of it)."""
        if request.secure or self.always_https:
            return True
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return proto == "https" and self.trusts(request.remote or "")


def forwarded_middleware(forwarding: Forwarding) -> Middleware:
    """The middleware that hands on a request with the client's address and scheme."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote or ""
        scheme = "https" if forwarding.is_https(request) else request.scheme
        client = forwarding.client_address(peer, request.headers.getall("X-Forwarded-For", ()))
        if client != peer or scheme != request.scheme:
            request = request.clone(remote=client, scheme=scheme)
        return await handler(request)
    return middleware
