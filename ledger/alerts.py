"""Alerts: budget events told to people through apprise (Slack, Teams, email, webhooks…).

An event is sent once per period and scope: its dedupe key is claimed in Redis with SET NX and
a TTL to the end of the period, so two admin processes, or one restarted, never send it twice.
Each destination is tried a few times with back-off, and every outcome is a row in alert_log.
Destination URLs are secrets: only `mask` of one is ever shown, and none is logged.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import apprise
import orjson
from redis.exceptions import RedisError

from ledger import alert_rules, caps, forecasts, ops_counts
from ledger.catalog import Catalog, CatalogError, NotFound
from ledger.keyspace import KeySpace
from ledger.money import format_usd
from ledger.periods import clock, local_day, period_end, period_start
from ledger.settlement import SPENT

log = logging.getLogger("meterd.alerts")

EVENTS = {
    "threshold": "Soft threshold crossed",
    "blocked": "Cap reached: requests are refused",
    "forecast": "Forecast to pass the cap this period",
    "unusual": "Unusual spend: a developer's day far above their usual",
    "upstream": "Upstream errors",
    "fallback": "Upstream fallbacks: a provider failing over to the next",
    "redis": "Redis outage",
    "replay": "Spool or journal replay after a Redis outage or data loss",
    "increase": "Increase requested",
    "developer": "Email the developer concerned (email destinations)",
    "digest_daily": "Daily digest for finance",
    "digest_weekly": "Weekly digest for finance",
    "test": "Test message",
}
Db = Callable[..., Awaitable[Any]]


def mask(url: str) -> str:
    """What may be shown of a destination URL: its scheme and last four characters."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://…{rest[-4:]}" if len(rest) > 8 else f"{scheme}://…"


