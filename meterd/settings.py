"""Settings: typed fields with their defaults, a table of their help; read from TOML, `MTD_*`
env vars and flags.

Secrets (provider key, session secret) come only from the environment or from files named in
the environment; a config file that holds one is rejected, so keys never land in version control.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from dashboard.oidc import secure_url
from ledger import periods
from ledger.redis_client import check_url as check_redis_url

MIN_SESSION_SECRET = 32  # bytes: an HMAC-SHA256 key as long as its output


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Setting:
    """A setting's name and help; its type and default are the Settings field's."""

    name: str
    help: str
    secret: bool = False

    @property
    def default(self) -> Any:
        spec = _FIELDS[self.name]
        factory = spec.default_factory  # a mutable default (a table) has one
        return factory() if callable(factory) else spec.default


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "Address the proxy and dashboard listen on."),
    Setting("proxy_port", "Port of the proxy (what ANTHROPIC_BASE_URL points at)."),
    Setting("admin_port", "Port of `meterd admin` (`serve` puts the dashboard on the "
            "proxy port under /admin)."),
    Setting("public_url", "Proxy URL as developers reach it (for the rollout page); "
            "default http://HOST:PROXY_PORT."),
    Setting("metrics_host", "Address of the metrics listener."),
    Setting("metrics_port", "Port of a listener that serves only /metrics, off the proxy "
            "port; 0: none."),
    Setting("metrics_token", "Bearer token a scrape of /metrics must present (env "
            "MTD_METRICS_TOKEN or MTD_METRICS_TOKEN_FILE only); empty: the proxy port does not "
            "serve /metrics.", secret=True),
    Setting("data_dir", "Directory for the DuckDB file, the spool and the socket."),
    Setting("redis_url", "Redis URL: redis://, rediss://, redis+sentinel://HOST:PORT,.../MASTER "
            "(Sentinels), redis+cluster://HOST:PORT,... (Cluster); empty runs an embedded "
            "in-process Redis (one process)."),
    Setting("redis_prefix", "Prefix (a Redis Cluster hash tag) of every Redis key."),
    Setting("upstream_url", "Base URL of the provider API."),
    Setting("upstream_auth", "How the provider key is sent: x-api-key or bearer."),
    Setting("upstream_key", "Provider credential (env MTD_UPSTREAM_KEY or "
            "MTD_UPSTREAM_KEY_FILE only).", secret=True),
    Setting("upstream_connect_timeout", "Seconds to connect to the provider (then 502)."),
    Setting("upstream_read_timeout", "Seconds without a byte from the provider "
            "before 504."),
    Setting("max_body_bytes", "Largest request body accepted (413 above)."),
    Setting("models", "Model ids listed by GET /v1/models."),
    Setting("redis_outage_policy", "Admission when Redis is unreachable: "
            "fail_open or fail_closed."),
    Setting("reservation_ttl", "Seconds before an unsettled reservation expires."),
    Setting("estimate_output_tokens", "Output tokens reserved per request by default-mode "
            "budgets and output-token rate limits (capped by max_tokens)."),
    Setting("thresholds", "Soft budget thresholds in percent."),
    Setting("timezone", "The organization's IANA time zone (e.g. America/New_York): budget "
            "periods, report days and dashboard times follow it, DST-correct; days rolled up "
            "before a change keep the old zone's boundaries."),
    Setting("fallback_input_usd", "USD per million input tokens for unknown models."),
    Setting("fallback_output_usd", "USD per million output tokens for unknown models."),
    Setting("prices", "Price rows that override or extend the shipped table (TOML only)."),
    Setting("providers", "Provider tables [providers.NAME] (kind anthropic, bedrock or "
            "vertex); none: one upstream from upstream_url (TOML only; reloaded on SIGHUP)."),
    Setting("routes", "Routes [[routes]] match = model pattern, providers = names in "
            "fallback order (TOML only; reloaded on SIGHUP)."),
    Setting("policy_refresh", "Seconds between checks for changed keys, budgets, limits."),
    Setting("shutdown_grace", "Seconds open streams may take to finish on shutdown."),
    Setting("rollup_interval", "Seconds between rollups of usage events into DuckDB."),
    Setting("retention_days", "Days raw request rows are kept (daily rollups are kept)."),
    Setting("telemetry_max_bytes", "Largest OTLP telemetry body accepted on /v1/metrics, "
            "/v1/logs, /v1/traces (413 above)."),
    Setting("telemetry_per_minute", "OTLP exports a developer may send per minute; more are "
            "dropped (answered 200 with partial_success)."),
    Setting("telemetry_retention_days", "Days telemetry rows are kept in DuckDB."),
    Setting("session_secret", "Dashboard cookie signing secret, at least 32 bytes (env or "
            "file only; generated into the data dir when empty).", secret=True),
    Setting("trusted_proxies", "Addresses or CIDR networks of reverse proxies whose "
            "X-Forwarded-For and X-Forwarded-Proto the dashboard believes; empty: none."),
    Setting("tls_cert_file", "PEM file of the https certificate (the leaf, then its "
            "chain); with tls_key_file, serve, proxy and admin serve https. Empty: http."),
    Setting("tls_key_file", "PEM file of the certificate's private key (unencrypted); set "
            "with tls_cert_file or not at all."),
    Setting("log_level", "Log level: debug, info, warning, error."),
    Setting("oidc_issuer", "Issuer URL of the organization's OpenID Connect provider "
            "(https); empty: no single sign-on."),
    Setting("oidc_client_id", "Client id meterd is registered under at the provider."),
    Setting("oidc_client_secret", "Client secret at the provider (env or file only).",
            secret=True),
    Setting("oidc_allowed_domains", "Email domains that may sign in (empty: any the "
            "provider vouches for)."),
    Setting("oidc_default_team", "Team of a developer no group rule maps (empty: refuse "
            "them)."),
    Setting("oidc_allow_loopback", "Allow an http issuer on a loopback address "
            "(development and tests)."),
    Setting("oidc_groups_claim", "ID token or userinfo claim that lists the "
            "user's groups."),
    Setting("oidc_scopes", "Scopes asked "
            "of the provider (add groups where the provider needs it)."),
    Setting("oidc_group_rules", "Rules [[oidc_group_rules]] group = IdP group, team = "
            "team name, role = admin, finance or team_lead; first match wins (TOML only)."),
    Setting("local_accounts", "Dashboard sign-in with a local account's password "
            "(break-glass once single sign-on works); false turns it off."),
    Setting("access_token_ttl", "Seconds a signed-in developer's bearer token lives "
            "(refresh renews it)."),
    Setting("refresh_token_ttl", "Seconds a sign-in may be refreshed without "
            "signing in again."),
    Setting("billing_group_tag", "Request tag that names the project a request is for: "
            "signed-in developers' tokens carry it, so Claude Code sends its "
            "attributionProject setting under it; reports by project read it. Empty: none."),
)
_BY_NAME = {s.name: s for s in SETTINGS}
_TOML_ONLY = frozenset({"prices", "providers", "routes", "oidc_group_rules"})
_CHOICES = {
    "upstream_auth": ("x-api-key", "bearer"),
    "redis_outage_policy": ("fail_open", "fail_closed"),
    "log_level": ("debug", "info", "warning", "error"),
}


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    proxy_port: int = 4000
    admin_port: int = 4001
    public_url: str = ""
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    metrics_token: str = field(default="", repr=False)
    data_dir: str = "meterd-data"
    redis_url: str = ""
    redis_prefix: str = "meterd"
    upstream_url: str = "https://api.anthropic.com"
    upstream_auth: str = "x-api-key"
    upstream_key: str = field(default="", repr=False)
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 600.0
    max_body_bytes: int = 32_000_000
    models: tuple[str, ...] = ("claude-opus-4-8", "claude-sonnet-4-6", "claude-haiku-4-5")
    redis_outage_policy: str = "fail_open"
    reservation_ttl: int = 900
    estimate_output_tokens: int = 4096
    thresholds: tuple[int, ...] = (75, 95)
    timezone: str = "UTC"
    fallback_input_usd: str = "5"
    fallback_output_usd: str = "25"
    prices: Mapping[str, Any] = field(default_factory=dict)
    providers: Mapping[str, Any] = field(default_factory=dict)
    routes: tuple[Mapping[str, Any], ...] = ()
    policy_refresh: float = 0.25
    shutdown_grace: float = 30.0
    rollup_interval: float = 5.0
    retention_days: int = 400
    telemetry_max_bytes: int = 1_048_576
    telemetry_per_minute: int = 120
    telemetry_retention_days: int = 90
    session_secret: str = field(default="", repr=False)
    trusted_proxies: tuple[str, ...] = ()
    tls_cert_file: str = ""
    tls_key_file: str = ""
    log_level: str = "info"
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = field(default="", repr=False)
    oidc_allowed_domains: tuple[str, ...] = ()
    oidc_default_team: str = ""
    oidc_allow_loopback: bool = False
    oidc_groups_claim: str = "groups"
    oidc_scopes: tuple[str, ...] = ("openid", "email", "profile", "offline_access")
    oidc_group_rules: tuple[Mapping[str, Any], ...] = ()
    local_accounts: bool = True
    access_token_ttl: int = 900
    refresh_token_ttl: int = 30 * 86400
    billing_group_tag: str = "project"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def proxy_url(self) -> str:
        scheme = "https" if self.tls_cert_file else "http"
        return self.public_url or f"{scheme}://{self.host}:{self.proxy_port}"

    def replace(self, **changes: Any) -> Settings:
        return _validated(dataclasses.replace(self, **changes))

    @classmethod
    def load(
        cls,
        config_file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        **flags: Any,
    ) -> Settings:
        """Defaults, then the TOML file, then `MTD_*` variables, then flags (None = unset)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        path = config_file or environ.get("MTD_CONFIG")
        if path:
            values.update(_from_file(Path(path)))
        values.update(_from_env(environ))
        values.update({k: v for k, v in flags.items() if v is not None})
        return _validated(cls(**{k: _coerce(k, v) for k, v in values.items()}))


