"""What every page handler shares: rendering with the common context, redirects that carry
a one-time message, reading forms, and running report queries on the DuckDB thread."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiDictProxy
from yarl import URL

from dashboard import sessions
from dashboard.appkeys import BASE, CONFIG, IDENTITY, SECRET, SESSION
from dashboard.identity import Identity
from dashboard.state import ADMIN, AdminState
from ledger.periods import local_day

T = TypeVar("T")

# (route name, label, roles that see it in the navigation)
NAV: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("overview", "Overview", ("admin", "finance")),
    ("me", "My usage", ("developer",)),
    ("team", "My team", ("team_lead",)),
    ("teams", "Teams", ("admin", "finance")),
    ("developers", "Developers", ("admin", "finance")),
    ("requests", "Requests", ("admin", "finance")),
    ("reports", "Reports", ("admin", "finance", "team_lead")),
    ("bought", "What it bought", ("admin", "finance")),
    ("rollout", "Rollout", ("admin", "finance", "team_lead", "developer")),
    ("managed", "Managed", ("admin",)),
    ("settings", "Settings", ("admin", "finance")),
    ("audit", "Audit", ("admin", "finance")),
    ("increases", "Increases", ("admin", "finance", "team_lead")),
    ("alerts", "Alerts", ("admin", "finance")),
    ("access", "Access", ("admin", "finance")),
)

# Pages that belong to a navigation entry other than their own name.
SECTION = {"team": "teams", "developer": "developers", "issue_key": "developers",
           "create_user": "access", "reset_password": "access", "create_admin_key": "access",
           "managed_edit": "managed", "managed_preview": "managed", "managed_save": "managed",
           "bought_csv": "bought"}


def admin_state(request: web.Request) -> AdminState:
    return request.app[ADMIN]


def identity(request: web.Request) -> Identity:
    return request[IDENTITY]


def url(request: web.Request, name: str, query: dict[str, Any] | None = None,
        **parts: str) -> URL:
    target = request.app.router[name].url_for(**parts)
    return target.with_query({k: v for k, v in query.items() if v not in (None, "")}) \
        if query else target


def home(request: web.Request) -> URL:
    """Where a signed-in user starts: the overview, a developer's own page, or a team lead's
    team."""
    who = request[IDENTITY]
    if who.role == "team_lead":
        return url(request, "team", team_id=who.team_id)
    return url(request, "me" if who.role == "developer" else "overview"
               if who.role != "anonymous" else "signin")


def _nav_url(request: web.Request, name: str) -> URL:
    return home(request) if name == "team" else url(request, name)


async def render(request: web.Request, template: str, context: dict[str, Any],
                 status: int = 200) -> web.Response:
    """A page, with who is signed in, the navigation, the CSRF token and any message."""
    me = request.get(IDENTITY)
    session = request.get(SESSION)
    secret = request.app[SECRET]
    flash = sessions.pop_flash(request, secret)
    route = request.match_info.route.name if request.match_info.http_exception is None else None
    role = me.role if me else "anonymous"
    base = {
        "me": me, "csrf_token": session.csrf if session else "", "flash": flash,
        "nav": [(name, label, _nav_url(request, name)) for name, label, roles in NAV
                if role in roles],
        "home": home(request) if me else url(request, "signin"),
        "section": SECTION.get(route or "", route), "config": request.app[CONFIG],
    }
    response = aiohttp_jinja2.render_template(template, request, {**base, **context},
                                              status=status)
    if flash is not None:
        response.del_cookie(sessions.FLASH_COOKIE, path=cookie_path(request))
    return response


def cookie_path(request: web.Request) -> str:
    """Dashboard cookies are scoped to where the admin app is mounted."""
    return request.app[BASE] + "/"


async def error_page(request: web.Request, status: int, message: str,
                     request_id: str = "") -> web.Response:
    """The error page; `request_id` names a 500's log entry (dashboard.errors)."""
    titles = {400: "That did not work", 403: "Not allowed", 404: "Not found",
              405: "Not allowed", 429: "Too many attempts"}
    return await render(request, "error.html", {
        "status": status, "title": titles.get(status, "Something went wrong"),
        "message": message, "request_id": request_id}, status=status)


def see_other(request: web.Request, location: URL | str, message: str | None = None,
              kind: str = "ok") -> web.Response:
    """A 303 to `location`, with a message shown once on the page it leads to."""
    response = web.Response(status=303, headers={"Location": str(location)})
    if message:
        sessions.set_flash(response, request, request.app[SECRET], cookie_path(request),
                           message, kind)
    return response


def local_path(request: web.Request, target: str) -> str | None:
    """`target` when it is a path under the dashboard, else None: never a redirect off the
    site. Browsers take `//host` and `/\\host` for another site, after dropping tabs and line
    breaks, so none of those may appear."""
    if (target.startswith(cookie_path(request)) and not target.startswith("//")
            and "\\" not in target and target.isprintable() and " " not in target):
        return target
    return None


def redirect_back(request: web.Request, message: str, kind: str = "error") -> web.Response:
    """Back to the page the form was on (same site, under the dashboard), with a message."""
    referer = request.headers.get("Referer", "")
    target: URL | str = home(request)
    if referer:
        ref = URL(referer)
        if ref.host == request.url.host and ref.port == request.url.port:
            target = local_path(request, ref.raw_path_qs) or target
    return see_other(request, target, message, kind)


async def form(request: web.Request) -> MultiDictProxy[str | Any]:
    return await request.post()


def field(data: MultiDictProxy[Any], name: str, default: str | None = None,
          limit: int = 500) -> str:
    """A trimmed text field; ValueError (shown to the user) when missing or too long."""
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        if default is not None:
            return default
        raise ValueError(f"{name.replace('_', ' ')} is required")
    value = value.strip()
    if len(value) > limit:
        raise ValueError(f"{name.replace('_', ' ')} is too long")
    return value


def today(now: datetime | None = None) -> date:
    """The organization's date at `now` (default: now), in its `timezone`: what "today" and
    "this month" mean on every page."""
    return local_day(now or datetime.now(UTC))


def last_days(days: int) -> tuple[date, date]:
    """[start, end) covering the organization's last `days` days, today included."""
    end = today() + timedelta(days=1)
    return end - timedelta(days=days), end


async def report(request: web.Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a ledger.reports function on the catalog's DuckDB connection, on its thread."""
    state = request.app[ADMIN]

    def run() -> T:
        with state.catalog.lock:
            return fn(state.catalog.conn, *args, **kwargs)
    return await state.db(run)


def fill_days(rows: list[dict[str, Any]], start: date, end: date,
              key: str = "cost_micros") -> list[tuple[date, int]]:
    """Per-day sums of spend() rows, every day of [start, end) present (0 when idle)."""
    sums: dict[date, int] = {}
    for row in rows:
        day = row["period"]
        day = day.date() if isinstance(day, datetime) else day
        sums[day] = sums.get(day, 0) + int(row[key])
    out, day = [], start
    while day < end:
        out.append((day, sums.get(day, 0)))
        day += timedelta(days=1)
    return out


async def change(request: web.Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a catalog change as the signed-in admin (audited under their name), then publish
    the policy so every proxy has it within a second."""
    state = request.app[ADMIN]
    result = await state.db(fn, *args, actor=request[IDENTITY].actor, **kwargs)
    await state.publish()
    return result