def check_url(url: str) -> str:
    """An URL apprise can send to, else CatalogError (without echoing the URL)."""
    url = url.strip()
    if not url or apprise.Apprise.instantiate(url) is None:
        raise CatalogError("that is not a notification URL apprise knows "
                           "(e.g. slack://…, msteams://…, mailtos://…, json://…)")
    return url


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Destinations:
    """Alert destinations and the delivery log, on the catalog's DuckDB connection."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def add(self, scope: str, scope_id: str, label: str, url: str, events: Sequence[str],
            actor: str = "cli") -> dict[str, Any]:
        if scope not in ("org", "team"):
            raise CatalogError("an alert destination is for the org or for a team")
        unknown = set(events) - set(EVENTS)
        if unknown or not events:
            raise CatalogError(f"choose events among {', '.join(EVENTS)}")
        url = check_url(url)
        cat = self.catalog
        with cat.lock:
            if scope == "team":
                scope_id = cat.team_id(scope_id)
            dest_id = f"dst_{secrets.token_hex(5)}"
            cat.conn.execute("INSERT INTO alert_destinations VALUES (?, ?, ?, ?, ?, ?, ?)",
                             [dest_id, scope, "" if scope == "org" else scope_id, label, url,
                              orjson.dumps(sorted(set(events))).decode(), _now()])
            shown = self.shown()
            after = next(d for d in shown if d["id"] == dest_id)
            cat._audit(actor, "alert.destination.add", dest_id, None, after)
        return after

    def remove(self, dest_id: str, actor: str = "cli") -> None:
        cat = self.catalog
        with cat.lock:
            before = next((d for d in self.shown() if d["id"] == dest_id), None)
            if before is None:
                raise NotFound(f"no alert destination {dest_id!r}")
            cat.conn.execute("DELETE FROM alert_destinations WHERE id = ?", [dest_id])
            cat._audit(actor, "alert.destination.remove", dest_id, before, None)

    def _all(self) -> list[dict[str, Any]]:
        rows = self.catalog._rows("SELECT * FROM alert_destinations ORDER BY created_at")
        for row in rows:
            row["events"] = orjson.loads(row["events"])
        return rows

    def shown(self) -> list[dict[str, Any]]:
        """Every destination with its URL masked: what pages and the audit may hold."""
        return [{**d, "url": mask(d["url"])} for d in self._all()]

    def secret(self, dest_id: str) -> dict[str, Any]:
        found = next((d for d in self._all() if d["id"] == dest_id), None)
        if found is None:
            raise NotFound(f"no alert destination {dest_id!r}")
        return found

    def for_event(self, event: str, team_id: str | None) -> list[dict[str, Any]]:
        """The destinations that hear `event`: the org's, and the team's when it is about one."""
        return [d for d in self._all() if event in d["events"] and
                (d["scope"] == "org" or (team_id and d["scope_id"] == team_id))]

    def set_thresholds(self, budget_id: str, thresholds: Sequence[int],
                       actor: str = "cli") -> None:
        """A cap's own soft thresholds (1–99 %); none: the org's defaults again."""
        if any(not 0 < t < 100 for t in thresholds):
            raise CatalogError("thresholds are percentages between 1 and 99")
        cat = self.catalog
        with cat.lock:
            if not cat._rows("SELECT id FROM budgets WHERE id = ?", [budget_id]):
                raise NotFound(f"no budget {budget_id!r}")
            before = self.thresholds().get(budget_id)
            cat.conn.execute("DELETE FROM alert_thresholds WHERE budget_id = ?", [budget_id])
            after = sorted(set(thresholds)) or None
            if after:
                cat.conn.execute("INSERT INTO alert_thresholds VALUES (?, ?)",
                                 [budget_id, orjson.dumps(after).decode()])
            cat._audit(actor, "alert.thresholds", budget_id, before, after)

    def thresholds(self) -> dict[str, list[int]]:
        return {r["budget_id"]: orjson.loads(r["thresholds"])
                for r in self.catalog._rows("SELECT * FROM alert_thresholds")}

    def record(self, event: str, dedupe: str, dest_id: str, title: str, status: str,
               attempts: int, why: str) -> None:
        with self.catalog.lock:
            self.catalog.conn.execute(
                "INSERT INTO alert_log VALUES (nextval('alert_log_seq'), ?, ?, ?, ?, ?, ?, ?, ?)",
                [_now(), event, dedupe, dest_id, title, status, attempts, why[:500]])

    def log(self, limit: int = 200) -> list[dict[str, Any]]:
        return self.catalog._rows(
            "SELECT l.*, d.label FROM alert_log l LEFT JOIN alert_destinations d "
            "ON d.id = l.destination_id ORDER BY l.id DESC LIMIT ?", [limit])


async def deliver(url: str, title: str, body: str, attempts: int = 3,
                  backoff: float = 0.5) -> tuple[bool, int, str]:
    """Send one message to one apprise URL, retrying with doubling back-off.
    (sent, attempts made, why it failed: apprise's own words, with the URL masked)."""
    why = ""
    for attempt in range(1, attempts + 1):
        sender = apprise.Apprise()
        sender.add(url)
        with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:
            ok = await sender.async_notify(body=body, title=title)
        if ok:
            return True, attempt, ""
        why = (captured.getvalue().strip().splitlines() or ["apprise reported a failure"])[-1]
        why = why.replace(url, mask(url))
        if attempt < attempts:
            await asyncio.sleep(backoff * 2 ** (attempt - 1))
    return False, attempts, why


@dataclass
class Alerter:
    """Sends events once per dedupe key to the destinations that want them."""

    destinations: Destinations
    db: Db
    redis: Any
    keyspace: KeySpace
    attempts: int = 3
    backoff: float = 0.5

    def _claim_key(self, dedupe: str) -> str:
        return f"{self.keyspace.base}:alert:{dedupe}"

    async def fire(self, event: str, dedupe: str, ttl_seconds: int, title: str, body: str,
                   team_id: str | None = None) -> bool:
        """Send `event` unless its dedupe key was claimed already; True when this call sent."""
        try:
            claimed = await self.redis.set(self._claim_key(dedupe), "1", nx=True,
                                           ex=max(ttl_seconds, 60))
        except (RedisError, OSError) as exc:  # no dedupe without Redis: not sent, not twice
            log.warning("alert %s not sent, Redis is unavailable: %s", event, exc)
            return False
        if not claimed:
            return False
        for dest in await self.db(self.destinations.for_event, event, team_id):
            await self.send(event, dedupe, dest, title, body)
        return True

    async def send(self, event: str, dedupe: str, dest: dict[str, Any], title: str,
                   body: str) -> bool:
        ok, tries, why = await deliver(dest["url"], title, body, self.attempts, self.backoff)
        await self.db(self.destinations.record, event, dedupe, dest["id"], title,
                      "sent" if ok else "failed", tries, why)
        if not ok:
            log.warning("alert %s to destination %s failed after %d attempts", event,
                        dest["id"], tries)
        return ok


async def evaluate_budgets(alerter: Alerter, catalog: Catalog, thresholds: Sequence[int],
                           now: datetime | None = None) -> int:
    """Compare every cap with its live counter: soft thresholds crossed, the cap reached,
    the forecast (ledger.forecasts.project) past the cap. Returns how many events were sent."""
    at = (now or datetime.now(UTC)).astimezone(UTC)
    db = alerter.db
    budgets = await db(catalog.budgets)
    own = await db(alerter.destinations.thresholds)
    names = {t["id"]: t["name"] for t in await db(catalog.teams)}
    members: dict[str, list[str]] = {}
    team_of = {}
    devs = {d["id"]: d for d in await db(catalog.developers)}
    for d in devs.values():
        members.setdefault(d["team_id"], []).append(d["id"])
        team_of[d["id"]] = d["team_id"]
        names[d["id"]] = d["name"]
    rates = await db(forecasts.run_rates, catalog.conn, now=at)
    checks = [(b, c) for b in budgets
              for c in caps.counters(b["scope"], b["scope_id"], members.get(b["scope_id"], []))]
    if not checks:
        return 0
    async with alerter.redis.pipeline(transaction=False) as pipe:
        for b, (scope, scope_id) in checks:
            pipe.hget(alerter.keyspace.counter(scope, scope_id, b["period"], at), SPENT)
        values = await pipe.execute()
    sent = 0
    for (b, (scope, scope_id)), value in zip(checks, values, strict=True):
        amount, spent = int(b["amount_micros"]), int(value or 0)
        if amount <= 0:
            continue
        start, end = period_start(b["period"], at), period_end(b["period"], at)
        ttl = int((end - at).total_seconds()) + 3600
        team = scope_id if scope == "team" else team_of.get(scope_id)
        who = caps.describe(scope, names.get(scope_id, scope_id), capital=True)
        base = f"{b['id']}:{scope}:{scope_id}:{start:%Y%m%d}"
        crossed = [t for t in own.get(b["id"], thresholds) if spent * 100 >= t * amount
                   and t < 100]
        events = []
        if crossed:  # the highest only: a jump from 0 to 96 % is one message, not two
            events.append((f"threshold{max(crossed)}", "threshold",
                           f"{who}: {max(crossed)}% of the {b['period']} cap"))
        # Unheld, to tell how far past the cap it would go.
        projected = forecasts.project(spent, rates.get((scope, scope_id), 0),
                                      int((end - at).total_seconds()), None)[0]
        if spent >= amount:
            events.append(("blocked", "blocked", f"{who}: {b['period']} cap reached"))
        elif projected > amount:
            events.append(("forecast", "forecast",
                           f"{who}: forecast to pass the {b['period']} cap"))
        for tag, event, title in events:
            body = (f"{title}. Spent {format_usd(spent)} of {format_usd(amount)}; forecast "
                    f"{format_usd(projected)} by {clock(end)}.")
            if await alerter.fire(event, f"{base}:{tag}", ttl, title, body, team):
                sent += 1
                if scope == "developer" and scope_id in devs:
                    await notify_developer(catalog, db, devs[scope_id], title, body)
    return sent


async def notify_developer(catalog: Catalog, db: Db, developer: dict[str, Any], title: str,
                           body: str) -> None:
    """Email a developer through the org's email destinations (mailto/mailtos URLs) that
    chose the `developer` event, sent to their address instead of the destination's own."""
    dests = [d for d in await db(Destinations(catalog).for_event, "developer", None)
             if d["url"].startswith(("mailto://", "mailtos://")) and d["scope"] == "org"]
    for dest in dests:
        base, _, query = dest["url"].partition("?")
        kept = "&".join(p for p in query.split("&") if p and not p.startswith("to="))
        url = f"{base}?{kept + '&' if kept else ''}to={developer['email']}"
        ok, tries, why = await deliver(url, title, body, attempts=2)
        await db(Destinations(catalog).record, "developer", f"notify:{developer['id']}",
                 dest["id"], title, "sent" if ok else "failed", tries, why)


async def evaluate_ledger(alerter: Alerter, catalog: Catalog,
                          now: datetime | None = None) -> int:
    """The alerts read from the rollups: unusual spend today, and provider failures this UTC
    hour. Returns how many events were sent."""
    at = (now or datetime.now(UTC)).astimezone(UTC)
    hour = at.replace(minute=0, second=0, microsecond=0, tzinfo=None)

    def read() -> tuple[list[dict[str, Any]], int, dict[str, dict[str, Any]]]:
        with catalog.lock:
            return (alert_rules.unusual_spend(catalog.conn, local_day(at)),
                    alert_rules.upstream_errors(catalog.conn, hour),
                    {d["id"]: d for d in catalog.developers()})
    unusual, errors, devs = await alerter.db(read)
    sent = 0
    ttl = 2 * 86_400
    for row in unusual:
        dev = devs.get(row["developer_id"], {"name": row["developer_id"], "team_id": None})
        title = f"Unusual spend: {dev['name']}"
        body = (f"{dev['name']} spent {format_usd(row['spent_micros'])} today, against a usual "
                f"day of {format_usd(row['median_micros'])} (median of the last "
                f"{alert_rules.HISTORY_DAYS} days).")
        sent += await alerter.fire("unusual", f"unusual:{row['developer_id']}:{at:%Y%m%d}",
                                   ttl, title, body, dev["team_id"])
    if errors >= alert_rules.UPSTREAM_ERRORS:
        title = "The provider is failing requests"
        body = (f"{errors} requests failed upstream (5xx) since {hour:%Y-%m-%d %H:%M} UTC; "
                "see the requests page.")
        sent += await alerter.fire("upstream", f"upstream:{hour:%Y%m%d%H}", 7200, title, body)
    return sent


# The replays a proxy reports (ledger.ops_counts): title and body of their hourly alert.
_REPLAYS = {
    ops_counts.SPOOL: (
        "Spooled usage replayed after a Redis outage",
        "{n} settlement(s) the proxies spooled while Redis was away reached it since {hour}; "
        "the ledger counts them once."),
    ops_counts.JOURNAL: (
        "Redis lost data: the proxies replayed their journals",
        "{n} proxy journal replay(s) since {hour}: Redis came back without settlements it had "
        "taken; the journals gave them back."),
}


async def evaluate_ops(alerter: Alerter, now: datetime | None = None) -> int:
    """The alerts the proxies' reports raise (ledger.ops_counts): a provider failing over to
    the next, once per UTC hour and pair of providers; spooled settlements replayed after a
    Redis outage, and journals replayed after Redis lost data, once per UTC hour each.
    Returns how many events were sent."""
    at = (now or datetime.now(UTC)).astimezone(UTC)
    hour = f"{at:%Y-%m-%d %H}:00 UTC"
    sent = 0
    for name, n in sorted((await ops_counts.read(alerter.redis, alerter.keyspace, at)).items()):
        if name.startswith(ops_counts.FALLBACK):
            provider, _, next_provider = name.removeprefix(ops_counts.FALLBACK).partition(">")
            sent += await alerter.fire(
                "fallback", f"fallback:{at:%Y%m%d%H}:{provider}>{next_provider}", 7200,
                f"Provider {provider} is failing over to {next_provider}",
                f"{n} request(s) that {provider} failed before answering were passed to "
                f"{next_provider} since {hour}.")
        elif n and name in _REPLAYS:
            title, body = _REPLAYS[name]
            sent += await alerter.fire("replay", f"replay:{name}:{at:%Y%m%d%H}", 7200, title,
                                       body.format(n=n, hour=hour))
    return sent


async def send_digest(alerter: Alerter, catalog: Catalog, days: int,
                      now: datetime | None = None) -> bool:
    """Finance's digest of the last `days` whole days of the organization (1: daily, 7: weekly)."""
    at = (now or datetime.now(UTC)).astimezone(UTC)

    def read() -> dict[str, Any]:
        with catalog.lock:
            return alert_rules.digest(catalog.conn, at, days)
    found = await alerter.db(read)
    kind = "daily" if days == 1 else "weekly"
    lines = [f"Spent {format_usd(found['spent_micros'])} (the {days} day(s) before: "
             f"{format_usd(found['before_micros'])}).",
             f"This month so far {format_usd(found['month_micros'])}; forecast "
             f"{format_usd(found['forecast_micros'])}.",
             "Top movers: " + (", ".join(f"{name} {'+' if d >= 0 else '-'}"
                                         f"{format_usd(abs(d))}" for name, d in
                                         found["movers"]) or "none")]
    day = local_day(at)  # once per day of the organization's
    return await alerter.fire(f"digest_{kind}", f"digest:{kind}:{day:%Y%m%d}", 86_400,
                              f"meterd {kind} digest, {day:%Y-%m-%d}", "\n".join(lines))
