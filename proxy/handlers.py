"""The proxy's routes: the Messages API that Claude Code calls, and the probes around it."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from ledger.gate import BudgetExceeded, RateLimited, Ticket
from ledger.money import format_usd
from ledger.periods import clock
from ledger.policy import KeyRefused, Principal
from ledger.settlement import Settlement, clean_text
from ledger.status import cap_balances
from ledger.usage import Usage
from proxy.errors import ProxyError, setup_errors, upstream_failure
from proxy.managed_seen import SEEN
from proxy.meter import Metered, StreamMeter, meter_body
from proxy.metrics import TOKEN_CATEGORIES
from proxy.oauth_usage import setup_oauth_usage
from proxy.request_fields import Allowance, parse_request, request_model
from proxy.state import STATE, ProxyState
from proxy.tags import has_tags_beta, without_tags
from proxy.upstream import response_headers

log = logging.getLogger("meterd.proxy")

_MAX_TEE = 16 * 1024 * 1024  # a non-streaming body larger than this is not parsed for usage
# Why a request ended before its answer was read: the provider had it all the same.
# Answers cut before any usage was read, billed by admission's estimate: the provider was
# working on them all the same (a JSON answer carries its usage at the end of its body).
_CUT_SHORT = frozenset({"client_disconnected", "shutdown", "upstream_reset", "upstream_timeout"})
_CLIENT_HEADERS = {  # recorded on each settlement: who in Claude Code asked
    "session_id": "x-claude-code-session-id",
    "agent_id": "x-claude-code-agent-id",
    "parent_agent_id": "x-claude-code-parent-agent-id",
    "request_class": "x-claude-code-request-class",
    "prompt_id": "x-claude-code-prompt-id",
}


async def messages(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages: authenticate, admit, relay the provider's answer, meter, settle."""
    state = request.app[STATE]
    started, t0 = state.gate.clock(), time.monotonic()
    try:
        principal = state.authenticate(request.headers)
    except KeyRefused as exc:
        if exc.who is not None:  # a revoked or expired key: its developer sees the refusal
            key_id, dev_id, team_id = exc.who
            who = Principal(key_id, dev_id, "", team_id, "", (), ())
            refuse(state, request, who, started, f"key: {exc}", 401, "authentication_error")
        raise
    request.app[SEEN].note(principal, request.headers)  # which managed settings it runs
    body = await request.read()
    fields = parse_request(body)
    headers = request.headers
    tagged = fields.tags is not None
    if principal.signed_in and (tagged or has_tags_beta(headers)):
        body, headers = without_tags(body, headers, tagged)  # see proxy.tags
    relay = Relay(state, request, fields.model, fields.stream, t0, body)
    del body  # the relay lets go of it once the provider has it
    relay.headers, relay.project = headers, fields.project(state.billing_group_tag)
    if state.router is not None:  # providers configured: route, translate, fall back
        relay.route = state.router
    return await relay.serve(principal, fields.allowance, started)


