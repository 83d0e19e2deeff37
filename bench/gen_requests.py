"""A DuckDB ledger holding N synthetic requests (default 10 million), for report benchmarks.

    python bench/gen_requests.py [--rows 10000000] [--days 90] [--developers 1000]
                                 [--teams 40] [--end 2026-03-31] [--out PATH]

Everything is generated in SQL from `range(N)` with hash-based pseudo-random values (the same
arguments give the same file): requests in time order over `--days` days ending the day
before `--end`, developers in teams, four models, about three Claude Code sessions per developer
per day, Claude Code-like token counts, ~3% errors. Then the catalog (teams, developers,
budgets of every scope and period) and the rollups (`usage_daily`, `usage_sessions`,
`usage_projects`) are filled exactly as the rollup job would have left them. Default output:
$TMPDIR/meterd-bench/requests.duckdb (outside the repository: it is about a gigabyte).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from ledger.catalog import connect
from ledger.rollup import add_to_rollups

DEFAULT_OUT = Path(tempfile.gettempdir()) / "meterd-bench" / "requests.duckdb"
MODELS = ("claude-sonnet-4-6", "claude-opus-4-8", "claude-haiku-4-5", "claude-sonnet-4-5")


def generate(out: Path, rows: int, days: int, developers: int, teams: int, end: date) -> None:
    for stale in (out, out.with_name(out.name + ".wal")):
        stale.unlink(missing_ok=True)
    conn = connect(out)
    first = datetime.combine(end - timedelta(days=days), datetime.min.time(), UTC)
    span_ms = days * 86_400_000
    t0 = time.perf_counter()
    # h(k): a pseudo-random non-negative BIGINT from the row number and a salt.
    conn.execute(f"""
        CREATE OR REPLACE MACRO h(i, k) AS CAST(hash(i * 1000003 + k) % 1000000007 AS BIGINT);
        INSERT INTO requests
        SELECT
            printf('mreq_%024x', i) AS id,
            epoch_ms({int(first.timestamp() * 1000)} + (i * {span_ms} // {rows})) AS ts,
            printf('dev_%05d', dev) AS developer_id,
            printf('team_%03d', dev % {teams}) AS team_id,
            printf('key_%05d', dev) AS key_id,
            {list(MODELS)}[1 + h(i, 2) % {len(MODELS)}] AS model,
            'anthropic' AS provider,
            CASE WHEN h(i, 3) % 100 < 3 THEN 529 ELSE 200 END AS status,
            true AS stream,
            1 + h(i, 4) % 4000 AS input_tokens,
            h(i, 5) % 3000 AS output_tokens,
            CASE WHEN h(i, 6) % 3 = 0 THEN h(i, 7) % 6000 ELSE 0 END AS cache_write_5m,
            0 AS cache_write_1h,
            CASE WHEN h(i, 8) % 5 > 0 THEN 5000 + h(i, 9) % 120000 ELSE 0 END AS cache_read,
            CASE WHEN h(i, 10) % 200 = 0 THEN 1 ELSE 0 END AS web_search,
            100 + h(i, 11) % 150000 AS cost_micros,
            0 AS cache_saved_micros,
            'claude-sonnet-4-6' AS price_row, 'p-bench' AS price_version, true AS priced,
            200 + h(i, 12) % 30000 AS latency_ms, 100 + h(i, 13) % 2000 AS ttfb_ms,
            h(i, 14) % 100 = 0 AS estimated,
            CASE WHEN h(i, 3) % 100 < 3 THEN 'overloaded_error' ELSE '' END AS error_type,
            'standard' AS service_tier, '' AS speed, 'not_available' AS inference_geo,
            printf('%08x-%04d-4b2d-9d7e-%012d', dev, (i * {days} // {rows}) % 10000,
                   h(i, 15) % 3) AS session_id,
            '' AS agent_id, '' AS parent_agent_id, '' AS request_class, '' AS prompt_id,
            -- a developer works on one or two of 40 projects; a quarter of requests name none
            CASE WHEN h(i, 16) % 4 = 0 THEN ''
                ELSE printf('project-%02d', (dev + h(i, 16) % 2) % 40) END AS project,
            '' AS upstream_request_id,
            -- about 1 in 500 a $0 row the gateway refused (a cap), as ledger/settlement.py writes
            CASE WHEN h(i, 17) % 500 = 0 THEN 'budget: developer monthly cap' ELSE '' END
                AS refusal
        FROM (SELECT range AS i, h(range, 1) % {developers} AS dev FROM range({rows}))
        ORDER BY i
    """)
    conn.execute("UPDATE requests SET cache_saved_micros = cache_read * 27 // 10 "
                 "WHERE cache_read > 0")
    conn.execute("UPDATE requests SET status = 429, cost_micros = 0, cache_saved_micros = 0, "
                 "input_tokens = 0, output_tokens = 0, cache_write_5m = 0, cache_read = 0, "
                 "web_search = 0, error_type = 'rate_limit_error' WHERE refusal <> ''")
    t1 = time.perf_counter()
    print(f"requests: {rows:,} rows in {t1 - t0:.1f} s")
    conn.execute(f"""
        INSERT INTO teams (id, name, created_at)
        SELECT printf('team_%03d', t), printf('Team %03d', t), now()
        FROM range({teams}) r(t);
        INSERT INTO developers (id, name, email, team_id, disabled, created_at)
        SELECT printf('dev_%05d', d), printf('Developer %05d', d),
            printf('dev%05d@example.com', d), printf('team_%03d', d % {teams}), false, now()
        FROM range({developers}) r(d);
        INSERT INTO budgets SELECT printf('bud_t%03d', t), 'team', printf('team_%03d', t),
            'monthly', 2000000000, 'estimate', now() FROM range({teams}) r(t);
        INSERT INTO budgets SELECT printf('bud_m%03d', t), 'team_member',
            printf('team_%03d', t), 'daily', 50000000, 'estimate', now()
            FROM range({teams}) r(t);
        INSERT INTO budgets SELECT printf('bud_d%05d', d), 'developer', printf('dev_%05d', d),
            'weekly', 300000000, 'estimate', now() FROM range(0, {developers}, 10) r(d);
        INSERT INTO budgets VALUES ('bud_org', 'org', '', 'monthly', 90000000000, 'estimate',
            now());
    """)
    conn.execute("BEGIN")
    add_to_rollups(conn, "requests")
    conn.execute("COMMIT")
    conn.execute("CHECKPOINT")
    t2 = time.perf_counter()
    sizes = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()
             for t in ("usage_daily", "usage_sessions", "usage_projects", "budgets")}
    print(f"catalog and rollups in {t2 - t1:.1f} s: " + ", ".join(
        f"{t} {n[0]:,}" for t, n in sizes.items() if n))
    conn.close()
    print(f"wrote {out} ({out.stat().st_size / 2**20:,.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--developers", type=int, default=1000)
    parser.add_argument("--teams", type=int, default=40)
    parser.add_argument("--end", type=date.fromisoformat, default=datetime.now(UTC).date(),
                        help="the day after the last request (default: today)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    generate(args.out, args.rows, args.days, args.developers, args.teams, args.end)


if __name__ == "__main__":
    main()
