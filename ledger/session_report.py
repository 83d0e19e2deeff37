"""One Claude Code session from the request log: its cost, tokens, duration, models and the
agents (the main agent and its subagents, by `agent_id` / `parent_agent_id`) that ran in it.

Reads raw `requests` (indexed by time, so a session is found by its id alone); after the
retention purge a session has only its rollup (usage_sessions) left and is reported empty.
"""

from __future__ import annotations

from typing import Any

import duckdb

from ledger.reports import ERROR_SQL, _dicts

_SUMS = (f"count(*) AS requests, CAST(count(*) FILTER (WHERE {ERROR_SQL}) AS BIGINT) AS errors, "
         "CAST(sum(input_tokens) AS BIGINT) AS input_tokens, "
         "CAST(sum(output_tokens) AS BIGINT) AS output_tokens, "
         "CAST(sum(cache_write_5m + cache_write_1h) AS BIGINT) AS cache_write, "
         "CAST(sum(cache_read) AS BIGINT) AS cache_read, "
         "CAST(sum(cost_micros) AS BIGINT) AS cost_micros, "
         "min(ts) AS first, max(ts) AS last")


def session(conn: duckdb.DuckDBPyConnection, session_id: str,
            developer_id: str | None = None) -> dict[str, Any] | None:
    """The session's totals (with `seconds` from its first to its last request, the
    developer and team), one row per model and one per agent, costliest first; None when no
    request (of `developer_id`, when given) carries this session id."""
    where, params = "r.session_id = ?", [session_id]
    if developer_id is not None:
        where += " AND r.developer_id = ?"
        params.append(developer_id)
    # One scan of `requests` (no index on session_id): its rows once, then three groupings.
    rows = _dicts(conn.execute(
        f"WITH s AS MATERIALIZED (SELECT * FROM requests r WHERE {where}) "
        f"SELECT 'total' AS grp, NULL AS model, NULL AS agent_id, NULL AS parent_agent_id, "
        f"{_SUMS} FROM s "
        f"UNION ALL SELECT 'model', model, NULL, NULL, {_SUMS} FROM s GROUP BY model "
        f"UNION ALL SELECT 'agent', NULL, agent_id, any_value(parent_agent_id), {_SUMS} "
        "FROM s GROUP BY agent_id", params))
    totals = next(r for r in rows if r["grp"] == "total")
    if not totals["requests"]:
        return None
    who = conn.execute(
        "SELECT r.developer_id, coalesce(d.name, r.developer_id), r.team_id, "
        "coalesce(t.name, r.team_id), r.project FROM requests r "
        "LEFT JOIN developers d ON d.id = r.developer_id LEFT JOIN teams t ON t.id = r.team_id "
        f"WHERE {where} AND r.ts = ? LIMIT 1", [*params, totals["first"]]).fetchone()
    assert who is not None
    totals.update(zip(("developer_id", "developer", "team_id", "team", "project"), who,
                      strict=True))
    totals["seconds"] = int((totals["last"] - totals["first"]).total_seconds())
    models = sorted((r for r in rows if r["grp"] == "model"),
                    key=lambda r: (-r["cost_micros"], r["model"]))
    agents = sorted((r for r in rows if r["grp"] == "agent"),
                    key=lambda r: (r["first"], r["agent_id"]))
    return {"session_id": session_id, **totals, "models": models, "agents": agents}
