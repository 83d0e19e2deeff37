"""Who may use which route, decided in one place.

Every handler declares its roles with `@allow(...)`; `check_routes` refuses to start an app
with a route that declares none. The middleware works out the caller's identity (a session
cookie on the HTML side; an admin API key or the local Unix socket on the JSON API), then:
anonymous callers of a route they may not use are sent to sign in (HTML) or get 401 (API),
signed-in callers get 403, and every unsafe HTML request must carry its session's CSRF token.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from dashboard import csrf, sessions
from dashboard.accounts import ADMIN_KEY_ROLES, Accounts
from dashboard.appkeys import BASE, CONFIG, IDENTITY, PAGES, SECRET, SESSION, SESSION_SET
from dashboard.identity import ANONYMOUS, ROLES, Identity
from dashboard.jsonio import json_error
from dashboard.render import cookie_path, error_page, redirect_back
from dashboard.sessions import Session
from dashboard.state import ADMIN
from ledger.catalog import CatalogError, NotFound

log = logging.getLogger("meterd.dashboard")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)
_ROLES_ATTR = "__meterd_roles__"
API_PREFIX = "/api/"

READERS = ("admin", "finance")
ADMINS = ("admin",)
# Routes about one team: a team lead passes the role check, and the handler then checks the
# team is its own (require_team) before it reads or changes anything.
TEAM_READERS = ("admin", "finance", "team_lead")
TEAM_ADMINS = ("admin", "team_lead")
EVERYONE = ROLES


def allow(*roles: str) -> Callable[[H], H]:
    """Declare the roles that may use a handler (see identity.ROLES)."""
    unknown = set(roles) - set(ROLES)
    if unknown or not roles:
        raise ValueError(f"unknown roles {sorted(unknown)}; expected some of {ROLES}")

    def mark(handler: H) -> H:
        setattr(handler, _ROLES_ATTR, frozenset(roles))
        return handler
    return mark


def roles_of(handler: Any) -> frozenset[str] | None:
    found = getattr(handler, _ROLES_ATTR, None)
    return found if isinstance(found, frozenset) else None


def check_routes(app: web.Application) -> None:
    """Every route but static files must declare who may use it."""
    for route in app.router.routes():
        if isinstance(route.resource, web.StaticResource):
            continue
        if roles_of(route.handler) is None:
            raise RuntimeError(f"route {route.method} {route.resource} declares no roles; "
                               "decorate its handler with @allow(...)")


def require_team(request: web.Request, team_id: str | None, change: bool = False) -> None:
    """Refuse (403) a caller who may not read, or with `change` may not change, this team's
    members: a team lead of another team (or of none)."""
    who = request[IDENTITY]
    if not (who.manages(team_id) if change else who.reads(team_id)):
        raise web.HTTPForbidden(text="You lead another team: this one is not yours to "
                                     f"{'change' if change else 'see'}.")


def is_api(request: web.Request) -> bool:
    return request.path.startswith(request.app[BASE] + API_PREFIX)


def is_local(request: web.Request) -> bool:
    """Requests over the Unix socket come from this host's operator (the data dir is 0700)."""
    transport = request.transport
    return transport is not None and isinstance(transport.get_extra_info("sockname"), str)


