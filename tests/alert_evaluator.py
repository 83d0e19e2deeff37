"""One admin process's alert tick, run as its own process by tests/test_alerts.py:
`python -m tests.alert_evaluator DB_FILE REDIS_URL NOW_ISO` prints how many events it sent."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime

from ledger.alerts import Alerter, Destinations, evaluate_budgets
from ledger.catalog import Catalog, connect
from ledger.keyspace import KeySpace
from ledger.redis_client import connect_redis


async def main(db_file: str, redis_url: str, now: str) -> int:
    catalog = Catalog(connect(db_file))
    redis = connect_redis(redis_url)

    async def db(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        return fn(*args, **kwargs)

    try:
        alerter = Alerter(Destinations(catalog), db, redis, KeySpace(), attempts=3,
                          backoff=0.05)
        return await evaluate_budgets(alerter, catalog, (75, 95), datetime.fromisoformat(now))
    finally:
        await redis.aclose()
        catalog.conn.close()


if __name__ == "__main__":
    print(asyncio.run(main(*sys.argv[1:4])))
