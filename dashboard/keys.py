"""Everything the dashboard stores on its app or on a request, declared in one place."""

from __future__ import annotations

from aiohttp import web

from dashboard.config import DashboardConfig
from dashboard.identity import Identity
from dashboard.sessions import Session
from ledger.accounts import SignInThrottle

CONFIG = web.AppKey("dashboard_config", DashboardConfig)
SECRET = web.AppKey("dashboard_secret", bytes)
THROTTLE = web.AppKey("dashboard_throttle", SignInThrottle)

IDENTITY = web.RequestKey("dashboard_identity", Identity)
SESSION = web.RequestKey("dashboard_session", Session)
# Set when a handler replaced the session itself (sign-in, sign-out), so the middleware
# leaves the cookie that handler set alone.
SESSION_SET = web.RequestKey("dashboard_session_set", bool)
