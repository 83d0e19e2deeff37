"""The sign-in Claude Code uses in gateway mode: RFC 8414 metadata, RFC 8628 device
authorization, the verification page (user code → the organization's identity provider →
approve), the token endpoint (device and refresh grants) and RFC 7009 revocation.

It lives on the admin side because signing in provisions developers in the catalog. meterd
mounts it at `/oauth` of the gateway's base URL (and the metadata at
`/.well-known/oauth-authorization-server`): Claude Code uses these endpoints only on the origin
it was pointed at. Access tokens are signed here and verified by every proxy from the policy
snapshot (ledger/tokens.py); refresh asks the provider again and is where someone removed
there, disabled here, or no longer in a mapped group is turned away.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
import jinja2
import orjson
from aiohttp import web
from joserfc.jwk import ECKey
from yarl import URL

from dashboard import sessions
from dashboard.appkeys import OIDC, SECRET
from dashboard.device_codes import DeviceCodes, normalize
from dashboard.forwarded import Forwarding, forwarded_middleware
from dashboard.oidc import Identity, OidcClient, OidcError, ProviderRefused, pkce_pair
from dashboard.params import BadQuery, Query, query, text
from dashboard.site import TEMPLATES
from dashboard.state import ADMIN, AdminState
from ledger import tokens
from ledger.policy import hash_key
from ledger.signins import SignInRefused, SignIns

log = logging.getLogger("meterd.oauth")

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
COOKIE = "meterd_device"
FLOW_TTL = 600  # seconds from submitting the code to coming back from the provider
APPROVE_TTL = 300  # seconds to press Approve once signed in
VERIFY_LIMIT = 20  # verification page submissions per address per 15 minutes
AUTHORIZE_LIMIT = 60  # device codes asked for per address per 15 minutes

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class OAuthState:
    admin: AdminState
    oidc: OidcClient
    codes: DeviceCodes
    signing_key: ECKey
    secret: bytes  # signs the verification page's cookie (the dashboard's session secret)
    public_url: str  # "" = the origin each request came to
    access_ttl: int
    refresh_ttl: int
    policy_refresh: float  # how long a proxy may take to hear of a change (seconds)
    billing_group_tag: str
    css: str
    headers: dict[str, str] = field(default_factory=dict)

    def signins(self) -> SignIns:
        return SignIns(self.admin.catalog)


OAUTH = web.AppKey("oauth_state", OAuthState)


def create_oauth_app(settings: Any, admin_app: web.Application) -> web.Application:
    """The sign-in endpoints, for mounting at /oauth. `admin_app` is the admin app whose
    AdminState (catalog, Redis) they use; mount this after it so it has started."""
    app = web.Application()
    # Behind a reverse proxy: the client's address (rate limits) and scheme (cookies, URLs).
    app.middlewares.append(forwarded_middleware(Forwarding(
        settings.trusted_proxies, settings.proxy_url.startswith("https://"))))
    app.middlewares.append(_bad_link)
    app.cleanup_ctx.append(lambda a: _context(a, settings, admin_app))
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                         undefined=jinja2.StrictUndefined)
    app.router.add_post("/device_authorization", device_authorization)
    app.router.add_post("/token", token)
    app.router.add_post("/revoke", revoke)
    app.router.add_get("/device", device_page, name="device")
    app.router.add_post("/device", device_submit)
    app.router.add_get("/callback", callback)
    app.router.add_post("/approve", approve)
    return app


async def _context(app: web.Application, settings: Any,
                   admin_app: web.Application) -> AsyncIterator[None]:
    admin = admin_app[ADMIN]
    oidc = admin_app[OIDC]  # the dashboard's: one provider client, one metadata cache
    key = await admin.db(SignIns(admin.catalog).signing_key)
    await admin.publish()  # every proxy learns the public key
    issuer_origin = str(URL(oidc.config.issuer).origin())
    app[OAUTH] = OAuthState(
        admin=admin, oidc=oidc,
        codes=DeviceCodes(admin.redis, admin.keyspace.base), signing_key=key,
        secret=admin_app[SECRET], public_url=settings.public_url.rstrip("/"),
        access_ttl=settings.access_token_ttl, refresh_ttl=settings.refresh_token_ttl,
        policy_refresh=settings.policy_refresh, billing_group_tag=settings.billing_group_tag,
        css=str(admin_app.router["static"].url_for(filename="app.css")),
        headers={
            # The form posts here and is sent on to the provider (form-action covers that
            # redirect); nothing may frame the Approve button. same-origin, not no-referrer:
            # under no-referrer Chromium sends `Origin: null`, and the Origin check needs it.
            "Content-Security-Policy": f"default-src 'none'; style-src 'self'; "
                                       f"form-action 'self' {issuer_origin}; "
                                       "frame-ancestors 'none'; base-uri 'none'",
            "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin", "Cache-Control": "no-store"})
    yield


def base_url(request: web.Request) -> str:
    """The gateway's base URL: `public_url`, else the origin this request came to."""
    state = request.app[OAUTH]
    return state.public_url or f"{request.scheme}://{request.host}"


