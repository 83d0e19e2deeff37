"""The admin's alert job: end expired budget increases and tell destinations about caps.

It runs in the admin process on the scheduler, beside the rollup, so nothing of it touches the
proxy's hot path. Every admin process may run it: the Redis dedupe key of each event
(ledger.alerts) makes sure only one of them sends.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from redis.exceptions import RedisError

from dashboard.state import AdminState
from ledger.alerts import Alerter, Destinations, evaluate_budgets
from ledger.increases import Increases

log = logging.getLogger("meterd.alerts")
JOB_ID = "alerts"


def schedule_alerts(scheduler: AsyncIOScheduler, state: AdminState,
                    thresholds: Sequence[int], interval: float) -> None:
    alerter = Alerter(Destinations(state.catalog), state.db, state.redis, state.keyspace)
    increases = Increases(state.catalog)

    async def tick() -> None:
        if await state.db(increases.end_expired):
            await state.publish()  # the raised caps go back down on every proxy
        try:
            await evaluate_budgets(alerter, state.catalog, thresholds)
        except (RedisError, OSError) as exc:  # the rollup reports the outage itself
            log.debug("alerts skipped this tick: %s", exc)

    scheduler.add_job(tick, "interval", seconds=interval, id=JOB_ID, name="alerts",
                      max_instances=1, coalesce=True, replace_existing=True,
                      misfire_grace_time=max(1, int(interval)))
