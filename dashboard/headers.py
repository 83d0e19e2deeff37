"""What every answer of the admin app carries: pages, JSON, files, streamed answers and
aiohttp's own 404s and 405s alike. An on_response_prepare signal runs for all of them (a
middleware cannot add a header to an answer already streamed, nor to aiohttp's own).

Answers show spend and, once, secrets (a new gateway key, admin API key or password), so
`Cache-Control: no-store` keeps them out of every cache; `nosniff` stops a browser from
taking a JSON or CSV answer for a script or a page. Only the versioned static files (CSS, JS,
images: public, nothing secret) may be cached. Pages load nothing from elsewhere, may not be
framed, and send no Referer off the site; https answers ask browsers to stay on https.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from dashboard.forwarded import Forwarding

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "form-action 'self'{}; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
# A year, as browsers' preload lists ask; not includeSubDomains: other hosts of the domain
# are not ours to decide for.
HSTS = "max-age=31536000"


def security_headers(forwarding: Forwarding, provider_origin: str = "") -> Callable[
        [web.Request, web.StreamResponse], Awaitable[None]]:
    """The on_response_prepare handler (it needs to know which answers are https). A form may
    post to the identity provider's origin too: "Sign in with …" is answered with a redirect
    there, and browsers hold that redirect to form-action."""
    csp = CSP.format(f" {provider_origin}" if provider_origin else "")

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Content-Security-Policy", csp)
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "same-origin")
        if not isinstance(request.match_info.route.resource, web.StaticResource):
            headers.setdefault("Cache-Control", "no-store")
        if forwarding.is_https(request):
            headers.setdefault("Strict-Transport-Security", HSTS)
    return add