def well_known(public_url: str) -> Handler:
    """GET /.well-known/oauth-authorization-server (RFC 8414), for the root app."""
    async def metadata(request: web.Request) -> web.Response:
        base = public_url.rstrip("/") or f"{request.scheme}://{request.host}"
        return web.json_response({
            "issuer": base,
            "device_authorization_endpoint": f"{base}/oauth/device_authorization",
            "token_endpoint": f"{base}/oauth/token",
            "revocation_endpoint": f"{base}/oauth/revoke",
            "grant_types_supported": [DEVICE_GRANT, "refresh_token"],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "gateway_protocol_version": 1,
        })
    return metadata


# -- JSON endpoints (Claude Code) ------------------------------------------------------------

async def _heard(state: OAuthState, published: float) -> None:
    """Return once every proxy can have heard of a change published at `published` (Unix
    seconds). A proxy reads the policy every `policy_refresh` seconds, and a read under way
    at that moment may have had the version before it: two periods cover both."""
    wait = published + 2 * state.policy_refresh - time.time()
    if wait > 0:
        await asyncio.sleep(wait)


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _error(status: int, error: str, description: str = "") -> web.Response:
    body = {"error": error, **({"error_description": description} if description else {})}
    return _json(body, status)


async def _form(request: web.Request) -> dict[str, str]:
    """The form fields (RFC 6749: unknown ones are ignored; a non-form body has none)."""
    try:
        data = await request.post()
    except ValueError:
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)}


async def device_authorization(request: web.Request) -> web.Response:
    """POST: a device code and user code (Claude Code sends `surface`, nothing else)."""
    state = request.app[OAUTH]
    wait = await state.codes.rate("authorize", request.remote or "", AUTHORIZE_LIMIT)
    if wait:
        return _error(429, "slow_down", f"too many sign-ins from this address; try again in "
                                        f"{wait} seconds")
    form = await _form(request)
    code = await state.codes.create(form.get("surface", ""))
    verify = f"{base_url(request)}/oauth/device"
    return _json({"device_code": code.device_code, "user_code": code.user_code,
                  "verification_uri": verify,
                  "verification_uri_complete": f"{verify}?user_code={code.user_code}",
                  "expires_in": code.expires_in, "interval": code.interval})


async def token(request: web.Request) -> web.Response:
    """POST: the device grant (polling) and the refresh grant."""
    form = await _form(request)
    grant = form.get("grant_type", "")
    if grant == DEVICE_GRANT:
        return await _device_grant(request, form.get("device_code", ""))
    if grant == "refresh_token":
        return await _refresh_grant(request, form.get("refresh_token", ""))
    return _error(400, "unsupported_grant_type" if grant else "invalid_request",
                  "grant_type is the device code grant or refresh_token")


_POLL_ERRORS = {
    "pending": (400, "authorization_pending", ""),
    "slow_down": (400, "slow_down", "poll no more often than the interval"),
    "denied": (400, "access_denied", "the sign-in was refused"),
    "expired": (400, "expired_token", "the device code expired; sign in again"),
    "used": (400, "expired_token", "the device code was already used; sign in again"),
}