class Relay:
    """One request's trip through the provider and back, and what it cost."""

    # Left alone on the default path (one Anthropic-format upstream, `state.upstream`). A
    # route (proxy.providers) opens the provider's answer itself and records in `served`
    # the provider that gave it, which prices and attributes the request.
    route: Any = None
    served: Any = None
    stream_type = "text/event-stream"  # the answer metered as a stream, by stream_meter
    stream_meter: Any = StreamMeter

    ticket: Ticket  # what admission reserved (`serve`)
    task: asyncio.Task[Any] | None = None  # the handler's, while it relays (`end`)

    def __init__(self, state: ProxyState, request: web.Request, model: str, stream: bool,
                 t0: float, body: bytes) -> None:
        self.state, self.request, self.body = state, request, body
        self.headers = request.headers  # what goes to the provider (proxy.tags may trim them)
        self.project = ""  # the billing-group tag's value (proxy.request_fields.Fields.project)
        self.model, self.stream, self.t0 = model, stream, t0
        self.status = 0
        self.upstream_request_id = ""  # the provider's `request-id` header
        self.ttfb: float | None = None
        self.error_type = ""
        self.meter: StreamMeter | None = None
        self.tee: list[bytes] | None = None
        self.tee_size = 0
        self.cost_micros: int | None = None  # once priced
        self.settled = False  # the settlement is on its way (Gate.settle_soon)

    async def serve(self, principal: Principal, allowance: Allowance,
                    started: datetime) -> web.StreamResponse:
        """Admit, relay and settle: a metered request once its fields are read. The caller
        hands the body over in the relay and keeps no reference to it (see `run`)."""
        state = self.state
        request_id = state.request_ids()
        # Per-model caps match the model as it is priced: an alias or a provider's spelling
        # resolves to its price row, so a new spelling cannot dodge them.
        row = state.prices.row_for(self.model)
        try:
            check_model(principal, self.model, allowance)
            self.ticket = await state.gate.admit(
                principal, request_id,
                state.estimate(self.model, len(self.body), *allowance), started,
                row.name if row is not None else self.model)
        except (ProxyError, BudgetExceeded, RateLimited) as exc:
            refuse(state, self.request, principal, started, refusal(exc),
                   getattr(exc, "status", 429), error_kind(exc), self.model, request_id,
                   self.project)
            raise
        state.metrics.overhead.observe(time.monotonic() - self.t0)
        self.task = asyncio.current_task()
        state.relays.add(self)
        try:
            return await self.run()
        except ProxyError as exc:  # meterd's own answer (a 502, a 504): it names the request
            exc.headers["x-meterd-request-id"] = self.ticket.request_id
            raise
        finally:
            state.relays.discard(self)
            self.settle()

    def end(self) -> None:
        """Cut the request short: the shutdown grace is over (`end_relays`). What it used
        so far is settled as for a client that left."""
        self.error_type = "shutdown"
        if self.task is not None:
            self.task.cancel()

    async def run(self) -> web.StreamResponse:
        state, request = self.state, self.request
        # Nothing holds the body once the provider has it: an answer can stream for minutes,
        # and Claude Code's bodies run to hundreds of KB (bench/slow_streams.py: 1,000 streams
        # of a 61 KB body peaked at 168 MiB with it held, 117 MiB without). aiohttp's read()
        # keeps a copy on the request too.
        body, self.body, request._read_bytes = self.body, b"", None
        try:
            if self.route is None:
                upstream = await state.session.post(
                    state.upstream.url(request.path_qs), data=body,
                    headers=state.upstream.request_headers(self.headers.items()))
            else:
                upstream = await self.route.open(self, body)
            del body
        except asyncio.CancelledError:
            # The client left (aiohttp cancels the handler if told to), or `end`.
            self.error_type = self.error_type or "client_disconnected"
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            failure = upstream_failure(exc)
            self.status = failure.status
            self.error_type = "upstream_timeout" if failure.status == 504 \
                else "upstream_unreachable"
            raise failure from None
        self.status = upstream.status
        self.upstream_request_id = upstream.headers.get("request-id", "")
        headers = response_headers(upstream.headers.items())
        headers.update(self.ticket.headers)
        headers["x-meterd-request-id"] = self.ticket.request_id
        response = web.StreamResponse(status=upstream.status, headers=headers)
        if upstream.content_type == self.stream_type:
            self.meter = self.stream_meter()
        else:
            self.tee = []
        try:
            await response.prepare(request)
            content = upstream.content
            at_eof = getattr(content, "at_eof", None)  # a provider's translated stream: none
            async for chunk in content.iter_any():
                if self.ttfb is None:
                    self.ttfb = time.monotonic()
                self._observe(chunk)
                last = at_eof is not None and at_eof()
                if last or (self.meter is not None and self.meter.complete):
                    # Settled (journalled) before the client can see the answer end: a
                    # proxy killed right after relaying it has then not served it unmetered.
                    self.settle()
                if last:
                    # The answer's end came with its last bytes: relay both in one write.
                    await response.write_eof(chunk)
                    break
                await response.write(chunk)
            else:
                self.settle()  # as above: before the end of the body reaches the client
                await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            self.error_type = "client_disconnected"  # the client left: settle what was used
        except (TimeoutError, aiohttp.ClientError) as exc:
            # The provider broke off mid-answer: break the client's stream the same way.
            self.error_type = "upstream_reset" if not isinstance(exc, asyncio.TimeoutError) \
                else "upstream_timeout"
            if request.transport is not None:
                request.transport.close()
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the client goes away mid-response, or `end`.
            self.error_type = self.error_type or "client_disconnected"
            raise
        finally:
            if self.error_type:
                upstream.close()  # stop the provider generating what nobody will read
            else:
                upstream.release()
        return response

    def _observe(self, chunk: bytes) -> None:
        if self.meter is not None:
            self.meter.feed(chunk)
        elif self.tee is not None:
            self.tee_size += len(chunk)
            if self.tee_size <= _MAX_TEE:
                self.tee.append(chunk)

    def _metered(self) -> Metered:
        if self.meter is not None:
            metered = self.meter.finish()
        elif self.tee is not None and self.status:
            metered = meter_body(b"".join(self.tee))
        else:
            metered = Metered(Usage(), False, self.error_type, "")
        usage, estimate = metered.usage, self.ticket.estimate
        if (self.error_type in _CUT_SHORT and self.status < 300 and estimate is not None
                and not (usage.prompt_tokens or usage.output_tokens)):
            # The client (or the shutdown) left before any usage was read, while the request
            # waited for the provider or its answer had just begun: the provider was working
            # on it all the same. Bill what admission estimated, as a stream cut after its
            # message_start is billed from what was seen.
            usage = Usage(input_tokens=estimate.prompt_tokens,
                          output_tokens=estimate.output_tokens)
            return Metered(usage, True, metered.error_type, metered.model)
        return metered

    def settle(self) -> None:
        """Price the request and send its settlement now, not awaited: a client that went away
        (cancelling the handler) must not cancel it. `drain` waits for it at shutdown.

        A fault on the way (a bug, a field nothing foresaw) neither turns the answer into an
        error nor lets the request go unpaid: it is charged its cost, or what admission
        estimated if it could not be priced, with a minimal settlement (Gate.settle_minimal).
        """
        if self.settled:  # at the answer's end already (run)
            return
        try:
            self.finish()
        except Exception:
            log.exception("cannot meter %s", self.ticket.request_id)
            if self.settled:
                return
            try:
                self.settle_minimal()
            except Exception:
                log.exception("cannot charge %s", self.ticket.request_id)

    def settle_minimal(self) -> None:
        estimate = self.ticket.estimate
        micros = self.cost_micros if self.cost_micros is not None else \
            estimate.default_micros if estimate is not None else 0
        self.state.gate.settle_minimal(self.ticket, micros, model=self.model,
                                       status=self.status, stream=self.stream)

    def finish(self) -> None:
        """Price the request and send its settlement (Gate.settle_soon)."""
        state, ticket = self.state, self.ticket
        metered = self._metered()
        usage = metered.usage
        served = self.served
        if served is None:
            cost, provider = state.prices.cost(self.model, usage), state.upstream.name
        else:
            cost, provider = served.cost(state.prices, self.model, usage), served.name
        self.cost_micros = cost.micros
        ended = time.monotonic()
        headers = self.request.headers
        settlement = Settlement.of(
            ticket, usage, cost, model=self.model, provider=provider, status=self.status,
            stream=self.stream, estimated=metered.estimated,
            latency_ms=int((ended - self.t0) * 1000),
            ttfb_ms=int((self.ttfb - self.t0) * 1000) if self.ttfb else -1,
            error_type=self.error_type or metered.error_type, project=self.project,
            upstream_request_id=self.upstream_request_id,
            **{name: headers.get(header, "") for name, header in _CLIENT_HEADERS.items()})
        state.gate.settle_soon(ticket, settlement)
        self.settled = True
        if state.access_log is not None:
            state.access_log.write(settlement)
        m = state.metrics
        m.requests[self.status, settlement.stream] += 1
        m.latency.observe(ended - self.t0)
        for category, field in TOKEN_CATEGORIES.items():
            m.tokens[category] += getattr(settlement, field)
        m.cost_micros += cost.micros
        m.estimated += metered.estimated