def presented_key(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key", "").strip()


async def api_identity(request: web.Request, developers: bool = False) -> Identity | None:
    """The caller of the JSON API, or None when a key was presented and is not valid. With
    `developers` (a route a developer may use), a developer's gateway key names them."""
    if is_local(request):
        return Identity("admin", name="cli", actor="cli")
    secret = presented_key(request)
    if not secret:
        return ANONYMOUS
    state = request.app[ADMIN]
    accounts = Accounts(state.catalog)
    key = await state.db(accounts.admin_key_for, secret)
    if key is None:
        dev = await state.db(accounts.developer_for_key, secret) if developers else None
        if dev is None:
            return None
        return Identity("developer", name=dev["name"], actor=f"developer:{dev['developer_id']}",
                        developer_id=dev["developer_id"], team_id=dev["team_id"] or "",
                        key_id=dev["key_id"])
    label = key["label"] or key["id"]
    return Identity(ADMIN_KEY_ROLES[key["role"]], name=label, actor=f"api-key:{key['id']}",
                    key_id=key["id"])


async def session_identity(request: web.Request, session: Session) -> Identity | None:
    """Who a session names, checked against the catalog; None when it no longer holds."""
    if session.kind == "anonymous":
        return ANONYMOUS
    state = request.app[ADMIN]
    accounts = Accounts(state.catalog)
    if session.kind == "user":
        if not request.app[CONFIG].local_accounts:  # turned off: their sessions end too
            return None
        user = await state.db(accounts.session_user, session.sid, session.subject)
        if user is None:
            return None
        return Identity(user["role"], name=user["name"], actor=user["name"])
    if session.kind == "developer":
        dev = await state.db(accounts.developer_session, session.sid, session.subject,
                             session.key_id)
        if dev is None:
            return None
        return Identity("developer", name=dev["name"], actor=f"developer:{dev['developer_id']}",
                        developer_id=dev["developer_id"], team_id=dev["team_id"] or "",
                        key_id=dev["key_id"])
    if session.kind == "sso":
        sso = await state.db(accounts.sso_session, session.sid, session.subject)
        if sso is None:
            return None
        return Identity(sso["role"], name=session.subject, actor=f"sso:{session.subject}",
                        developer_id=sso["developer_id"], team_id=sso["team_id"])
    return None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if is_api(request):
        return await _api(request, handler)
    if not request.app.get(PAGES, False) or isinstance(request.match_info.route.resource,
                                                          web.StaticResource):
        return await handler(request)
    return await _html(request, handler)


async def _api(request: web.Request, handler: Handler) -> web.StreamResponse:
    found = request.match_info.http_exception is None
    roles = roles_of(request.match_info.handler) if found else None
    # A gateway key is no credential here, but on the few routes a developer may use.
    identity = await api_identity(request, developers=roles is not None and "developer" in roles)
    if identity is None:
        return json_error(401, "invalid admin API key")
    request[IDENTITY] = identity
    if not found:
        return await handler(request)  # no such route or method: 404 / 405
    if roles is not None and identity.role not in roles:
        if identity.role == "anonymous":
            return json_error(401, "the admin API needs an admin API key "
                                   "(Authorization: Bearer mtda_… or x-api-key)")
        return json_error(403, f"an {identity.role} may not {request.method} {request.path}")
    try:
        return await handler(request)
    except NotFound as exc:
        return json_error(404, str(exc))
    except CatalogError as exc:
        return json_error(400, str(exc))
    except ValueError as exc:  # a field or a body the client can fix (dashboard.jsonio)
        return json_error(400, f"bad request: {exc}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_error(exc.status, exc.text or exc.reason)


async def _html(request: web.Request, handler: Handler) -> web.StreamResponse:
    secret = request.app[SECRET]
    session = sessions.decode(request.cookies.get(sessions.COOKIE), secret)
    identity = await session_identity(request, session) if session else None
    fresh = session is None or identity is None
    if session is None or identity is None:
        session, identity = Session.anonymous(), ANONYMOUS
    request[SESSION], request[IDENTITY] = session, identity
    try:
        response = await _guarded(request, handler, identity, session)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = await error_page(request, exc.status, exc.text or exc.reason)
    except (CatalogError, ValueError) as exc:
        if request.method in csrf.SAFE_METHODS:
            status = 404 if isinstance(exc, NotFound) else 400
            response = await error_page(request, status, str(exc))
        else:
            response = redirect_back(request, str(exc), "error")
    if fresh and not request.get(SESSION_SET) and not response.prepared:
        sessions.store(response, request, session, secret, cookie_path(request))
    return response


async def _guarded(request: web.Request, handler: Handler, identity: Identity,
                   session: Session) -> web.StreamResponse:
    if request.match_info.http_exception is not None:
        return await handler(request)  # no such route or method: 404 / 405
    roles = roles_of(request.match_info.handler)
    if roles is not None and identity.role not in roles:
        if identity.role == "anonymous":
            target = request.app.router["signin"].url_for()
            if request.method == "GET":
                target = target.with_query(next=request.path_qs)
            raise web.HTTPSeeOther(target)
        return await error_page(request, 403, "Your role does not give access to this page.")
    if request.method not in csrf.SAFE_METHODS and not await csrf.token_ok(request, session):
        log.warning("refused %s %s: missing or wrong CSRF token", request.method, request.path)
        return await error_page(request, 403, "This form has expired or did not come from "
                                              "this site. Reload the page and try again.")
    return await handler(request)