async def _device_grant(request: web.Request, device_code: str) -> web.Response:
    state = request.app[OAUTH]
    if not device_code:
        return _error(400, "invalid_request", "device_code is missing")
    poll = await state.codes.poll(device_code)
    if poll.outcome != "approved":
        return _error(*_POLL_ERRORS[poll.outcome])
    r = poll.record
    # The developer this sign-in placed reaches each proxy with its next policy refresh: hand
    # the token out no sooner, so the client's first request is served, not refused. (A client
    # polls every few seconds; only a poll right after the approval waits.)
    await _heard(state, float(r.get("placed_at") or 0))
    now = time.time()
    access_expires = int(now) + state.access_ttl
    sid, refresh = await state.admin.db(
        state.signins().start, developer_id=r["developer_id"], issuer=r["issuer"],
        subject=r["subject"], email=r["email"], idp_refresh=r.get("idp_refresh") or None,
        surface=r.get("surface", ""), refresh_ttl=state.refresh_ttl,
        access_expires=access_expires)
    access, _ = tokens.issue(state.signing_key, issuer=base_url(request),
                             developer_id=r["developer_id"], sid=sid, email=r["email"],
                             ttl=state.access_ttl, billing_group_tag=state.billing_group_tag,
                             now=now)
    log.info("developer %s signed in (sign-in %s)", r["developer_id"], sid)
    return _json({"access_token": access, "token_type": "Bearer",
                  "expires_in": state.access_ttl, "refresh_token": refresh,
                  "email": r["email"]})


async def _refresh_grant(request: web.Request, refresh: str) -> web.Response:
    state = request.app[OAUTH]
    if not refresh:
        return _error(400, "invalid_request", "refresh_token is missing")
    signins = state.signins()
    row, replayed = await _signin_of(state, refresh)
    if row is None:
        return _error(401, "invalid_grant", "unknown refresh token; sign in again")
    if replayed:
        # Rotated away already, so two parties hold copies of it (RFC 6819 §5.2.2.3): end the
        # sign-in, so the token issued in its place stops working too.
        return await _end(state, row, "a replaced refresh token was presented again")
    if row["revoked_at"] is not None:
        await state.admin.db(signins.refused, row["email"],
                             f"refresh of revoked sign-in {row['id']}")
        return _error(401, "invalid_grant", "this sign-in was revoked; sign in again")
    if row["expires_at"] <= datetime.now(UTC).replace(tzinfo=None):
        await state.admin.db(signins.refused, row["email"], f"sign-in {row['id']} expired")
        return _error(401, "invalid_grant", "this sign-in expired; sign in again")
    if row["disabled"] is None or row["disabled"]:
        return await _end(state, row, "the developer is disabled or removed")
    spent = _spent_key(state, refresh)
    # Spent from here on, before the provider is asked: a refresh of the same token that
    # comes while this one is under way is turned away without asking it again. That is a
    # benign race (two of the client's processes refreshing at once), not a stolen copy: the
    # winner's new token stands, so the sign-in is not ended.
    if not await state.admin.redis.set(spent, row["id"], nx=True, ex=state.refresh_ttl):
        return _error(401, "invalid_grant", "this refresh token was already used")
    idp_refresh = row["idp_refresh"]
    if idp_refresh:
        try:
            identity = await state.oidc.refresh(idp_refresh, row["subject"])
        except ProviderRefused as exc:
            return await _end(state, row, f"the identity provider: {exc}")
        except OidcError as exc:
            log.warning("refresh of %s: identity provider unavailable: %s", row["id"], exc)
            await state.admin.redis.delete(spent)  # not rotated: the client may try it again
            return _error(503, "temporarily_unavailable", "the identity provider cannot be "
                                                          "reached; try again shortly")
        refused = await _place(state, identity)
        if isinstance(refused, str):
            return await _end(state, row, refused)
        idp_refresh = identity.refresh_token
    now = time.time()
    access_expires = int(now) + state.access_ttl
    new_refresh = await state.admin.db(signins.rotate, row["id"], refresh, idp_refresh,
                                       access_expires)
    if new_refresh is None:  # revoked meanwhile
        return _error(401, "invalid_grant", "this refresh token is no longer valid; sign in "
                                            "again")
    access, _ = tokens.issue(state.signing_key, issuer=base_url(request),
                             developer_id=row["developer_id"], sid=row["id"],
                             email=row["email"], ttl=state.access_ttl,
                             billing_group_tag=state.billing_group_tag, now=now)
    return _json({"access_token": access, "token_type": "Bearer",
                  "expires_in": state.access_ttl, "refresh_token": new_refresh})


