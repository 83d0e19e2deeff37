"""Claude Code's usage-limit headers and /api/oauth/usage document, from hand-computed tables
(ledger/notices.py). Instants: NOW is Saturday 2026-11-28 12:00 UTC, so a daily cap resets at
2026-11-29 00:00 (1795910400), a weekly one on Monday 2026-11-30 (1795996800) and a monthly
one on 2026-12-01 (1796083200)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ledger import notices
from ledger.policy import Cap
from ledger.status import Standing

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
DAY, WEEK, MONTH = "1795910400", "1795996800", "1796083200"
U = "anthropic-ratelimit-unified-"
THRESHOLDS = (75, 95)


def cap(scope: str = "developer", period: str = "monthly", amount: int = 10_000) -> Cap:
    return Cap("b", scope, "id", "Ada", period, amount, "estimate")


def allowed(status: str, utilization: str, reset: str) -> dict[str, str]:
    return {U + "status": status, U + "representative-claim": "overage",
            U + "overage-status": status, U + "overage-utilization": utilization,
            U + "reset": reset, U + "overage-reset": reset}


@pytest.mark.parametrize(("standing", "expected"), [
    # 1,000 of 10,000 µ$: 10 %, no threshold passed
    (Standing(cap(), 1_000), allowed("allowed", "0.10", MONTH)),
    # exactly 75 %: the first notice
    (Standing(cap(), 7_500), {**allowed("allowed_warning", "0.75", MONTH),
                              U + "overage-surpassed-threshold": "0.75"}),
    # 74.99 %: not yet (floored, never rounded up past a threshold)
    (Standing(cap(), 7_499), allowed("allowed", "0.74", MONTH)),
    # 96 %: the second notice
    (Standing(cap(), 9_600), {**allowed("allowed_warning", "0.96", MONTH),
                              U + "overage-surpassed-threshold": "0.95"}),
    # the whole cap, still let through: utilization stays below 1 (1 means blocked)
    (Standing(cap(), 10_000), {**allowed("allowed_warning", "0.99", MONTH),
                               U + "overage-surpassed-threshold": "0.95"}),
    # a team pool, daily, 1,700,000 of 2,000,000 µ$: 85 %, the group's budget
    (Standing(cap("team", "daily", 2_000_000), 1_700_000),
     {**allowed("allowed_warning", "0.85", DAY), U + "overage-surpassed-threshold": "0.75",
      U + "overage-scope": "group_pool"}),
    # the org's weekly cap, nothing spent
    (Standing(cap("org", "weekly", 100), 0),
     {**allowed("allowed", "0.00", WEEK), U + "overage-scope": "group_pool"}),
    # a team's per-member cap is the member's own: not a pool
    (Standing(cap("team_member", "daily", 1_000), 500), allowed("allowed", "0.50", DAY)),
])
def test_the_headers_of_an_answer(standing: Standing, expected: dict[str, str]) -> None:
    assert notices.headers(standing, NOW, THRESHOLDS) == expected


@pytest.mark.parametrize(("standings", "chosen"), [
    ([Standing(cap("developer", "daily", 10_000), 5_000),
      Standing(cap("team", "monthly", 100_000), 80_000)], 1),  # 50 % < 80 %
    ([Standing(cap("developer", "monthly", 10_000), 5_000),
      Standing(cap("team", "daily", 100_000), 50_000)], 0),  # tie: the monthly resets last
    ([Standing(cap("developer", "weekly", 3), 1),
      Standing(cap("developer", "daily", 1_000_000), 333_334)], 1),  # 33.33 % < 33.3334 %
    # both blocked (150 % and 100 %): not the more overspent, the one that resets last
    ([Standing(cap("developer", "daily", 10_000), 15_000),
      Standing(cap("team", "weekly", 100_000), 100_000)], 1),
    # a $0 cap blocks too: the month resets after the overspent day
    ([Standing(cap("developer", "daily", 10_000), 12_000),
      Standing(cap("org", "monthly", 0), 0)], 1),
])
def test_the_fullest_cap_is_described(standings: list[Standing], chosen: int) -> None:
    assert notices.fullest(standings, NOW) is standings[chosen]
    assert notices.fullest([], NOW) is None


def test_the_429_of_a_blocked_developer() -> None:
    resets = datetime(2026, 11, 29, tzinfo=UTC)
    assert notices.blocked_headers(cap(period="daily"), resets, 43_200) == {
        "retry-after": "43200", "x-should-retry": "false", U + "status": "rejected",
        U + "reset": DAY, U + "overage-reset": DAY, U + "overage-utilization": "1",
        U + "overage-surpassed-threshold": "1", U + "overage-period": "daily",
        U + "overage-disabled-reason": "org_spend_cap_reached"}
    pool = notices.blocked_headers(cap("team", "monthly"), datetime(2026, 12, 1, tzinfo=UTC), 1)
    assert pool[U + "overage-scope"] == "group_pool" and pool[U + "overage-period"] == "monthly"


def test_usage_without_a_cap_is_the_spend_of_this_day_week_and_month() -> None:
    # µ$ to cents, half a cent up: 12,345,678 µ$ = 1,234.5678 ¢ → 1,235; 4,999 µ$ → 0
    spend = {"daily": 12_345_678, "weekly": 50_000_000, "monthly": 4_999}
    assert notices.usage_document([], spend, NOW, THRESHOLDS) == {"extra_usage": {
        "is_enabled": True, "monthly_limit": None, "used_credits": 0, "utilization": None,
        "currency": "USD",
        "daily": {"limit": None, "used_credits": 1235, "utilization": None},
        "weekly": {"limit": None, "used_credits": 5000, "utilization": None}},
        "limits": []}


def test_usage_with_caps_names_each_and_shows_the_fullest_in_dollars() -> None:
    monthly = Standing(cap("developer", "monthly", 500_000_000), 271_400_000)  # $271.40/$500
    daily = Standing(cap("team", "daily", 10_000_000), 9_700_000)  # $9.70 of $10: 97 %
    weekly = Standing(cap("org", "weekly", 1_000_000), 800_000)  # 80 %
    doc = notices.usage_document([monthly, daily, weekly], {}, NOW, THRESHOLDS)
    assert doc == {
        "extra_usage": {"is_enabled": True, "monthly_limit": 1000, "used_credits": 970,
                        "utilization": 97, "currency": "USD"},
        "limits": [
            {"kind": "spend", "group": "monthly", "percent": 54,
             "resets_at": "2026-12-01T00:00:00.000Z", "severity": "normal", "is_active": False},
            {"kind": "spend", "group": "daily", "percent": 97,
             "resets_at": "2026-11-29T00:00:00.000Z", "severity": "critical", "is_active": True},
            {"kind": "spend", "group": "weekly", "percent": 80,
             "resets_at": "2026-11-30T00:00:00.000Z", "severity": "warning",
             "is_active": False}]}
    # the dollars belong to the cap the headers describe, with the same reset instant
    shown = notices.headers(daily, NOW, THRESHOLDS)
    assert datetime.fromisoformat(doc["limits"][1]["resets_at"]).timestamp() == int(
        shown[U + "overage-reset"])


def test_usage_over_the_cap_is_above_100_percent() -> None:
    over = Standing(cap(amount=1_000_000), 1_250_000)
    doc = notices.usage_document([over], {}, NOW, THRESHOLDS)
    assert doc["extra_usage"]["utilization"] == 125
    assert doc["limits"][0]["percent"] == 125 and doc["limits"][0]["severity"] == "critical"


def test_usage_of_a_zero_cap_is_full_and_critical_whatever_was_spent() -> None:
    """Admission refuses at a $0 cap (status.standing_of), nothing spent included: it reads
    100 %, critical, and is the cap described, not "0 %" beside a fuller-looking one."""
    for spent in (0, 9_000):
        zero, half = Standing(cap("developer", "daily", 0), spent), Standing(cap(), 5_000)
        doc = notices.usage_document([half, zero], {}, NOW, THRESHOLDS)
        assert doc["extra_usage"]["utilization"] == 100
        assert [(r["percent"], r["severity"], r["is_active"]) for r in doc["limits"]] == [
            (50, "normal", False), (100, "critical", True)]
