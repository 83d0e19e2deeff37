"""One Claude Code session from the request log: its cost, tokens, duration, models and the
agents (the main agent and its subagents, by `agent_id` / `parent_agent_id`) that ran in it.

Reads raw `requests` (indexed by time, so a session is found by its id alone); after the
retention purge a session has only its rollup (usage_sessions) left and is reported empty.
"""

from __future__ import annotations

from typing import Any

import duckdb

from ledger.reports import ERROR_SQL

_SUMS = (f"count(*) AS requests, CAST(count(*) FILTER (WHERE {ERROR_SQL}) AS BIGINT) AS errors, "
         "CAST(sum(input_tokens) AS BIGINT) AS input_tokens, "
         "CAST(sum(output_tokens) AS BIGINT) AS output_tokens, "
         "CAST(sum(cache_write_5m + cache_write_1h) AS BIGINT) AS cache_write, "
         "CAST(sum(cache_read) AS BIGINT) AS cache_read, "
         "CAST(sum(cost_micros) AS BIGINT) AS cost_micros, "
         "min(ts) AS first, max(ts) AS last")


def _dicts(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def session(conn: duckdb.DuckDBPyConnection, session_id: str,
            developer_id: str | None = None) -> dict[str, Any] | None:
    """The session's totals (with `seconds` from its first to its last request, the
    developer and team), one row per model and one per agent, costliest first; None when no
    request (of `developer_id`, when given) carries this session id."""
    where, params = "r.session_id = ?", [session_id]
    if developer_id is not None:
        where += " AND r.developer_id = ?"
        params.append(developer_id)
    totals = _dicts(conn.execute(
        f"SELECT {_SUMS}, any_value(r.developer_id) AS developer_id, "
        "any_value(coalesce(d.name, r.developer_id)) AS developer, "
        "any_value(r.team_id) AS team_id, any_value(coalesce(t.name, r.team_id)) AS team, "
        "any_value(r.project) AS project FROM requests r "
        "LEFT JOIN developers d ON d.id = r.developer_id "
        f"LEFT JOIN teams t ON t.id = r.team_id WHERE {where}", params))[0]
    if not totals["requests"]:
        return None
    totals["seconds"] = int((totals["last"] - totals["first"]).total_seconds())
    models = _dicts(conn.execute(
        f"SELECT model, {_SUMS} FROM requests r WHERE {where} GROUP BY model "
        "ORDER BY cost_micros DESC, model", params))
    agents = _dicts(conn.execute(
        f"SELECT agent_id, any_value(parent_agent_id) AS parent_agent_id, {_SUMS} "
        f"FROM requests r WHERE {where} GROUP BY agent_id "
        "ORDER BY first, agent_id", params))
    return {"session_id": session_id, **totals, "models": models, "agents": agents}