def _spent_key(state: OAuthState, refresh: str) -> str:
    """Where a refresh token rotated away (or being rotated) is remembered, by its SHA-256
    (never the token), with its sign-in's id, for as long as a refresh token lives."""
    return f"{state.admin.keyspace.base}:oauth:spent:{hash_key(refresh)}"


async def _signin_of(state: OAuthState, refresh: str) -> tuple[dict[str, Any] | None, bool]:
    """The sign-in a refresh token belongs to, and whether the token was rotated away already
    (replayed: someone else may hold it)."""
    signins = state.signins()
    row = await state.admin.db(signins.find, refresh)
    if row is not None:
        return row, False
    sid = await state.admin.redis.get(_spent_key(state, refresh))
    if sid is None:
        return None, False
    row = await state.admin.db(signins.get, sid.decode() if isinstance(sid, bytes) else sid)
    return row, row is not None


async def _end(state: OAuthState, row: dict[str, Any], reason: str) -> web.Response:
    """Refuse a refresh and revoke the sign-in, so its access token stops at every proxy too:
    the deprovisioning hook."""
    signins = state.signins()
    await state.admin.db(signins.refused, row["email"], reason)
    if await state.admin.db(signins.revoke, row["id"], reason, "meterd"):
        await state.admin.publish()
    log.info("refresh of sign-in %s refused: %s", row["id"], reason)
    return _error(401, "invalid_grant", "you can no longer sign in here; run /login again or "
                                        "ask your administrator")


async def _place(state: OAuthState, identity: Identity) -> Any:
    """Provision the developer an identity stands for, into the team its groups map to: the
    Provisioned developer, or a refusal (a sentence for the person) that is audited."""
    config = state.oidc.config
    reason = ""
    if not config.domain_allowed(identity.email):
        reason = (f"{identity.email} is not in a domain allowed to sign in "
                  f"({', '.join(config.allowed_domains)}).")
    else:
        team = config.place(identity.groups).team
        if not team:
            held = ", ".join(identity.groups) or "none"
            reason = (f"None of your groups at {config.provider_name} ({held}) is mapped to a "
                      "team in meterd, and there is no default team.")
        else:
            try:
                placed = await state.admin.db(
                    state.signins().provision, issuer=identity.issuer,
                    subject=identity.subject, email=identity.email, name=identity.name,
                    team=team, groups=identity.groups, actor=f"oidc:{identity.email}")
            except SignInRefused as exc:
                reason = str(exc)
            else:
                if placed.changed:
                    await state.admin.publish()
                return placed
    await state.admin.db(state.signins().refused, identity.email, reason)
    return reason


async def revoke(request: web.Request) -> web.Response:
    """POST (RFC 7009): an access or refresh token; its sign-in ends. Always 200 (an unknown
    token is no error), without client authentication, as Claude Code signs out. It answers
    once every proxy can have heard of the revocation, so the token's next request is
    refused (401, x-should-retry: false) wherever it goes."""
    state = request.app[OAUTH]
    value = (await _form(request)).get("token", "")
    if not value:
        return _error(400, "invalid_request", "token is missing")
    signins = state.signins()
    sid = developer = ""
    if value.startswith(tokens.TOKEN_PREFIX):
        with contextlib.suppress(tokens.BearerRefused):
            found = tokens.verify(value, {str(state.signing_key.kid): state.signing_key})
            sid, developer = found.sid, found.sub
    else:
        row, _ = await _signin_of(state, value)
        if row is not None:
            sid, developer = row["id"], row["developer_id"]
    if sid:
        revoked: bool = await state.admin.db(signins.revoke, sid, "signed out (token revoked)",
                                             f"developer:{developer}")
        if revoked:
            await state.admin.publish()
        # Also when it was revoked already: by a call that may have published it a moment ago.
        await _heard(state, time.time())
    return web.Response(status=200, headers={"Cache-Control": "no-store"})


# -- the verification page (a browser) --------------------------------------------------------

