"""The provider the proxy forwards to, and which headers cross the gateway in each direction."""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict

# RFC 9110 §7.6.1 connection-specific headers, plus what this hop sets itself.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})
# The client's credential never leaves the gateway, and cookies cross it in neither direction
# (a gateway key is the only credential; one upstream session serves every developer). Bodies
# are metered in plain text, so ask the provider for identity encoding; a client's gzip or
# deflate body was decoded on arrival (proxy.errors) and goes on without its label.
_DROP_REQUEST = HOP_BY_HOP | {"host", "content-length", "authorization", "x-api-key",
                              "accept-encoding", "content-encoding", "cookie"}
_DROP_RESPONSE = HOP_BY_HOP | {"content-length", "date", "server", "set-cookie"}
# The provider's own rate limits and quota are the organization's, not the developer's:
# Claude Code would show the org's quota as theirs. meterd sends its own in their place.
_DROP_RESPONSE_PREFIX = "anthropic-ratelimit-"


class _Verdicts(dict[str, bool]):
    """Whether a header name (as sent, any case) crosses the gateway, decided once per name:
    clients send the same few dozen names on every request. Bounded, since clients choose
    the names."""

    def __init__(self, drop: frozenset[str], drop_prefix: str = "") -> None:
        super().__init__()
        self.drop, self.drop_prefix = drop, drop_prefix

    def __missing__(self, name: str) -> bool:
        if len(self) >= 4096:
            self.clear()
        lower = name.lower()
        keep = self[name] = lower not in self.drop and not (
            self.drop_prefix and lower.startswith(self.drop_prefix))
        return keep


_KEEP_REQUEST = _Verdicts(_DROP_REQUEST)
_KEEP_RESPONSE = _Verdicts(_DROP_RESPONSE, _DROP_RESPONSE_PREFIX)


class AnthropicUpstream:
    """An Anthropic-format Messages API: Anthropic itself, Foundry, another gateway."""

    name = "anthropic"

    def __init__(self, base_url: str, key: str, auth: str = "x-api-key",
                 extra_headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        credential = ("x-api-key", key) if auth == "x-api-key" else ("authorization",
                                                                      f"Bearer {key}")
        self._added = [credential, ("accept-encoding", "identity"),
                       *(extra_headers or {}).items()] if key else [
            ("accept-encoding", "identity"), *(extra_headers or {}).items()]

    def url(self, path_qs: str) -> str:
        return self.base_url + path_qs

    def request_headers(self, incoming: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
        """The client's headers (every anthropic-* one, as an open list) minus hop-by-hop and
        credentials, plus the provider credential."""
        keep = _KEEP_REQUEST
        out: CIMultiDict[str] = CIMultiDict([(k, v) for k, v in incoming if keep[k]])
        out.extend(self._added)
        return out


def response_headers(incoming: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """Provider response headers to relay: all but hop-by-hop (status codes and bodies pass
    through unchanged, and so do retry-after, x-should-retry and request-id)."""
    keep = _KEEP_RESPONSE
    return CIMultiDict([(k, v) for k, v in incoming if keep[k]])
