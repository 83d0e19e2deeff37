"""Dashboard sign-in through the organization's identity provider ("Sign in with …").

The authorization code flow with PKCE (S256). Its state, nonce and code verifier wait in Redis
for ten minutes under the state, bound to the browser that started it (the hash of its session's
CSRF token): a callback with an unknown state, one already used, or one opened in another
browser is refused. The ID token is verified by dashboard/oidc.py (signature against the
provider's JWKS, issuer, audience, expiry, nonce). The group rules decide the role at every
sign-in: admin, finance, team_lead of its team, or developer of the team they map to; someone
they do not map gets a page that says so. The session is a server-side row like a local
account's, so signing out ends it everywhere.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Any

import orjson
from aiohttp import web

from dashboard.appkeys import CONFIG, OIDC, SESSION
from dashboard.auth import EVERYONE, allow
from dashboard.oidc import Identity, OidcClient, OidcError, ProviderRefused, pkce_pair
from dashboard.params import Query, query, text
from dashboard.render import admin_state, error_page, form, local_path, render, url
from dashboard.signin import signed_in
from ledger.signins import SignInRefused, SignIns

log = logging.getLogger("meterd.dashboard")

FLOW_TTL = 600  # seconds from pressing the button to coming back from the provider


def _client(request: web.Request) -> OidcClient:
    client = request.app.get(OIDC)
    if client is None:
        raise web.HTTPNotFound(text="Single sign-on is not configured (oidc_issuer).")
    return client


def _binding(request: web.Request) -> str:
    return hashlib.sha256(request[SESSION].csrf.encode()).hexdigest()


def _flow_key(request: web.Request, state: str) -> str:
    base = admin_state(request).keyspace.base
    return f"{base}:oidc:dashboard:{hashlib.sha256(state.encode()).hexdigest()}"


def _callback_url(request: web.Request) -> str:
    """Registered at the provider as `<public_url>/admin/signin/sso/callback`."""
    base = request.app[CONFIG].public_url or f"{request.scheme}://{request.host}"
    return base + str(url(request, "signin_sso_callback"))


@allow(*EVERYONE)
async def signin_sso(request: web.Request) -> web.StreamResponse:
    """POST (the button, CSRF-checked like every form): on to the provider."""
    client = _client(request)
    target = local_path(request, str((await form(request)).get("next") or "")) or ""
    verifier, challenge = pkce_pair()
    state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(16)
    await admin_state(request).redis.set(_flow_key(request, state), orjson.dumps({
        "verifier": verifier, "nonce": nonce, "browser": _binding(request), "next": target}),
        ex=FLOW_TTL)
    try:
        location = await client.authorization_url(_callback_url(request), state, nonce,
                                                  challenge)
    except OidcError as exc:
        log.warning("identity provider unavailable: %s", exc)
        return await error_page(request, 502, "The identity provider cannot be reached. "
                                              "Try again in a minute.")
    return web.Response(status=303, headers={"Location": location})


@allow(*EVERYONE)
@query(text("state", 200), text("code", 2000), text("error", 200))
async def sso_callback(request: web.Request, q: Query) -> web.StreamResponse:
    """GET: back from the provider. Check the flow is this browser's, verify who signed in,
    give them the role their groups map to, and start their session."""
    client = _client(request)
    state = q["state"] or ""
    raw = await admin_state(request).redis.getdel(_flow_key(request, state)) if state else None
    saved = orjson.loads(raw) if raw else None
    if saved is None or not secrets.compare_digest(saved["browser"], _binding(request)):
        log.warning("dashboard sign-in refused: unknown state or another browser's")
        return await error_page(request, 400, "This sign-in expired, was used already, or was "
                                              "started in another browser. Sign in again.")
    if q["error"] or not q["code"]:
        return await _refused(request, "", f"{client.config.provider_name} did not sign you "
                                           f"in ({(q['error'] or 'no code')[:100]}).")
    try:
        identity = await client.exchange(q["code"], saved["verifier"], _callback_url(request),
                                         saved["nonce"])
    except ProviderRefused as exc:
        log.warning("dashboard sign-in refused by the identity provider: %s", exc)
        return await _refused(request, "", str(exc))
    except OidcError as exc:
        log.warning("identity provider unavailable: %s", exc)
        return await error_page(request, 502, "The identity provider cannot be reached. "
                                              "Try again in a minute.")
    placed = await _place(request, client, identity)
    if isinstance(placed, str):
        return await _refused(request, identity.email, placed)
    role, team_id, developer_id = placed
    admin = admin_state(request)
    await admin.db(admin.catalog.record, f"sso:{identity.email}", "signin.dashboard",
                   identity.email, {"role": role, "team_id": team_id, "groups": identity.groups})
    if role == "developer":
        home = url(request, "me")
    elif role == "team_lead":
        home = url(request, "team", team_id=team_id)
    else:
        home = url(request, "overview")
    return await signed_in(request, saved["next"] or str(home), "sso", identity.email,
                           role=role, team_id=team_id, developer_id=developer_id)


async def _place(request: web.Request, client: OidcClient,
                 identity: Identity) -> tuple[str, str, str] | str:
    """(role, team id, developer id) from the group rules, provisioning the developer into
    the team they map to; or why this person may not sign in."""
    config = client.config
    if not config.domain_allowed(identity.email):
        return (f"{identity.email} is not in a domain allowed to sign in "
                f"({', '.join(config.allowed_domains)}).")
    placement = config.place(identity.groups)
    if not placement.role and not placement.team:
        held = ", ".join(identity.groups) or "none"
        return (f"None of your groups at {config.provider_name} ({held}) gives access to "
                "meterd, and there is no default team.")
    team_id = developer_id = ""
    if placement.team:
        admin = admin_state(request)
        try:
            found: Any = await admin.db(
                SignIns(admin.catalog).provision, issuer=identity.issuer,
                subject=identity.subject, email=identity.email, name=identity.name,
                team=placement.team, groups=identity.groups, actor=f"oidc:{identity.email}")
        except SignInRefused as exc:
            return str(exc)
        if found.changed:
            await admin.publish()
        team_id, developer_id = found.team_id, found.developer_id
    return placement.role or "developer", team_id, developer_id


async def _refused(request: web.Request, email: str, reason: str) -> web.Response:
    """The page for someone who may not sign in, and its line in the audit log."""
    admin = admin_state(request)
    await admin.db(SignIns(admin.catalog).refused, email, f"dashboard: {reason}")
    return await render(request, "signin_refused.html", {"reason": reason}, status=403)
