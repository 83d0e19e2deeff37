"""Request tags on the way out: a signed-in developer's `tags` and their beta stay here.

meterd's bearer tokens carry the `billing_group_tag` claim (ledger/tokens.py), so Claude Code
adds `"tags": {"<tag>": "<attributionProject>"}` and the `request-tags-…` beta to each Messages
request. The gateway protocol grants that claim only to a gateway that takes both out before
any upstream: they are for the gateway (the project is on the settlement), and an upstream may
refuse them (Bedrock and Vertex do). A static-key client chose its own tags and beta: they go
on unchanged (the cloud providers drop them themselves).
"""

from __future__ import annotations

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import ProxyError

TAGS_BETA = "request-tags-"  # e.g. request-tags-2026-08-21


def has_tags_beta(headers: CIMultiDictProxy[str]) -> bool:
    return any(TAGS_BETA in value for value in headers.getall("anthropic-beta", ()))


def without_tags(body: bytes, headers: CIMultiDictProxy[str], tagged: bool
                 ) -> tuple[bytes, CIMultiDictProxy[str]]:
    """The body without its top-level `tags` (when `tagged`: the request fields found them)
    and the headers without the request-tags beta. Only a tagged body is re-serialized."""
    if tagged:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            # msgspec read it, orjson does not: a number beyond a double's range (see
            # proxy.request_fields). The provider would refuse that body too.
            raise ProxyError(400, "invalid_request_error",
                             "request body holds a number out of range") from None
        doc.pop("tags", None)
        body = orjson.dumps(doc)
    if has_tags_beta(headers):
        out = CIMultiDict([(k, v) for k, v in headers.items() if k.lower() != "anthropic-beta"])
        betas = [beta.strip() for value in headers.getall("anthropic-beta")
                 for beta in value.split(",")
                 if beta.strip() and not beta.strip().startswith(TAGS_BETA)]
        if betas:
            out["anthropic-beta"] = ",".join(betas)
        headers = CIMultiDictProxy(out)
    return body, headers