# The one statement of each setting's type and default.
_FIELDS = {spec.name: spec for spec in dataclasses.fields(Settings)}


def _from_file(path: Path) -> dict[str, Any]:
    try:
        # Decimals, not floats: prices in the file must stay exact.
        data = tomllib.loads(path.read_text(), parse_float=Decimal)
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path}: {exc}") from None
    for name in data:
        if name not in _BY_NAME:
            raise SettingsError(f"config file {path}: unknown setting {name!r}")
        if _BY_NAME[name].secret:
            raise SettingsError(
                f"config file {path}: {name} is a secret; set MTD_{name.upper()} or "
                f"MTD_{name.upper()}_FILE in the environment instead"
            )
    return data


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for s in SETTINGS:
        var = f"MTD_{s.name.upper()}"
        if s.secret and f"{var}_FILE" in environ:
            file = Path(environ[f"{var}_FILE"])
            try:
                values[s.name] = file.read_text().strip()
            except OSError as exc:
                raise SettingsError(f"{var}_FILE: cannot read {file}: {exc.strerror}") from None
        if var in environ and s.name not in _TOML_ONLY:
            values[s.name] = environ[var]
    if "REDIS_URL" in environ and "redis_url" not in values:
        values["redis_url"] = environ["REDIS_URL"]
    return values


