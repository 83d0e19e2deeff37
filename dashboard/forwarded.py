"""Who is on the other end when the admin app sits behind a reverse proxy.

Behind a proxy the peer of every request is the proxy, so every user would share one sign-in
throttle. Each proxy appends the address it saw to `X-Forwarded-For`, but anyone can send that
header too: it is believed only when the peer is one of `trusted_proxies`, and then read from
the right, skipping the trusted proxies, up to the first address that is not one. Handlers
get a clone of the request whose `remote` is that address (aiohttp's way: `request.clone`).
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
    """The trusted proxies (addresses or CIDR networks, as validated by the settings)."""

    def __init__(self, trusted: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(t, strict=False) for t in trusted)

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


def forwarded_middleware(forwarding: Forwarding) -> Middleware:
    """The middleware that hands on a request whose `remote` is the client's address."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote or ""
        client = forwarding.client_address(peer, request.headers.getall("X-Forwarded-For", ()))
        if client != peer:
            request = request.clone(remote=client)
        return await handler(request)
    return middleware