def refusal(exc: ProxyError | BudgetExceeded | RateLimited) -> str:
    """What refused a request, in words, as the request log shows it: the cap or limit and
    until when it holds."""
    if isinstance(exc, BudgetExceeded):
        cap = exc.cap
        amount = format_usd(cap.amount, exact=cap.amount % 10_000 != 0)  # cents, or every µ$
        return f"budget: {cap.describe()} {amount} · until {clock(exc.resets_at)}"
    if isinstance(exc, RateLimited):
        return f"rate limit: {str(exc).removeprefix('rate limit reached: ')}"
    return f"model: {exc.message}"


def error_kind(exc: ProxyError | BudgetExceeded | RateLimited) -> str:
    if isinstance(exc, ProxyError):
        return exc.kind
    return "billing_error" if isinstance(exc, BudgetExceeded) else "rate_limit_error"


def refuse(state: ProxyState, request: web.Request, principal: Principal, at: datetime,
           why: str, status: int, kind: str, model: str = "", request_id: str = "",
           project: str = "") -> None:
    """Put a refused request on the event stream: a $0 row of the request log (Gate.refuse),
    no DuckDB write and no spend on the way."""
    ticket = Ticket(request_id or state.request_ids(), principal, at, admitted=False)
    headers = request.headers
    state.gate.refuse(ticket, Settlement.refused(
        ticket, why, model=model, status=status, error_type=kind, project=project,
        session_id=headers.get(_CLIENT_HEADERS["session_id"], ""),
        agent_id=headers.get(_CLIENT_HEADERS["agent_id"], "")))