def _coerce(name: str, value: Any) -> Any:
    """Turn a TOML, env or flag value into the setting's type, naming the setting on failure."""
    if name not in _BY_NAME:
        raise SettingsError(f"unknown setting {name!r}")
    default = _BY_NAME[name].default
    try:
        if isinstance(default, bool):
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            if isinstance(value, list | tuple) and any(isinstance(i, dict) for i in value):
                return tuple(value)  # an array of tables ([[routes]]) stays tables
            items = value.split(",") if isinstance(value, str) else list(value)
            kind = type(default[0]) if default else str
            return tuple(kind(str(i).strip()) for i in items if str(i).strip())
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise TypeError("expected a table")
            return value
        return str(value)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"setting {name}: {value!r} is not valid ({exc})") from None


def _validated(settings: Settings) -> Settings:
    for name, allowed in _CHOICES.items():
        if getattr(settings, name) not in allowed:
            raise SettingsError(
                f"setting {name}: {getattr(settings, name)!r} is not one of {', '.join(allowed)}"
            )
    for name in ("proxy_port", "admin_port", "metrics_port"):
        if not 0 <= getattr(settings, name) < 65536:
            raise SettingsError(f"setting {name}: {getattr(settings, name)} is not a port")
    if settings.max_body_bytes <= 0:
        raise SettingsError("setting max_body_bytes: must be positive")
    if not settings.upstream_url.startswith(("http://", "https://")):
        raise SettingsError(
            f"setting upstream_url: {settings.upstream_url!r} is not an http(s) URL")
    try:
        check_redis_url(settings.redis_url)
    except ValueError as exc:
        raise SettingsError(f"setting redis_url: {exc}") from None
    _validate_oidc(settings)
    try:
        periods.check_zone(settings.timezone)
    except ValueError as exc:
        raise SettingsError(f"setting timezone: {exc}") from None
    if 0 < len(settings.session_secret.encode()) < MIN_SESSION_SECRET:
        # Anyone who guesses it can sign cookies for any account; never echo it.
        raise SettingsError(
            f"setting session_secret (MTD_SESSION_SECRET or MTD_SESSION_SECRET_FILE): "
            f"{len(settings.session_secret.encode())} bytes is too short; use at least "
            f"{MIN_SESSION_SECRET} random bytes, e.g. the output of "
            "`python3 -c 'import secrets; print(secrets.token_hex(32))'`, or leave it empty "
            "to have one generated into the data directory")
    for proxy in settings.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise SettingsError(f"setting trusted_proxies: {proxy!r} is not an address or "
                                "network like 10.0.0.5 or 10.0.0.0/8") from None
    return settings


