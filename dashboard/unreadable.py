"""The error page for a request to a dashboard page that meterd could not read: an over-long
header, a body in an encoding it does not take or not what its encoding says. proxy.errors
refuses these, for the whole process, before or around the admin app's handlers, and asks this
for the page (`page_for`); the JSON API keeps the Anthropic error envelope.

No session is read for such a request, so the page is the one an anonymous visitor sees.
"""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from dashboard.appkeys import BASE, CONFIG, PAGES
from dashboard.auth import API_PREFIX
from dashboard.headers import CSP
from proxy.errors import ErrorPage


def page_for(admin: web.Application) -> ErrorPage:
    """The error page for the paths of `admin`'s pages (None for its API and other paths)."""

    def page(path: str, status: int, message: str) -> web.Response | None:
        base = admin[BASE]  # "/admin" once mounted (the process has started)
        if not admin.get(PAGES) or not path.startswith(base + "/") or \
                path.startswith(base + API_PREFIX):
            return None
        body = aiohttp_jinja2.get_env(admin).get_template("error.html").render(
            app=admin, config=admin[CONFIG], me=None, nav=[], section=None, flash=None,
            home=admin.router["signin"].url_for(),
            csrf_token="", status=status, title="That did not work", message=message,
            request_id="")  # a refusal, not a fault: no log entry to name
        # What dashboard.headers adds to the admin app's answers; this one may come before
        # the app (from the connection), where its signal does not run.
        return web.Response(status=status, text=body, content_type="text/html", headers={
            "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
            "Referrer-Policy": "same-origin"})
    return page