def _browser(request: web.Request) -> tuple[str, bool]:
    """This browser's CSRF token (from its signed cookie), and whether it is new."""
    state = request.app[OAUTH]
    raw = request.cookies.get(COOKIE)
    payload = sessions.unsign(raw, state.secret, COOKIE) if raw else None
    if payload is not None:
        try:
            doc = orjson.loads(payload)
            if time.time() - int(doc["t"]) < sessions.ANONYMOUS_MAX_AGE:
                return str(doc["c"]), False
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            pass
    return secrets.token_urlsafe(24), True


def _binding(csrf: str) -> str:
    return hashlib.sha256(csrf.encode()).hexdigest()


async def _page(request: web.Request, template: str, context: dict[str, Any],
                status: int = 200) -> web.Response:
    state = request.app[OAUTH]
    csrf, fresh = _browser(request)
    response = aiohttp_jinja2.render_template(template, request, {
        "css": state.css, "csrf": csrf, "provider": state.oidc.config.provider_name,
        **context}, status=status)
    response.headers.update(state.headers)
    if fresh:
        value = sessions.sign(orjson.dumps({"c": csrf, "t": int(time.time())}), state.secret,
                              COOKIE)
        response.set_cookie(COOKIE, value, path="/oauth/", httponly=True, samesite="Lax",
                            secure=request.secure, max_age=sessions.ANONYMOUS_MAX_AGE)
    return response


def _message(request: web.Request, title: str, text: str, status: int) -> Awaitable[web.Response]:
    return _page(request, "device_message.html", {"title": title, "text": text}, status)


async def _checked(request: web.Request) -> tuple[dict[str, str], web.Response | None]:
    """A form posted from this page in this browser (Origin and CSRF token), or the refusal."""
    form = await _form(request)
    origin = request.headers.get("Origin")
    expected = str(URL(base_url(request)).origin())
    same = origin == expected if origin is not None else \
        request.headers.get("Sec-Fetch-Site", "same-origin") == "same-origin"
    csrf, fresh = _browser(request)
    sent = form.get("csrf", "")
    if not same or fresh or not secrets.compare_digest(sent.encode(), csrf.encode()):
        log.warning("refused %s %s: cross-site or without its CSRF token", request.method,
                    request.path)
        return form, await _message(request, "This form has expired", "It did not come from "
                                    "this page, or the page is too old. Start again from "
                                    "Claude Code.", 403)
    return form, None


