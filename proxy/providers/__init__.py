"""Upstream providers behind one interface, and the routing between them.

`base` holds the interface, `anthropic`, `bedrock` and `vertex` one provider each, `routing`
the per-model routes with ordered fallback, `passthrough` the routes for clients that speak a
provider's own format (Claude Code with CLAUDE_CODE_USE_BEDROCK / CLAUDE_CODE_USE_VERTEX).
"""

from proxy.providers.base import Outbound, Provider, ProviderUnavailable, Relayed
from proxy.providers.routing import Route, Router, RoutingTable

__all__ = ["Outbound", "Provider", "ProviderUnavailable", "Relayed", "Route", "Router",
           "RoutingTable"]
