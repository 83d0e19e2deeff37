"""Rollout: what an admin distributes so Claude Code on every laptop talks to this gateway."""

from __future__ import annotations

import orjson
from aiohttp import web

from dashboard.appkeys import CONFIG
from dashboard.auth import allow
from dashboard.params import Query, choice, query
from dashboard.render import admin_state, render

HELPER_PATH = "/usr/local/bin/meterd-key"
MANAGED_PATHS = (
    ("macOS", "/Library/Application Support/ClaudeCode/managed-settings.json"),
    ("Linux and WSL", "/etc/claude-code/managed-settings.json"),
    ("Windows", r"C:\Program Files\ClaudeCode\managed-settings.json"),
)
HELPERS = (
    ("macOS (Keychain)", f"""#!/bin/sh
# {HELPER_PATH}: prints this developer's meterd gateway key for Claude Code.
# Store the key once with:  security add-generic-password -a "$USER" -s meterd -w
exec security find-generic-password -a "$USER" -s meterd -w
"""),
    ("Linux (file readable only by the developer)", f"""#!/bin/sh
# {HELPER_PATH}: prints this developer's meterd gateway key for Claude Code.
# Store the key once with:
#   install -m 600 /dev/null ~/.config/meterd/key && $EDITOR ~/.config/meterd/key
exec cat "${{XDG_CONFIG_HOME:-$HOME/.config}}/meterd/key"
"""),
)


def managed_settings(proxy_url: str) -> dict[str, object]:
    """The managed-settings.json every machine gets: the base URL, and a helper that prints
    the developer's own key (Claude Code sends it as both x-api-key and Bearer, and runs the
    helper again after a 401, so a rotated key is picked up without a restart). Gateway mode
    (CLAUDE_CODE_USE_GATEWAY) makes Claude Code show the caps meterd reports, with a static
    key too."""
    return {"env": {"ANTHROPIC_BASE_URL": proxy_url, "CLAUDE_CODE_USE_GATEWAY": "1"},
            "apiKeyHelper": HELPER_PATH}


# What turns on a signed-in client's telemetry. In gateway mode Claude Code (2.1.332) exports
# to `<gateway>/v1/{metrics,logs}` with its sign-in's bearer token by itself, but starts no
# exporter unless telemetry is enabled, an exporter is `otlp` and a protocol is set.
SIGNED_IN_TELEMETRY = {"CLAUDE_CODE_ENABLE_TELEMETRY": "1", "OTEL_METRICS_EXPORTER": "otlp",
                       "OTEL_LOGS_EXPORTER": "otlp",
                       "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}


def login_settings(proxy_url: str) -> dict[str, object]:
    """The managed-settings.json that makes `/login` sign in to this gateway: Claude Code's
    gateway mode (the device flow through the organization's identity provider, then a
    bearer token), with the gateway's URL filled in and no other login method offered, and
    its telemetry sent to the gateway. Claude Code honors the login keys only from
    admin-controlled managed settings."""
    return {"forceLoginMethod": "gateway", "forceLoginGatewayUrl": proxy_url,
            "env": SIGNED_IN_TELEMETRY}


OTEL_HELPER_PATH = "/usr/local/bin/meterd-otel-headers"
OTEL_HELPER = f"""#!/bin/sh
# {OTEL_HELPER_PATH}: the developer's meterd key as the header of Claude Code's telemetry.
printf '{{"x-api-key":"%s"}}\\n' "$({HELPER_PATH})"
"""


def telemetry_settings(proxy_url: str) -> dict[str, object]:
    """What to add to the managed settings so that Claude Code on a static-key machine sends
    its OpenTelemetry to the gateway (/v1/metrics, /v1/logs), under the developer's own key
    (a signed-in client needs only SIGNED_IN_TELEMETRY, in login_settings). The key comes from
    a helper, so the file stays the same on every machine."""
    return {"env": {"CLAUDE_CODE_ENABLE_TELEMETRY": "1", "OTEL_METRICS_EXPORTER": "otlp",
                    "OTEL_LOGS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": proxy_url},
            "otelHeadersHelper": OTEL_HELPER_PATH}


VARIANTS = {"key": managed_settings, "login": login_settings}


def managed_json(proxy_url: str, variant: str = "key") -> str:
    return orjson.dumps(VARIANTS[variant](proxy_url),
                        option=orjson.OPT_INDENT_2).decode() + "\n"


@allow("admin", "finance", "team_lead", "developer")
async def rollout(request: web.Request) -> web.StreamResponse:
    proxy_url = admin_state(request).proxy_url
    return await render(request, "rollout.html", {
        "proxy_url": proxy_url, "managed": managed_json(proxy_url),
        "managed_login": managed_json(proxy_url, "login"),
        "sso": request.app[CONFIG].oidc is not None,
        "managed_paths": MANAGED_PATHS, "helpers": HELPERS, "helper_path": HELPER_PATH,
        "telemetry": orjson.dumps(telemetry_settings(proxy_url),
                                  option=orjson.OPT_INDENT_2).decode(),
        "otel_helper": OTEL_HELPER,
    })


@allow("admin", "finance", "team_lead", "developer")
@query(choice("variant", tuple(VARIANTS), "key"))
async def managed_settings_file(request: web.Request, q: Query) -> web.StreamResponse:
    """The file of one variant: `key` (static gateway keys) or `login` (/login)."""
    return web.Response(
        text=managed_json(admin_state(request).proxy_url, q["variant"]),
        content_type="application/json",
        headers={"Content-Disposition": 'attachment; filename="managed-settings.json"'})
