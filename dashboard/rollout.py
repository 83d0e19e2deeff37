"""Rollout: what an admin distributes so Claude Code on every laptop talks to this gateway."""

from __future__ import annotations

import orjson
from aiohttp import web

from dashboard.auth import allow
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
    helper again after a 401, so a rotated key is picked up without a restart)."""
    return {"env": {"ANTHROPIC_BASE_URL": proxy_url}, "apiKeyHelper": HELPER_PATH}


OTEL_HELPER_PATH = "/usr/local/bin/meterd-otel-headers"
OTEL_HELPER = f"""#!/bin/sh
# {OTEL_HELPER_PATH}: the developer's meterd key as the header of Claude Code's telemetry.
printf '{{"x-api-key":"%s"}}\\n' "$({HELPER_PATH})"
"""


def telemetry_settings(proxy_url: str) -> dict[str, object]:
    """What to add to the managed settings so that Claude Code on a static-key machine sends
    its OpenTelemetry to the gateway (/v1/metrics, /v1/logs), under the developer's own key
    (a signed-in client in gateway mode needs none of this). The key comes from a helper, so
    the file stays the same on every machine."""
    return {"env": {"CLAUDE_CODE_ENABLE_TELEMETRY": "1", "OTEL_METRICS_EXPORTER": "otlp",
                    "OTEL_LOGS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": proxy_url},
            "otelHeadersHelper": OTEL_HELPER_PATH}


def managed_json(proxy_url: str) -> str:
    return orjson.dumps(managed_settings(proxy_url), option=orjson.OPT_INDENT_2).decode() + "\n"


@allow("admin", "finance", "developer")
async def rollout(request: web.Request) -> web.StreamResponse:
    proxy_url = admin_state(request).proxy_url
    return await render(request, "rollout.html", {
        "proxy_url": proxy_url, "managed": managed_json(proxy_url),
        "managed_paths": MANAGED_PATHS, "helpers": HELPERS, "helper_path": HELPER_PATH,
        "telemetry": orjson.dumps(telemetry_settings(proxy_url),
                                  option=orjson.OPT_INDENT_2).decode(),
        "otel_helper": OTEL_HELPER,
    })


@allow("admin", "finance", "developer")
async def managed_settings_file(request: web.Request) -> web.StreamResponse:
    return web.Response(
        text=managed_json(admin_state(request).proxy_url), content_type="application/json",
        headers={"Content-Disposition": 'attachment; filename="managed-settings.json"'})
