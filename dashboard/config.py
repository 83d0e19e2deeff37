"""What the dashboard needs to know about the deployment it shows (read-only at run time)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.pricing import PriceTable
from ledger.redis_client import is_embedded


@dataclass(frozen=True)
class DashboardConfig:
    """Made by `from_settings` only: the defaults are Settings' (meterd/settings.py), not
    restated here."""

    data_dir: Path
    session_secret: str = field(repr=False)  # empty: generated into data_dir
    trusted_proxies: tuple[str, ...]  # whose X-Forwarded-* headers are believed
    proxy_url: str
    upstream_url: str
    upstream_auth: str
    redis_embedded: bool
    redis_outage_policy: str
    thresholds: tuple[int, ...]
    models: tuple[str, ...]
    rollup_interval: float
    retention_days: int
    reservation_ttl: int
    fallback_input_usd: str
    fallback_output_usd: str
    prices: PriceTable = field(repr=False)
    # [providers.NAME] tables (their non-secret keys) and [[routes]], when configured.
    providers: tuple[tuple[str, dict[str, str]], ...]
    routes: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def from_settings(cls, settings: Any) -> DashboardConfig:
        """From meterd's Settings (read by attribute: the dashboard does not import the
        wiring package)."""
        return cls(
            data_dir=Path(settings.data_dir), session_secret=settings.session_secret,
            trusted_proxies=tuple(settings.trusted_proxies),
            proxy_url=settings.proxy_url, upstream_url=settings.upstream_url,
            upstream_auth=settings.upstream_auth, redis_embedded=is_embedded(settings.redis_url),
            redis_outage_policy=settings.redis_outage_policy,
            thresholds=tuple(settings.thresholds), models=tuple(settings.models),
            rollup_interval=settings.rollup_interval, retention_days=settings.retention_days,
            reservation_ttl=settings.reservation_ttl,
            fallback_input_usd=settings.fallback_input_usd,
            fallback_output_usd=settings.fallback_output_usd,
            prices=PriceTable.load(dict(settings.prices), settings.fallback_input_usd,
                                   settings.fallback_output_usd),
            providers=_providers(getattr(settings, "providers", None) or {}),
            routes=tuple((str(r.get("match", "*")), tuple(str(p) for p in r.get("providers", ())))
                         for r in getattr(settings, "routes", None) or () if isinstance(r, dict)),
        )


# What the settings page may show of a provider table (secrets never come from the file, but
# show only what is known to be harmless anyway).
SHOWN_PROVIDER_KEYS = ("kind", "base_url", "region", "project", "profile", "inference_profile",
                       "auth", "multiplier", "models")


def _providers(tables: Any) -> tuple[tuple[str, dict[str, str]], ...]:
    out = []
    for name, table in dict(tables).items():
        if isinstance(table, dict):
            out.append((str(name), {k: ", ".join(map(str, v)) if isinstance(v, list | tuple)
                                    else str(v) for k, v in table.items()
                                    if k in SHOWN_PROVIDER_KEYS}))
    return tuple(out)
