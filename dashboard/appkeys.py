"""Everything the dashboard stores on its app or on a request, declared in one place."""

from __future__ import annotations

from aiohttp import web

from dashboard.accounts import SignInThrottle
from dashboard.config import DashboardConfig
from dashboard.identity import Identity
from dashboard.oidc import OidcClient
from dashboard.sessions import Session

# Path the admin app is mounted at ("/admin" under `meterd serve`, "" when standalone).
BASE = web.AppKey("dashboard_base", str)
CONFIG = web.AppKey("dashboard_config", DashboardConfig)
SECRET = web.AppKey("dashboard_secret", bytes)
THROTTLE = web.AppKey("dashboard_throttle", SignInThrottle)
PAGES = web.AppKey("dashboard_pages", bool)  # the HTML side is set up (not only the API)
# The identity provider, when single sign-on is configured (also used by dashboard/oauth.py).
OIDC = web.AppKey("dashboard_oidc", OidcClient)

IDENTITY = web.RequestKey("dashboard_identity", Identity)
SESSION = web.RequestKey("dashboard_session", Session)
# Set when a handler replaced the session itself (sign-in, sign-out), so the middleware
# leaves the cookie that handler set alone.
SESSION_SET = web.RequestKey("dashboard_session_set", bool)
