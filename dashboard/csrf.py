"""CSRF protection for the HTML side: every unsafe request carries the session's token.

Forms send it as the hidden field `csrf` (templates render it with the `csrf()` macro of
_macros.html); scripts send it as the `X-CSRF-Token` header. The token lives in the signed
session cookie, which a page on another site cannot read, and SameSite=Lax keeps the cookie off
cross-site POSTs too. The admin JSON API is not cookie-authenticated, so it needs no token.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from dashboard.sessions import Session

FIELD = "csrf"
HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def token_ok(request: web.Request, session: Session) -> bool:
    """Whether an unsafe request carries the token of its own session."""
    sent = request.headers.get(HEADER)
    if sent is None and request.content_type in ("application/x-www-form-urlencoded",
                                                 "multipart/form-data"):
        value = (await request.post()).get(FIELD)
        sent = value if isinstance(value, str) else None
    return bool(sent) and hmac.compare_digest(str(sent).encode(), session.csrf.encode())
