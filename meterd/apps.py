"""App factories, one per process role, each wiring its resources as cleanup contexts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC
from functools import partial

import aiohttp
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from redis.exceptions import RedisError

from dashboard.oauth import create_oauth_app, well_known
from dashboard.site import setup_dashboard
from dashboard.state import ADMIN, AdminState
from dashboard.unreadable import page_for
from ledger import periods
from ledger.catalog import Catalog, connect
from ledger.gate import Gate
from ledger.journal import Journal
from ledger.keyspace import KeySpace
from ledger.lifecycle import Lifecycle
from ledger.pricing import PriceTable
from ledger.redis_client import connect_redis
from ledger.rollup import Rollup, schedule, schedule_purge
from ledger.spool import Spool
from ledger.telemetry import TelemetryRollup
from meterd.alert_jobs import schedule_alerts
from meterd.providers_config import providers_context
from meterd.settings import Settings
from meterd.standby import healthz, lead, leader_readyz, step_down
from proxy.access_log import AccessLog
from proxy.errors import ERROR_PAGE, error_middleware, setup_errors
from proxy.handlers import end_relays, setup_routes
from proxy.managed import setup_managed_routes
from proxy.managed_seen import seen_context
from proxy.metrics import ProxyMetrics
from proxy.providers.passthrough import setup_provider_routes
from proxy.state import STATE, ProxyState
from proxy.telemetry import setup_telemetry
from proxy.upstream import AnthropicUpstream

log = logging.getLogger("meterd")

DB_FILE = "meterd.duckdb"
SOCKET_FILE = "meterd.sock"


def create_proxy_app(settings: Settings,
                     reload_settings: Callable[[], Settings] | None = None,
                     reuse_port: bool = False) -> web.Application:
    """The proxy role: stateless, any number of them against one Redis. `reload_settings`
    re-reads configuration for a providers reload on SIGHUP (the CLI passes it);
    `reuse_port` lets the worker processes of `--workers` share the metrics listener too."""
    periods.set_zone(settings.timezone)  # before any counter is named
    app = web.Application(client_max_size=settings.max_body_bytes)
    app.cleanup_ctx.append(partial(_proxy_context, settings))
    app.cleanup_ctx.append(seen_context)  # after the proxy state it writes with
    app.cleanup_ctx.append(partial(_metrics_listener, settings, reuse_port))
    app.cleanup_ctx.append(partial(providers_context, settings, reload_settings))
    setup_routes(app)
    setup_provider_routes(app)
    setup_managed_routes(app)
    setup_telemetry(app, settings.telemetry_max_bytes, settings.telemetry_per_minute)
    app.on_shutdown.append(partial(_end_relays, settings.shutdown_grace))
    return app


async def _end_relays(grace: float, app: web.Application) -> None:
    """Open streams get `shutdown_grace` to finish, then are cut and settled."""
    await end_relays(app[STATE], grace)


async def _proxy_context(settings: Settings, app: web.Application) -> AsyncIterator[None]:
    # Each resource's release is pushed as it is made; on shutdown they run in reverse, every
    # one of them even when an earlier one raises (then the first error is raised after).
    async with contextlib.AsyncExitStack() as releases:
        redis = connect_redis(settings.redis_url)
        releases.push_async_callback(redis.aclose)
        keyspace = KeySpace(settings.redis_prefix)
        spool = Spool(settings.data_path / "spool")
        releases.callback(spool.close)
        journal = Journal(settings.data_path / "journal")
        releases.callback(journal.close)
        gate = Gate(redis, keyspace, spool,
                    fail_open=settings.redis_outage_policy == "fail_open",
                    reservation_ttl=settings.reservation_ttl, thresholds=settings.thresholds,
                    journal=journal)
        session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=settings.upstream_connect_timeout,
                                          sock_read=settings.upstream_read_timeout),
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            # One session serves every developer: a cookie a provider sets (e.g. a CDN's)
            # must not be stored and sent on with other people's requests. (Also skips the
            # jar's work.)
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        releases.push_async_callback(session.close)
        state = ProxyState(
            redis=redis, keyspace=keyspace, gate=gate,
            prices=PriceTable.load(dict(settings.prices), settings.fallback_input_usd,
                                   settings.fallback_output_usd),
            upstream=AnthropicUpstream(settings.upstream_url, settings.upstream_key,
                                       settings.upstream_auth),
            session=session, models=settings.models,
            metrics=ProxyMetrics(lambda: gate.redis_errors, lambda: spool.depth,
                                 settings.metrics_token),
            estimate_output_tokens=settings.estimate_output_tokens,
            policy_refresh=settings.policy_refresh,
            public_url=settings.public_url.rstrip("/"),
            billing_group_tag=settings.billing_group_tag,
            access_log=AccessLog() if settings.log_level in ("debug", "info") else None,
        )
        if state.access_log is not None:
            releases.callback(state.access_log.flush)
        releases.push_async_callback(state.drain)
        try:
            await state.refresh_policy()
            await gate.replay_spool()
        except Exception as exc:
            log.warning("redis not reachable at start (%s); serving per outage policy", exc)
        app[STATE] = state
        maintenance = asyncio.create_task(state.maintain())
        releases.push_async_callback(_stop_maintenance, state, maintenance)
        keeping = asyncio.create_task(journal.keep(redis, keyspace.epoch, keyspace.rolled_until,
                                                   gate.apply, state.stopping))
        releases.push_async_callback(_stop_maintenance, state, keeping)
        yield


async def _stop_maintenance(state: ProxyState, maintenance: asyncio.Task[None]) -> None:
    state.stopping.set()
    await maintenance


async def _metrics_listener(settings: Settings, reuse_port: bool,
                            app: web.Application) -> AsyncIterator[None]:
    """`/metrics` alone on its own address (metrics_host:metrics_port), which a platform
    exposes to its Prometheus and not to developers; none when metrics_port is 0."""
    if not settings.metrics_port:
        yield
        return
    listener = web.Application(middlewares=[error_middleware])
    listener.router.add_get("/metrics", app[STATE].metrics.scrape)
    runner = web.AppRunner(listener, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.metrics_host, settings.metrics_port,
                      reuse_port=reuse_port or None).start()
    yield
    await runner.cleanup()


def create_admin_app(settings: Settings, standby: bool = False) -> web.Application:
    """The admin role: dashboard and admin API under /admin; owns the DuckDB file. With
    `standby`, it waits for the rollup lock before opening the file (meterd.standby)."""
    periods.set_zone(settings.timezone)  # before any counter is named
    admin = web.Application()
    admin.cleanup_ctx.append(partial(_admin_context, settings, standby))
    setup_dashboard(admin, settings)
    return admin


async def _admin_context(settings: Settings, standby: bool,
                         app: web.Application) -> AsyncIterator[None]:
    # As in _proxy_context: each release is pushed as its resource is made, so a shutdown that
    # comes during the setup (a SIGTERM while the first rollup runs) still rolls up what is
    # left and hands the lock on, instead of leaving it to lapse.
    async with contextlib.AsyncExitStack() as releases:
        redis = connect_redis(settings.redis_url)
        releases.push_async_callback(redis.aclose)
        token = None
        if standby:
            token, conn = await lead(settings, redis, KeySpace(settings.redis_prefix),
                                     settings.data_path / DB_FILE)
        else:
            conn = connect(settings.data_path / DB_FILE)
        releases.callback(conn.close)
        catalog = Catalog(conn)
        state = AdminState(catalog, redis, KeySpace(settings.redis_prefix), settings.proxy_url)
        releases.callback(state.executor.shutdown, wait=True)
        state.rollup = Rollup(redis, state.keyspace, catalog.conn, state.db, batch=20_000,
                              prices=PriceTable.load(dict(settings.prices),
                                                     settings.fallback_input_usd,
                                                     settings.fallback_output_usd), token=token)
        if standby:
            state.rollup.on_lost = step_down
        # What is left, then the lock goes to a standby.
        releases.push_async_callback(state.rollup.final_run)
        # The catalog is the truth: a fresh or flushed Redis gets the whole policy back.
        await state.publish()

        telemetry = TelemetryRollup(redis, state.keyspace, catalog.conn, state.db)

        async def after_rollup() -> None:
            if not await redis.exists(state.keyspace.policy_version):  # a flushed Redis lost it
                await state.publish()
            if state.rollup is not None and state.rollup.leader:  # one mover, as for usage
                await telemetry.tick()
                if await state.db(Lifecycle(catalog).start_due_moves):  # a move's day has come
                    await state.publish()

        async def last_telemetry() -> None:
            if state.rollup is not None and state.rollup.leader:
                await telemetry.tick()  # what the proxies took in, while the lock is still ours

        releases.push_async_callback(last_telemetry)
        scheduler = AsyncIOScheduler(timezone=UTC)
        # APScheduler logs two info lines per job run: a rollup every few seconds would fill
        # the log. Its warnings and errors still show.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        # Before the first run: the lock's heartbeat keeps it through a long one.
        schedule(scheduler, state.rollup, settings.rollup_interval, after_rollup)
        schedule_purge(scheduler, catalog.conn, state.db, settings.retention_days,
                       telemetry_days=settings.telemetry_retention_days)
        schedule_alerts(scheduler, state, settings.thresholds, settings.rollup_interval)
        try:
            await state.rollup.run_once()  # rebuilds lost counters before budgets are enforced
        except RedisError as exc:
            state.rollup.redis_failed(exc)  # the scheduler retries
        scheduler.start()
        releases.callback(scheduler.shutdown, wait=False)
        app[ADMIN] = state
        yield


ADMIN_APP = web.AppKey("admin_app", web.Application)


def create_root_app(settings: Settings, proxy: bool = True, admin: bool = True,
                    reload_settings: Callable[[], Settings] | None = None,
                    reuse_port: bool = False, standby: bool = False) -> web.Application:
    """What one process serves: the proxy at /, the admin side at /admin, or both (`serve`)."""
    app = (create_proxy_app(settings, reload_settings, reuse_port) if proxy
           else web.Application())
    if not proxy:  # the proxy sets it up for its own routes
        setup_errors(app)
    if admin:
        app[ADMIN_APP] = create_admin_app(settings, standby)
        if not proxy:  # `meterd admin`: a load balancer tells the leader from a standby
            admin_app = app[ADMIN_APP]
            app.router.add_get("/healthz", healthz)
            app.router.add_get("/readyz", leader_readyz(lambda: admin_app[ADMIN].rollup))
        app.add_subapp("/admin", app[ADMIN_APP])
        app[ERROR_PAGE] = page_for(app[ADMIN_APP])
        if settings.oidc_issuer:  # developers sign in with the device flow (dashboard/oauth.py)
            app.add_subapp("/oauth", create_oauth_app(settings, app[ADMIN_APP]))
            app.router.add_get("/.well-known/oauth-authorization-server",
                               well_known(settings.public_url))
    return app
