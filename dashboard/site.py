"""Assembly of the admin app's web side: the JSON API, and the dashboard pages around it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from dashboard import auth, charts, formatting
from dashboard.accounts import SignInThrottle
from dashboard.appkeys import BASE, CONFIG, PAGES, SECRET, THROTTLE
from dashboard.config import DashboardConfig
from dashboard.errors import error_middleware
from dashboard.forwarded import Forwarding, forwarded_middleware
from dashboard.headers import security_headers
from dashboard.routes import API_ROUTES, PAGE_ROUTES, add_routes
from dashboard.sessions import load_secret
from dashboard.state import ADMIN
from proxy.errors import unreadable_body_middleware


def _asset_dir(name: str) -> Path:
    """templates/ and static/ beside the packages (a checkout, an editable install), or where
    a wheel's data files put them."""
    for base in (Path(__file__).resolve().parent.parent, Path(sys.prefix) / "share" / "meterd"):
        if (base / name).is_dir():
            return base / name
    raise RuntimeError(f"the dashboard's {name}/ directory is missing from this install")


TEMPLATES = _asset_dir("templates")
STATIC = _asset_dir("static")


def setup_api(app: web.Application, config: DashboardConfig) -> None:
    """The admin JSON API only (what `meterd admin` needs for the CLI and automation)."""
    if BASE in app:
        return
    app[BASE] = ""
    # Outermost: whatever escapes the others is a 500 with a request id, not aiohttp's page.
    app.middlewares.append(error_middleware)
    # Next: everything after it sees the client's address and scheme, not a proxy's.
    forwarding = Forwarding(config.trusted_proxies, config.proxy_url.startswith("https://"))
    app.middlewares.append(forwarded_middleware(forwarding))
    app.on_response_prepare.append(security_headers(forwarding))
    # Outside auth, which reads a form's CSRF token: a body aiohttp cannot read is a 400 that
    # the process's error handling (proxy.errors, on the root app) answers.
    app.middlewares.append(unreadable_body_middleware)
    app.middlewares.append(auth.auth_middleware)
    add_routes(app, API_ROUTES)
    auth.check_routes(app)
    app.on_startup.append(_find_base)


async def _find_base(app: web.Application) -> None:
    # Known once the app is mounted: "/admin" under `meterd serve`, "" standalone.
    teams = str(app.router["api.teams"].url_for())
    app[BASE] = teams[: -len("/api/v1/teams")]


def setup_dashboard(app: web.Application, settings: Any) -> None:
    """The dashboard pages, their sessions and templates, and the JSON API.

    `settings` is meterd's Settings (read by attribute). Call once, on the admin app, after
    its cleanup context that stores the AdminState."""
    config = settings if isinstance(settings, DashboardConfig) else \
        DashboardConfig.from_settings(settings)
    setup_api(app, config)
    app[CONFIG] = config
    app[PAGES] = True
    env = aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(TEMPLATES),
                               autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters.update(formatting.FILTERS)
    env.globals.update(formatting.GLOBALS)
    env.globals.update({"meter": charts.meter, "share_bar": charts.share_bar,
                        "level": charts.level,
                        "asset": lambda name: app.router["static"].url_for(filename=name)})
    add_routes(app, PAGE_ROUTES)
    app.router.add_static("/static", STATIC, name="static", append_version=True)
    auth.check_routes(app)
    app.on_startup.append(_start)


async def _start(app: web.Application) -> None:
    config = app[CONFIG]
    app[SECRET] = load_secret(config.session_secret, config.data_dir)
    state = app[ADMIN]
    app[THROTTLE] = SignInThrottle(state.redis, state.keyspace.base)
