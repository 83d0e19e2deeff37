"""A developer's and a team's life: disable and re-enable, move to another team from a day,
rename, and delete — which archives whatever has history, so no spend is ever erased.

Rules a finance team expects:
- Disabling a developer refuses every key and sign-in of theirs on every proxy with the next
  policy refresh; their keys, history and caps stay, and re-enabling brings the keys back.
- A move takes effect from the start of a day on the organization's calendar (its `timezone`:
  local midnight), never before the developer's current stay began: at once from today or a
  past day, or scheduled for a later day. Requests before that day stay with the old team (in
  the ledger, the rollups and the team's live counters); those from it on belong to the new
  one.
- Reports name teams and developers by id, so a rename shows everywhere at once.
- Deleting a developer who ever made a request archives them (disabled, hidden from lists,
  keys revoked); one without any request is erased with their keys and caps.
- Deleting a team with current members is refused; one with history (past members, usage)
  is archived; an unused team is erased with its caps, limits, managed settings and models.
Every change is audited with its actor, before and after (Catalog._audit).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from ledger.catalog import Catalog, CatalogError, check_name
from ledger.keyspace import KeySpace
from ledger.periods import COUNTER_TTL, PERIODS, day_start, local_day, start_day
from ledger.settlement import SPENT, TOKEN_COUNTERS

# The rollups whose rows carry the team of each request's day.
_DAILY_TABLES = ("usage_daily", "usage_sessions", "usage_projects")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _today() -> date:
    """The organization's day now: the days of memberships are its days."""
    return local_day(_now())