def check_model(principal: Principal, model: str, allowance: Allowance | None = None) -> None:
    """Refuse, before admission, a model the caller's team may not use (ledger/models_allowed),
    including the model an advisor tool would call."""
    allowed = principal.models
    if allowed is None:
        return
    advisors = [t.model for t in allowance.tools if t.model] if allowance else []
    for name in (model, *advisors):
        if not allowed.allows(name):
            raise ProxyError(400, "invalid_request_error",
                             f"model {clean_text(name)!r} is not allowed for team "
                             f"{principal.team_name}; allowed: {', '.join(allowed.models)}")


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages/count_tokens: forwarded for any valid key and allowed model; never
    metered or blocked by a cap."""
    state = request.app[STATE]
    principal = state.authenticate(request.headers)
    body = await request.read()
    if principal.models is not None:
        check_model(principal, request_model(body))
    try:
        if state.router is not None:
            return await state.router.count_tokens(state.session, request, body,
                                                   request_model(body), state.metrics.fallbacks)
        async with state.session.post(
            state.upstream.url(request.path_qs), data=body,
            headers=state.upstream.request_headers(request.headers.items()),
        ) as upstream:
            payload = await upstream.read()
            return web.Response(status=upstream.status, body=payload,
                                headers=response_headers(upstream.headers.items()))
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise upstream_failure(exc) from None


async def models(request: web.Request) -> web.Response:
    """GET /v1/models: the models the caller may use: with routes, those the routes reach
    (of the configured `models` and the caller's list), narrowed by their team's list (or
    the organization's); else that list, or the configured `models`."""
    state = request.app[STATE]
    allowed = state.authenticate(request.headers).models
    if state.router is not None:
        offered = (*state.models, *(allowed.models if allowed is not None else ()))
        listed = [m for m in state.router.table.listed(offered)
                  if allowed is None or allowed.allows(m)]
    else:
        listed = list(state.models) if allowed is None else allowed.listed(state.models)
    data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
            for m in listed]
    return web.json_response({"data": data, "has_more": False,
                              "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None},
                             dumps=lambda v: orjson.dumps(v).decode())


async def hello(request: web.Request) -> web.Response:
    """HEAD / and /api/hello: Claude Code's startup probe. No credential, no work."""
    return web.Response(status=200)


async def me(request: web.Request) -> web.Response:
    """GET /meterd/v1/me: who the gateway thinks the caller is, and their budgets (doctor)."""
    state = request.app[STATE]
    p = state.authenticate(request.headers)
    # The admission clock: grants and periods as admission sees them.
    budgets = await cap_balances(state.redis, state.keyspace, p, state.gate.clock())
    limits = [{"scope": lim.scope, "name": lim.scope_name, "rpm": lim.rpm, "itpm": lim.itpm,
               "otpm": lim.otpm, "concurrency": lim.concurrency} for lim in p.limits]
    return web.json_response({
        "key_id": p.key_id, "developer": {"id": p.developer_id, "name": p.developer_name},
        "team": {"id": p.team_id, "name": p.team_name}, "budgets": budgets, "limits": limits})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    return await request.app[STATE].metrics.handle(request)


async def readyz(request: web.Request) -> web.Response:
    """Whether a load balancer should send this proxy requests: not while it would refuse them
    (Redis unreachable under fail_closed) or hold them (the counters are being rebuilt after
    Redis came back empty: admission waits for the ready marker). Under fail_open a proxy
    that cannot reach Redis still serves, and says so. /healthz stays 200 throughout."""
    state = request.app[STATE]
    try:
        complete = bool(await state.redis.exists(state.keyspace.ready))
    except Exception as exc:
        if not state.gate.fail_open:
            return web.json_response({"status": "unready", "redis": type(exc).__name__},
                                     status=503)
        return web.json_response({"status": "ready", "redis": type(exc).__name__,
                                  "admission": "fail_open",
                                  "spool_depth": state.gate.spool.depth})
    if not complete:
        return web.json_response({"status": "unready", "counters": "rebuilding"}, status=503)
    return web.json_response({"status": "ready", "policy_version": state.policy.version,
                              "spool_depth": state.gate.spool.depth})


async def end_relays(state: ProxyState, grace: float) -> None:
    """Shutdown: let the requests under way finish for up to `grace` seconds, then cut short
    those still waiting for or relaying an answer (they are settled as they end). aiohttp's
    shutdown_timeout alone would let a stream run twice as long: it waits that long, then
    cancels, then waits as long again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while state.relays and (left := deadline - loop.time()) > 0:
        tasks = [relay.task for relay in state.relays if relay.task is not None]
        await asyncio.wait(tasks, timeout=left, return_when=asyncio.FIRST_COMPLETED)
    for relay in list(state.relays):
        relay.end()


def setup_routes(app: web.Application) -> None:
    setup_errors(app)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/", hello)  # add_get answers HEAD too
    app.router.add_get("/api/hello", hello)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/meterd/v1/me", me)
    setup_oauth_usage(app)
    app.router.add_get("/metrics", metrics)
