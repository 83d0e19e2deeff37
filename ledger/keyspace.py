"""Names of every Redis key meterd uses, in one place.

All keys share one hash tag (`{prefix}`), so the scripts that touch several of them together
also work on Redis Cluster.
"""

from __future__ import annotations

from datetime import datetime

from ledger.model_caps import set_key
from ledger.periods import period_tag

SCOPE_TAG = {"developer": "dev", "team": "team", "org": "org"}


class KeySpace:
    def __init__(self, prefix: str = "meterd") -> None:
        self.base = "{" + prefix + "}"
        self.events = f"{self.base}:events"
        self.alerts = f"{self.base}:alerts"
        self.policy_version = f"{self.base}:pol:version"
        # Set once the counters of the current periods are known to be complete (after a
        # rebuild from DuckDB if Redis came back empty); admission waits for it.
        self.ready = f"{self.base}:ready"
        # Written (SET NX) by the first process that finds it missing: when it changes, Redis
        # came back empty and the proxies replay their journals (ledger.journal).
        self.epoch = f"{self.base}:epoch"
        # Epoch ms: every settlement that reached Redis before it is in DuckDB (ledger.rollup).
        self.rolled_until = f"{self.base}:rollup:rolled_until"
        # The last stream entry not in the counters, while they wait for a rebuild after Redis
        # was found behind the ledger (ledger.rewind); absent: the counters hold every entry.
        self.counted_after = f"{self.base}:rebuild:counted_after"
        # Bumped by the dashboard: every proxy reloads its providers and routes when it moves.
        self.providers_reload = f"{self.base}:providers:reload"
        # The managed-settings checksum each machine last sent (CLAUDE_CODE_GATEWAY_HINT_HEADERS):
        # "developer_id key_id" -> {"checksum", "at", "session_id"} (proxy.managed).
        self.managed_seen = f"{self.base}:managed:seen"
        self.policy_hashes = {
            name: f"{self.base}:pol:{name}"
            for name in ("keys", "devs", "teams", "budgets", "limits", "tokens",
                         "managed", "models", "grants")
        }

    def counter(self, scope: str, scope_id: str, period: str, now: datetime) -> str:
        """Spend and token counter of one scope (developer, team, org) in one period."""
        return f"{self.base}:spend:{SCOPE_TAG[scope]}:{scope_id}:{period_tag(period, now)}"

    def model_counter(self, scope: str, scope_id: str, period: str, now: datetime,
                      models: tuple[str, ...]) -> str:
        """Spend counter of one scope in one period, counting only some models (a per-model
        cap's: ledger/model_caps.py), named for the model set."""
        return f"{self.counter(scope, scope_id, period, now)}:x{set_key(models)}"

    @staticmethod
    def holds(counter: str) -> str:
        """Reservations of in-flight requests against a counter."""
        return counter + ":h"

    def window(self, scope: str, scope_id: str, minute: int) -> str:
        """Rate-limit window of one scope for one UTC minute (epoch minutes)."""
        return f"{self.base}:rl:{SCOPE_TAG[scope]}:{scope_id}:{minute}"

    def in_flight(self, scope: str, scope_id: str) -> str:
        return f"{self.base}:conc:{SCOPE_TAG[scope]}:{scope_id}"

    def settled(self, minute: int) -> str:
        """The ids of the requests made in one UTC minute (epoch minutes) that are settled,
        against settling one twice. A field per request in a set per minute takes about half
        the memory of a key per request, and each set stays small enough to expire at once."""
        return f"{self.base}:settled:{minute}"
