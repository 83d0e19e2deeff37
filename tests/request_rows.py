"""Request log rows written straight into DuckDB, for views that read `requests` (the session
view, the request CSV): every column gets a neutral value unless the test names it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import duckdb

_NEUTRAL = {"VARCHAR": "", "BOOLEAN": False, "TIMESTAMP": datetime(2026, 3, 1)}


def insert_request(conn: duckdb.DuckDBPyConnection, **values: Any) -> None:
    cols = conn.execute("DESCRIBE requests").fetchall()
    row = {name: values.get(name, _NEUTRAL.get(kind, 0)) for name, kind, *_ in cols}
    unknown = set(values) - set(row)
    assert not unknown, f"no such request columns: {unknown}"
    conn.execute(f"INSERT INTO requests ({', '.join(row)}) VALUES "
                 f"({', '.join('?' for _ in row)})", list(row.values()))
