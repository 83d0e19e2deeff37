"""The admin's alert job: tell destinations about caps, outages and spend.

It runs in the admin process on the scheduler, beside the rollup, so nothing of it touches the
proxy's hot path. Every admin process may run it: the Redis dedupe key of each event
(ledger.alerts) makes sure only one of them sends, and for a Redis outage, which each admin
notices at its own time, the outage mark (ledger.outages).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from redis.exceptions import RedisError

from dashboard.state import AdminState
from ledger import periods
from ledger.alerts import (
    Alerter,
    Destinations,
    evaluate_budgets,
    evaluate_ledger,
    evaluate_ops,
    send_digest,
)
from ledger.outages import OutageWatch

log = logging.getLogger("meterd.alerts")
JOB_ID = "alerts"


def schedule_alerts(scheduler: AsyncIOScheduler, state: AdminState,
                    thresholds: Sequence[int], interval: float,
                    clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
    """The alert tick every `interval` seconds, and the digests. `clock`: when this process
    finds Redis away (a test's two admins disagree on it)."""
    alerter = Alerter(Destinations(state.catalog), state.db, state.redis, state.keyspace)

    watch = OutageWatch(state.redis, state.keyspace)

    async def tick() -> None:
        try:
            # Before `look`, which would read the mark another admin just set.
            told = await watch.claim()
            if told:  # Redis is back, and this process is the one to say so
                began, mark = told
                await alerter.fire("redis", f"redis:{mark}", 86_400, "Redis was unreachable",
                                   f"From about {began:%Y-%m-%d %H:%M:%S} UTC until "
                                   f"{clock():%H:%M:%S} UTC; admission followed the "
                                   "configured outage policy and the proxies spooled usage.")
            await watch.look()  # an outage shows even with no cap to check
            await evaluate_budgets(alerter, state.catalog, thresholds)
            await evaluate_ledger(alerter, state.catalog)
            await evaluate_ops(alerter)
        except (RedisError, OSError) as exc:  # the rollup logs the outage itself
            watch.lost(clock())
            log.debug("alerts skipped this tick: %s", exc)

    async def digest(days: int) -> None:
        await send_digest(alerter, state.catalog, days)

    scheduler.add_job(tick, "interval", seconds=interval, id=JOB_ID, name="alerts",
                      max_instances=1, coalesce=True, replace_existing=True,
                      misfire_grace_time=max(1, int(interval)))
    # At 08:00 in the org's time zone, about yesterday (and on Mondays, the week before).
    zone = periods.zone()
    scheduler.add_job(digest, "cron", hour=8, timezone=zone, args=[1], id="digest_daily",
                      name="digest", replace_existing=True, misfire_grace_time=3600)
    scheduler.add_job(digest, "cron", day_of_week="mon", hour=8, timezone=zone, args=[7],
                      id="digest_weekly", name="digest", replace_existing=True,
                      misfire_grace_time=3600)
