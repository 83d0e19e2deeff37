"""Providers and routes from configuration, and their live reload.

```toml
[providers.anthropic]            # kind = anthropic | bedrock | vertex | foundry
kind = "anthropic"               # key: MTD_PROVIDER_ANTHROPIC_KEY or ..._KEY_FILE

[providers.bedrock-us]
kind = "bedrock"
region = "us-east-1"             # AWS credentials: botocore's standard chain (or `profile`)
# A regional endpoint (here the default `us.` profile; a `global.` one is not) costs 1.1x for
# Claude 4.5 and later, priced so without a setting; `multiplier = "1"` (or any) overrides it.

[[routes]]
match = "claude-opus-*"
providers = ["anthropic", "bedrock-us"]   # in order: the second serves when the first fails
```

No `[providers]` table: one Anthropic-format upstream from `upstream_url` / `upstream_key`, as
before. Secrets never come from the file: a provider's key from `MTD_PROVIDER_<NAME>_KEY` (or
`_KEY_FILE`), a Vertex service account from `MTD_PROVIDER_<NAME>_CREDENTIALS_FILE` (else
Google's application default credentials), AWS credentials from botocore's chain, a Foundry
provider with `auth = "entra"` from azure-identity's default chain (AZURE_TENANT_ID, ...).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ledger.pricing import PriceError, PriceTable
from meterd.settings import Settings, SettingsError
from proxy.providers import Provider, Route, Router, RoutingTable
from proxy.providers.anthropic import AnthropicProvider, FoundryProvider, foundry_base_url
from proxy.providers.bedrock import BedrockProvider
from proxy.providers.entra import EntraTokens, default_credential
from proxy.providers.vertex import SCOPES, StaticToken, TokenSource, VertexProvider
from proxy.state import STATE, ProxyState

log = logging.getLogger("meterd.providers")

_COMMON = {"kind", "models", "multiplier", "prices"}
_KEYS = {
    "anthropic": _COMMON | {"base_url", "auth", "headers"},
    "foundry": _COMMON | {"resource", "base_url", "auth"},
    "bedrock": _COMMON | {"region", "base_url", "profile", "inference_profile",
                          "anthropic_version", "drop_betas", "drop_fields", "ping_interval"},
    "vertex": _COMMON | {"project", "region", "base_url", "anthropic_version", "drop_betas",
                         "drop_fields"},
}
_SECRETS = {"key", "api_key", "secret", "secret_key", "token", "credentials", "private_key",
            "aws_access_key_id", "aws_secret_access_key", "aws_session_token"}


def env_name(provider: str, suffix: str) -> str:
    """`MTD_PROVIDER_<NAME>_<SUFFIX>`, the name upper-cased with other characters as `_`."""
    return f"MTD_PROVIDER_{re.sub(r'[^A-Z0-9]', '_', provider.upper())}_{suffix}"


def build_routing(settings: Settings, environ: Mapping[str, str] | None = None,
                  session: aiohttp.ClientSession | None = None) -> RoutingTable | None:
    """The routing table the settings describe; None for the single default upstream.
    `session`: the upstream session, which Entra ID token requests share.
    Raises SettingsError naming the bad entry."""
    environ = os.environ if environ is None else environ
    if not settings.providers:
        if settings.routes:
            raise SettingsError("setting routes: routes need [providers.NAME] tables")
        return None
    providers = {name: _provider(str(name), spec, settings, environ, session)
                 for name, spec in settings.providers.items()}
    routes = [_route(i, spec, providers) for i, spec in enumerate(settings.routes)]
    return RoutingTable(providers, routes)


def _provider(name: str, spec: Any, settings: Settings, environ: Mapping[str, str],
              session: aiohttp.ClientSession | None) -> Provider:
    where = f"providers.{name}"
    if not isinstance(spec, Mapping):
        raise SettingsError(f"setting {where}: expected a table")
    kind = spec.get("kind")
    if kind not in _KEYS:
        raise SettingsError(f"setting {where}.kind: {kind!r} is not one of anthropic, bedrock, "
                            "vertex, foundry")
    for key in spec:
        if key in _SECRETS:
            raise SettingsError(f"setting {where}.{key}: a secret; set {env_name(name, 'KEY')} "
                                "(or a file named in the environment) instead")
        if key not in _KEYS[kind]:
            raise SettingsError(f"setting {where}.{key}: unknown for kind {kind} (expected "
                                f"{', '.join(sorted(_KEYS[kind]))})")
    common: dict[str, Any] = {
        "multiplier": _multipliers(spec["multiplier"], where) if "multiplier" in spec else None,
        "prices": _prices(spec.get("prices"), settings, where),
        "models": _strings(spec.get("models", {}), f"{where}.models"),
    }
    key = _secret(environ, env_name(name, "KEY"))
    if kind == "anthropic":
        auth = spec.get("auth", "x-api-key")
        if auth not in ("x-api-key", "bearer"):
            raise SettingsError(f"setting {where}.auth: {auth!r} is not x-api-key or bearer")
        base_url = str(spec.get("base_url", "https://api.anthropic.com"))
        if not base_url.startswith(("http://", "https://")):
            raise SettingsError(f"setting {where}.base_url: {base_url!r} is not an http(s) URL")
        return AnthropicProvider(name, base_url, key, auth,
                                 _strings(spec.get("headers", {}), f"{where}.headers"),
                                 **common)
    if kind == "foundry":
        if "base_url" not in spec and not spec.get("resource"):
            raise SettingsError(f"setting {where}.resource: required (or base_url)")
        base_url = str(spec.get("base_url") or foundry_base_url(str(spec["resource"])))
        if not base_url.startswith(("http://", "https://")):
            raise SettingsError(f"setting {where}.base_url: {base_url!r} is not an http(s) URL")
        auth = spec.get("auth", "api-key")
        if auth == "entra":
            return FoundryProvider(name, base_url, tokens=EntraTokens(default_credential(session)),
                                   **common)
        if auth != "api-key":
            raise SettingsError(f"setting {where}.auth: {auth!r} is not api-key or entra")
        if not key:
            raise SettingsError(f"provider {name}: no API key; set {env_name(name, 'KEY')} "
                                "(or auth = \"entra\")")
        return FoundryProvider(name, base_url, key, **common)
    optional = {k: spec[k] for k in ("base_url", "anthropic_version") if k in spec}
    for k in ("drop_betas", "drop_fields"):
        if k in spec:
            optional[k] = _string_list(spec[k], f"{where}.{k}")
    if kind == "bedrock":
        return _bedrock(name, spec, key, optional, common, where)
    return _vertex(name, spec, key, optional, common, where, environ)


def _bedrock(name: str, spec: Mapping[str, Any], key: str, optional: dict[str, Any],
             common: dict[str, Any], where: str) -> BedrockProvider:
    import botocore.session

    profile = spec.get("profile")
    session = botocore.session.Session(profile=profile)
    region = spec.get("region") or session.get_config_variable("region")
    if not region:
        raise SettingsError(f"setting {where}.region: required (or AWS_REGION in the "
                            "environment)")
    if "ping_interval" in spec:
        optional["ping_interval"] = float(spec["ping_interval"])
    if "inference_profile" in spec:
        optional["inference_profile"] = str(spec["inference_profile"])
    return BedrockProvider(name, str(region), credentials=session.get_credentials, api_key=key,
                           **optional, **common)


def _vertex(name: str, spec: Mapping[str, Any], key: str, optional: dict[str, Any],
            common: dict[str, Any], where: str, environ: Mapping[str, str]) -> VertexProvider:
    import json

    project = spec.get("project")
    tokens: TokenSource | StaticToken
    if key:
        tokens = StaticToken(key)
    else:
        path = environ.get(env_name(name, "CREDENTIALS_FILE"))
        if path:
            try:
                info = json.loads(Path(path).read_text())
            except (OSError, ValueError) as exc:
                raise SettingsError(f"{env_name(name, 'CREDENTIALS_FILE')}: cannot read a "
                                    f"service account from {path}: {exc}") from None
            project = project or info.get("project_id")
            tokens = TokenSource(lambda: _service_account(info))
        else:
            tokens = TokenSource(_default_credentials)
    if not project:
        raise SettingsError(f"setting {where}.project: required (the GCP project id)")
    return VertexProvider(name, str(project), tokens, str(spec.get("region", "global")),
                          **optional, **common)


def _service_account(info: Mapping[str, Any]) -> Any:
    from google.oauth2 import service_account

    return service_account.Credentials.from_service_account_info(info, scopes=list(SCOPES))


def _default_credentials() -> Any:
    import google.auth

    credentials, _ = google.auth.default(scopes=list(SCOPES))
    return credentials


def _route(index: int, spec: Any, providers: Mapping[str, Provider]) -> Route:
    where = f"routes[{index}]"
    if not isinstance(spec, Mapping) or set(spec) - {"match", "providers"}:
        raise SettingsError(f"setting {where}: expected match = \"pattern\" and "
                            "providers = [names]")
    match = spec.get("match")
    if not isinstance(match, str) or not match:
        raise SettingsError(f"setting {where}.match: expected a model pattern like "
                            "\"claude-opus-*\"")
    names = _string_list(spec.get("providers"), f"{where}.providers")
    if not names:
        raise SettingsError(f"setting {where}.providers: name at least one provider")
    unknown = [n for n in names if n not in providers]
    if unknown:
        raise SettingsError(f"setting {where}.providers: no provider named "
                            f"{', '.join(unknown)}")
    return Route(match, tuple(providers[n] for n in names))


def _multipliers(value: Any, where: str) -> Fraction | dict[str, Fraction]:
    """One multiplier, or a table of model glob -> multiplier."""
    if isinstance(value, dict):
        return {str(glob): _multiplier(v, f"{where}.{glob}") for glob, v in value.items()}
    return _multiplier(value, where)


def _multiplier(value: Any, where: str) -> Fraction:
    if isinstance(value, float | bool):
        raise SettingsError(f"setting {where}.multiplier: write it as a string, e.g. \"1.1\"")
    try:
        factor = Fraction(Decimal(str(value).strip()))
    except (InvalidOperation, ValueError):
        raise SettingsError(f"setting {where}.multiplier: {value!r} is not a number") from None
    if factor <= 0:
        raise SettingsError(f"setting {where}.multiplier: must be positive")
    return factor


def _prices(value: Any, settings: Settings, where: str) -> PriceTable | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SettingsError(f"setting {where}.prices: expected a table of price rows")
    try:
        return PriceTable.load({**settings.prices, **value}, settings.fallback_input_usd,
                               settings.fallback_output_usd)
    except PriceError as exc:
        raise SettingsError(f"setting {where}.prices: {exc}") from None


def _strings(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise SettingsError(f"setting {where}: expected a table of strings")
    return {str(k): v for k, v in value.items()}


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"setting {where}: expected a list of strings")
    return list(value)


def _secret(environ: Mapping[str, str], var: str) -> str:
    if f"{var}_FILE" in environ:
        try:
            return Path(environ[f"{var}_FILE"]).read_text().strip()
        except OSError as exc:
            raise SettingsError(f"{var}_FILE: cannot read it: {exc.strerror}") from None
    return environ.get(var, "").strip()


class ProviderConfig:
    """The proxy's providers and routes, rebuilt from configuration on `reload()` (SIGHUP,
    or the dashboard). A reload swaps in a new router; requests in flight keep the one they
    started with, so no stream is dropped. A bad configuration changes nothing."""

    def __init__(self, state: ProxyState, load: Callable[[], Settings],
                 environ: Mapping[str, str] | None = None) -> None:
        self.state, self._load = state, load
        self.environ = os.environ if environ is None else environ

    def reload(self, settings: Settings | None = None) -> RoutingTable | None:
        """Re-read configuration (or take `settings`) and put its routing in force.
        Raises SettingsError, keeping the routing in force, if the configuration is bad."""
        table = build_routing(settings or self._load(), self.environ, self.state.session)
        self.state.router = Router(table) if table is not None else None
        log.info("providers in force: %s", ", ".join(table.providers) if table else
                 "the single upstream (upstream_url)")
        return table

    def reload_logged(self) -> None:
        try:
            self.reload()
        except SettingsError as exc:
            log.error("configuration not reloaded, the previous providers stay: %s", exc)


PROVIDERS = web.AppKey("providers", ProviderConfig)


async def providers_context(settings: Settings, load: Callable[[], Settings] | None,
                            app: web.Application) -> AsyncIterator[None]:
    """Build the routing at start; with a `load` function (the CLI's), reload on SIGHUP."""
    config = ProviderConfig(app[STATE], load or (lambda: settings))
    config.reload(settings)
    app[PROVIDERS] = config
    app[STATE].reload_providers = config.reload_logged
    loop = asyncio.get_running_loop()
    hangup = False
    if load is not None and hasattr(signal, "SIGHUP"):
        try:
            loop.add_signal_handler(signal.SIGHUP, config.reload_logged)
            hangup = True
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    yield
    if hangup:
        loop.remove_signal_handler(signal.SIGHUP)