GROUP_RULE_ROLES = ("admin", "finance", "team_lead")


def _validate_oidc(settings: Settings) -> None:
    if settings.oidc_issuer:
        check_issuer(settings.oidc_issuer, settings.oidc_allow_loopback)
        if not settings.oidc_client_id:
            raise SettingsError("setting oidc_client_id: needed with oidc_issuer")
    elif not settings.local_accounts:
        raise SettingsError("setting local_accounts: false needs oidc_issuer, or nobody can "
                            "sign in to the dashboard")
    for name in ("access_token_ttl", "refresh_token_ttl"):
        if getattr(settings, name) <= 0:
            raise SettingsError(f"setting {name}: must be positive")
    for i, rule in enumerate(settings.oidc_group_rules):
        where = f"setting oidc_group_rules[{i}]"
        if not isinstance(rule, Mapping) or set(rule) - {"group", "team", "role"}:
            raise SettingsError(f"{where}: a rule has group, team and role only")
        if not isinstance(rule.get("group"), str) or not rule["group"]:
            raise SettingsError(f"{where}: names no group")
        if not rule.get("team") and not rule.get("role"):
            raise SettingsError(f"{where}: names neither a team nor a role")
        if not isinstance(rule.get("team", ""), str):
            raise SettingsError(f"{where}: team is a team's name")
        if "role" in rule and rule["role"] not in GROUP_RULE_ROLES:
            raise SettingsError(f"{where}: role is one of {', '.join(GROUP_RULE_ROLES)}")
        if rule.get("role") == "team_lead" and not rule.get("team"):
            raise SettingsError(f"{where}: a team_lead rule names the team it leads")


def check_issuer(url: str, allow_loopback: bool) -> None:
    """An identity provider URL must be https; http only on loopback and only when allowed
    (as Claude Code and Anthropic's gateway do), since tokens and codes travel over it."""
    if secure_url(url, allow_loopback):
        return
    if secure_url(url, True):
        raise SettingsError(f"setting oidc_issuer: {url!r} is plain http; set "
                            "oidc_allow_loopback (MTD_OIDC_ALLOW_LOOPBACK=1) to allow it on "
                            "loopback")
    raise SettingsError(f"setting oidc_issuer: {url!r} is not an https URL")