class Lifecycle:
    """Lifecycle operations on the catalog's connection, under its lock."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def _developer(self, ref: str) -> dict[str, Any]:
        dev_id = self.catalog.developer_id(ref)
        return self.catalog._rows("SELECT id, name, email, team_id, disabled, archived_at "
                                  "FROM developers WHERE id = ?", [dev_id])[0]

    def _team(self, ref: str) -> dict[str, Any]:
        team_id = self.catalog.team_id(ref)
        return self.catalog._rows("SELECT id, name, archived_at FROM teams WHERE id = ?",
                                  [team_id])[0]

    def memberships(self, developer: str) -> list[dict[str, Any]]:
        """A developer's stays in teams, the latest first (`last_day`: the day before
        `valid_to`, None while it lasts; `pending`: a scheduled move's stay)."""
        dev_id = self.catalog.developer_id(developer)
        today = _today()
        return [{**row, "pending": row["valid_from"] > today} for row in self.catalog._rows(
            "SELECT m.team_id, t.name AS team_name, m.valid_from, m.valid_to, "
            "m.valid_to - 1 AS last_day FROM memberships m "
            "LEFT JOIN teams t ON t.id = m.team_id WHERE m.developer_id = ? "
            "ORDER BY m.valid_from DESC", [dev_id])]

    # -- disable, re-enable, rename ------------------------------------------------------------

    def set_disabled(self, developer: str, disabled: bool, actor: str = "cli") -> dict[str, Any]:
        """Disable (offboard) or re-enable a developer. Re-enabling an archived developer
        brings them back to the lists; their revoked keys stay revoked."""
        with self.catalog.lock:
            before = self._developer(developer)
            if not disabled and before["archived_at"] is not None:
                team = self._team(before["team_id"])
                if team["archived_at"] is not None:
                    raise CatalogError(f"team {team['name']} is archived: move the developer "
                                       "to a current team before re-enabling them")
            self.catalog.conn.execute(
                "UPDATE developers SET disabled = ?, archived_at = CASE WHEN ? THEN archived_at "
                "END WHERE id = ?", [disabled, disabled, before["id"]])
            after = self._developer(before["id"])
            self.catalog._audit(actor, "developer.disable" if disabled else "developer.enable",
                                before["id"], before, after)
        return after

    def rename_developer(self, developer: str, name: str, actor: str = "cli") -> dict[str, Any]:
        name = check_name(name, "developer name")
        with self.catalog.lock:
            before = self._developer(developer)
            self.catalog.conn.execute("UPDATE developers SET name = ? WHERE id = ?",
                                      [name, before["id"]])
            after = self._developer(before["id"])
            self.catalog._audit(actor, "developer.rename", before["id"], before, after)
        return after

    def rename_team(self, team: str, name: str, actor: str = "cli") -> dict[str, Any]:
        name = check_name(name, "team name")
        with self.catalog.lock:
            before = self._team(team)
            if self.catalog._rows("SELECT 1 FROM teams WHERE name = ? AND id <> ?",
                                  [name, before["id"]]):
                raise CatalogError(f"a team named {name!r} already exists")
            self.catalog.conn.execute("UPDATE teams SET name = ? WHERE id = ?",
                                      [name, before["id"]])
            after = self._team(before["id"])
            self.catalog._audit(actor, "team.rename", before["id"], before, after)
        return after

    # -- moving ---------------------------------------------------------------------------

    def move(self, developer: str, team: str, since: date, actor: str = "cli",
             today: date | None = None) -> dict[str, Any]:
        """Move a developer to `team` from the start (local midnight) of the organization's day
        `since`.

        From today or a past day: at once, and the ledger's rows from that day on are
        re-attributed to the new team, in one transaction. From a later day: scheduled (the
        admin's rollup tick starts it that day, `start_due_moves`). A new move replaces a
        scheduled one; a "move" back to the current team cancels it.

        Returns the move with `moved`: per period of the live counters, the spend and tokens
        (of those periods' days from `since` on) that the team counters must pass from the
        old team to the new one (`move_counters` does that in Redis).
        """
        today = today or _today()
        with self.catalog.lock:
            dev = self._developer(developer)
            new = self._team(team)
            if new["archived_at"] is not None:
                raise CatalogError(f"team {new['name']} is archived")
            conn = self.catalog.conn
            pending = self.catalog._rows(
                "SELECT team_id, valid_from FROM memberships WHERE developer_id = ? AND "
                "valid_from > ?", [dev["id"], today])
            if new["id"] == dev["team_id"] and not pending:
                raise CatalogError(f"{dev['name']} is already in team {new['name']}")
            current = self.catalog._rows(
                "SELECT team_id, valid_from FROM memberships WHERE developer_id = ? AND "
                "valid_from <= ? AND (valid_to IS NULL OR valid_to > ?)",
                [dev["id"], today, today])
            stay_from = current[0]["valid_from"] if current else min(since, today)
            recorded_from = stay_from
            if current and not self.catalog._rows(
                    "SELECT 1 FROM memberships WHERE developer_id = ? AND valid_from < ?",
                    [dev["id"], stay_from]):
                # Their first stay: it began with their first request if that came earlier
                # (usage imported, or a ledger older than memberships).
                first = self.catalog._rows("SELECT min(day) AS day FROM usage_daily WHERE "
                                           "developer_id = ?", [dev["id"]])[0]["day"]
                stay_from = min(stay_from, first or stay_from)
            if since < stay_from:
                raise CatalogError(f"{dev['name']} has been in their team since {stay_from}: "
                                   "a move cannot start before that")
            result = {"developer_id": dev["id"], "from_team_id": dev["team_id"],
                      "team_id": new["id"], "since": since, "scheduled": since > today,
                      "cancelled": False}
            moved: dict[str, dict[str, int]] = {}
            conn.execute("BEGIN")
            try:
                conn.execute("UPDATE memberships SET valid_from = ? WHERE developer_id = ? "
                             "AND valid_from = ?", [stay_from, dev["id"], recorded_from])
                # A scheduled move is replaced (or, back to the current team, cancelled).
                conn.execute("DELETE FROM memberships WHERE developer_id = ? AND "
                             "valid_from > ?", [dev["id"], today])
                conn.execute("UPDATE memberships SET valid_to = NULL WHERE developer_id = ? "
                             "AND valid_from = ?", [dev["id"], stay_from])
                if new["id"] == dev["team_id"]:
                    action = "developer.move.cancel"
                    result.update(since=pending[0]["valid_from"], scheduled=False,
                                  team_id=pending[0]["team_id"], cancelled=True)
                else:
                    action = "developer.move"
                    if since == stay_from:  # a correction of the current stay from its start
                        conn.execute("DELETE FROM memberships WHERE developer_id = ? AND "
                                     "valid_from = ?", [dev["id"], since])
                    else:
                        conn.execute("UPDATE memberships SET valid_to = ? WHERE "
                                     "developer_id = ? AND valid_to IS NULL", [since, dev["id"]])
                    conn.execute("INSERT INTO memberships VALUES (?, ?, ?, NULL)",
                                 [dev["id"], new["id"], since])
                    if since <= today:
                        self._reattribute(dev["id"], new["id"], since)
                        moved = self._moved_usage(dev["id"], since)
                self.catalog._audit(actor, action, dev["id"],
                                    {"team_id": dev["team_id"], "since": stay_from}, result)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return {**result, "moved": moved}

    def _reattribute(self, dev_id: str, team_id: str, since: date) -> None:
        """The developer's team from `since` on: theirs now, and in the ledger's rows."""
        conn = self.catalog.conn
        conn.execute("UPDATE developers SET team_id = ? WHERE id = ?", [team_id, dev_id])
        conn.execute("UPDATE requests SET team_id = ? WHERE developer_id = ? AND ts >= ?",
                     [team_id, dev_id, day_start(since).replace(tzinfo=None)])
        for table in _DAILY_TABLES:
            conn.execute(f"UPDATE {table} SET team_id = ? WHERE developer_id = ? AND "
                         "day >= ?", [team_id, dev_id, since])

    def start_due_moves(self, today: date | None = None) -> int:
        """Start the scheduled moves whose day has come: each developer's team becomes the
        one of their stay that covers today. Returns how many moved (then publish)."""
        today = today or _today()
        with self.catalog.lock:
            due = self.catalog._rows(
                "SELECT d.id, d.team_id AS old, m.team_id AS new, m.valid_from FROM "
                "developers d JOIN memberships m ON m.developer_id = d.id AND m.valid_from <= ? "
                "AND (m.valid_to IS NULL OR m.valid_to > ?) WHERE d.team_id <> m.team_id",
                [today, today])
            for row in due:
                self.catalog.conn.execute("UPDATE developers SET team_id = ? WHERE id = ?",
                                          [row["new"], row["id"]])
                self.catalog._audit("scheduler", "developer.move.start", row["id"],
                                    {"team_id": row["old"]},
                                    {"team_id": row["new"], "since": row["valid_from"]})
        return len(due)

    def _moved_usage(self, dev_id: str, since: date) -> dict[str, dict[str, int]]:
        """Per period: what the developer's usage from `since` added to the team counter of
        the current period (tokens only for daily counters, as settlement counts them)."""
        now = datetime.now(UTC)
        out: dict[str, dict[str, int]] = {}
        for period in PERIODS:
            first = max(since, start_day(period, now))
            cols = ", ".join(f"CAST(coalesce(sum({c}), 0) AS BIGINT)"
                             for c in ("cost_micros", *TOKEN_COUNTERS.values()))
            row = self.catalog.conn.execute(
                f"SELECT {cols} FROM usage_daily WHERE developer_id = ? AND day >= ?",
                [dev_id, first]).fetchone() or ()
            sums = dict(zip((SPENT, *TOKEN_COUNTERS), (int(v) for v in row), strict=True))
            if period != "daily":
                sums = {SPENT: sums[SPENT]}
            if any(sums.values()):
                out[period] = sums
        return out

    # -- deleting -----------------------------------------------------------------------------

    def delete_developer(self, developer: str, actor: str = "cli") -> dict[str, Any]:
        """Erase a developer who never made a request; archive one who did (disabled, keys
        revoked, history and caps kept). Returns the row with `outcome`."""
        with self.catalog.lock:
            dev = self._developer(developer)
            used = self.catalog._rows(
                "SELECT 1 FROM usage_daily WHERE developer_id = ? UNION ALL SELECT 1 FROM "
                "requests WHERE developer_id = ? LIMIT 1", [dev["id"], dev["id"]])
            conn = self.catalog.conn
            if used:
                now = _now()
                conn.execute("UPDATE api_keys SET revoked_at = ?, revoked_by = ? WHERE "
                             "developer_id = ? AND revoked_at IS NULL", [now, actor, dev["id"]])
                conn.execute("UPDATE developers SET disabled = true, archived_at = ? "
                             "WHERE id = ?", [now, dev["id"]])
                after: dict[str, Any] | None = self._developer(dev["id"])
                outcome = "archived"
            else:
                conn.execute("DELETE FROM api_keys WHERE developer_id = ?", [dev["id"]])
                conn.execute("DELETE FROM memberships WHERE developer_id = ?", [dev["id"]])
                conn.execute("DELETE FROM budgets WHERE scope = 'developer' AND scope_id = ?",
                             [dev["id"]])
                conn.execute("DELETE FROM rate_limits WHERE scope = 'developer' AND "
                             "scope_id = ?", [dev["id"]])
                conn.execute("DELETE FROM developers WHERE id = ?", [dev["id"]])
                after, outcome = None, "deleted"
            self.catalog._audit(actor, f"developer.{'archive' if used else 'delete'}",
                                dev["id"], dev, after)
        return {**(after or dev), "outcome": outcome}

    def delete_team(self, team: str, actor: str = "cli") -> dict[str, Any]:
        """Refuse a team with current members; archive one with history; erase the rest."""
        with self.catalog.lock:
            row = self._team(team)
            members = self.catalog._rows(
                "SELECT count(*) AS n FROM developers WHERE team_id = ? AND archived_at IS NULL",
                [row["id"]])[0]["n"]
            if members:
                raise CatalogError(f"team {row['name']} has {members} member"
                                   f"{'s' if members != 1 else ''}: move or delete them first")
            history = self.catalog._rows(
                "SELECT 1 FROM memberships WHERE team_id = ? UNION ALL SELECT 1 FROM "
                "usage_daily WHERE team_id = ? LIMIT 1", [row["id"], row["id"]])
            conn = self.catalog.conn
            if history:
                conn.execute("UPDATE teams SET archived_at = coalesce(archived_at, ?) "
                             "WHERE id = ?", [_now(), row["id"]])
                after: dict[str, Any] | None = self._team(row["id"])
            else:
                conn.execute("DELETE FROM budgets WHERE scope IN ('team', 'team_member') AND "
                             "scope_id = ?", [row["id"]])
                conn.execute("DELETE FROM rate_limits WHERE scope = 'team' AND scope_id = ?",
                             [row["id"]])
                for table in ("managed_settings", "allowed_models"):
                    conn.execute(f"DELETE FROM {table} WHERE scope = 'team' AND scope_id = ?",
                                 [row["id"]])
                conn.execute("DELETE FROM teams WHERE id = ?", [row["id"]])
                after = None
            self.catalog._audit(actor, f"team.{'archive' if history else 'delete'}",
                                row["id"], row, after)
        return {**(after or row), "outcome": "archived" if history else "deleted"}


async def move_counters(redis: Any, keyspace: KeySpace, move: dict[str, Any],
                        now: datetime | None = None) -> None:
    """Pass the moved usage (Lifecycle.move's `moved`) from the old team's live counters to
    the new team's, so a back-dated move is seen by the team caps at once. Requests in flight
    during the move settle on the team they were admitted under (bounded by what is in
    flight); the ledger attributes them by membership all the same (ledger/rollup.py)."""
    now = now or datetime.now(UTC)
    async with redis.pipeline(transaction=True) as pipe:
        for period, sums in move["moved"].items():
            for team_id, sign in ((move["from_team_id"], -1), (move["team_id"], 1)):
                key = keyspace.counter("team", team_id, period, now)
                for name, value in sums.items():
                    pipe.hincrby(key, name, sign * value)
                pipe.expire(key, COUNTER_TTL[period])
        await pipe.execute()