@web.middleware
async def _bad_link(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A query parameter a page does not take (dashboard.params): a 400 page, not a 500."""
    try:
        return await handler(request)
    except BadQuery as exc:
        return await _message(request, "This link is not valid", f"{exc}. Start again from "
                              "Claude Code.", 400)


@query(text("user_code"))
async def device_page(request: web.Request, q: Query) -> web.Response:
    """GET: the form for the user code; a code in the link is filled in, never submitted."""
    code = normalize(q["user_code"] or "") or ""
    return await _page(request, "device.html", {"user_code": code, "error": ""})


async def device_submit(request: web.Request) -> web.Response:
    """POST: a user code; on to the identity provider."""
    state = request.app[OAUTH]
    form, refused = await _checked(request)
    if refused is not None:
        return refused
    wait = await state.codes.rate("verify", request.remote or "", VERIFY_LIMIT)
    if wait:
        return await _message(request, "Too many attempts", f"Try again in "
                              f"{max(1, -(-wait // 60))} minutes.", 429)
    user_code = normalize(form.get("user_code", ""))
    digest = await state.codes.pending(user_code) if user_code else None
    if digest is None:
        return await _page(request, "device.html", {
            "user_code": user_code or "", "error": "That code is not valid, was used already "
            "or has expired. Check it, or start again from Claude Code."}, 400)
    verifier, challenge = pkce_pair()
    flow, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(16)
    await state.admin.redis.set(_flow_key(state, flow), orjson.dumps({
        "verifier": verifier, "nonce": nonce, "digest": digest, "user_code": user_code,
        "browser": _binding(_browser(request)[0])}), ex=FLOW_TTL)
    try:
        target = await state.oidc.authorization_url(_callback_url(request), flow, nonce,
                                                    challenge)
    except OidcError as exc:
        log.warning("identity provider unavailable: %s", exc)
        return await _message(request, "Sign-in is unavailable", "The identity provider "
                              "cannot be reached. Try again in a minute.", 502)
    raise web.HTTPSeeOther(target, headers=state.headers)


def _flow_key(state: OAuthState, flow: str) -> str:
    return f"{state.admin.keyspace.base}:oidc:flow:{hashlib.sha256(flow.encode()).hexdigest()}"


def _callback_url(request: web.Request) -> str:
    return f"{base_url(request)}/oauth/callback"


# What the provider sends back (RFC 6749 4.1.2): an authorization code can be long.
@query(text("state"), text("code", limit=4000), text("error"))
async def callback(request: web.Request, q: Query) -> web.Response:
    """GET: back from the provider. Check who signed in, provision them, ask to approve."""
    state = request.app[OAUTH]
    flow = q["state"] or ""
    raw = await state.admin.redis.getdel(_flow_key(state, flow)) if flow else None
    saved = orjson.loads(raw) if raw else None
    if saved is None or saved["browser"] != _binding(_browser(request)[0]):
        return await _message(request, "This sign-in has expired", "It took too long, or it "
                              "was opened in another browser. Start again from Claude Code.",
                              400)
    if q["error"] is not None or q["code"] is None:
        provider, error = state.oidc.config.provider_name, q["error"] or ""
        return await _message(request, "You were not signed in", f"{provider} did not sign "
                              f"you in ({error[:100] or 'no code'}).", 403)
    try:
        identity = await state.oidc.exchange(q["code"], saved["verifier"],
                                             _callback_url(request), saved["nonce"])
    except ProviderRefused as exc:
        log.warning("sign-in refused by the identity provider: %s", exc)
        return await _message(request, "You were not signed in", str(exc), 403)
    except OidcError as exc:
        log.warning("identity provider unavailable: %s", exc)
        return await _message(request, "Sign-in is unavailable", "The identity provider "
                              "cannot be reached. Try again in a minute.", 502)
    placed = await _place(state, identity)
    if isinstance(placed, str):
        await state.codes.decide(saved["digest"], False, {})  # Claude Code stops polling
        return await _message(request, "You cannot sign in to meterd", placed + " Ask your "
                              "meterd administrator to add a group rule.", 403)
    approval = secrets.token_urlsafe(24)
    await state.admin.redis.set(_approval_key(state, approval), orjson.dumps({
        "digest": saved["digest"], "browser": saved["browser"],
        "grant": {"developer_id": placed.developer_id, "email": identity.email,
                  "issuer": identity.issuer, "subject": identity.subject,
                  "idp_refresh": identity.refresh_token or "",
                  "placed_at": str(time.time())}}), ex=APPROVE_TTL)
    return await _page(request, "device_approve.html", {
        "user_code": saved["user_code"], "email": identity.email, "team": placed.team_name,
        "approval": approval})


def _approval_key(state: OAuthState, approval: str) -> str:
    digest = hashlib.sha256(approval.encode()).hexdigest()
    return f"{state.admin.keyspace.base}:oidc:approve:{digest}"


async def approve(request: web.Request) -> web.Response:
    """POST: the signed-in person approves (or denies) the device."""
    state = request.app[OAUTH]
    form, refused = await _checked(request)
    if refused is not None:
        return refused
    approval = form.get("approval", "")
    raw = await state.admin.redis.getdel(_approval_key(state, approval)) if approval else None
    saved = orjson.loads(raw) if raw else None
    if saved is None or saved["browser"] != _binding(_browser(request)[0]):
        return await _message(request, "This sign-in has expired", "Start again from Claude "
                              "Code.", 400)
    approved = form.get("decision") == "approve"
    grant = saved["grant"]
    if not await state.codes.decide(saved["digest"], approved, grant):
        return await _message(request, "This code was already used", "Start again from "
                              "Claude Code.", 400)
    if not approved:
        await state.admin.db(state.signins().refused, grant["email"],
                             "denied in the browser by the person signing in")
        return await _message(request, "Sign-in denied", "Claude Code was not signed in. "
                              "You can close this tab.", 200)
    return await _message(request, "Claude Code is signed in",
                          f"Signed in as {grant['email']}. Go back to your terminal; you can "
                          "close this tab.", 200)
