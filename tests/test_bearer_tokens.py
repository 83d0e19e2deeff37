"""meterd's bearer tokens on the hot path: the signature is checked once per token, while
expiry, revocation and the developer's standing are checked on every request."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ledger import tokens
from ledger.policy import KeyRefused, Policy

KEY = tokens.new_signing_key()


def _policy(revoked: dict[str, int] | None = None, disabled: bool = False,
            keys: Any = None) -> Policy:
    return Policy(1, {}, {"dev_1": {"name": "Ada", "team_id": "team_1", "disabled": disabled}},
                  {"team_1": {"name": "platform"}}, {}, {},
                  {"keys": {KEY.kid: tokens.public_jwk(KEY)} if keys is None else keys,
                   "revoked": revoked or {}})


def _token(ttl: int = 900, now: float | None = None, sid: str = "sgn_1") -> str:
    return tokens.issue(KEY, issuer="https://gw.example", developer_id="dev_1", sid=sid,
                        email="ada@example.com", ttl=ttl, now=now)[0]


def test_a_bearer_names_its_developer_and_sign_in() -> None:
    p = _policy().principal(_token())
    assert (p.developer_id, p.team_name, p.key_id) == ("dev_1", "platform", "sgn_1")


def test_the_signature_is_checked_once_per_token_not_per_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    checked = []
    real = tokens._check
    monkeypatch.setattr(tokens, "_check", lambda t, k: checked.append(t) or real(t, k))
    token, policy = _token(sid="sgn_once"), _policy()
    for _ in range(100):
        policy.principal(token[:10] + token[10:])  # a new string each time, as requests bring
    _policy().principal(token)  # a reloaded snapshot with the same key: still cached
    assert len(checked) == 1


def test_a_cached_bearer_still_expires_and_can_be_revoked() -> None:
    now = time.time()
    token, policy = _token(ttl=60, now=now, sid="sgn_exp"), _policy()
    policy.principal(token, now=now)
    with pytest.raises(KeyRefused, match="expired") as refused:
        policy.principal(token, now=now + 60)
    assert refused.value.final
    with pytest.raises(KeyRefused, match="revoked") as refused:
        _policy(revoked={"sgn_exp": int(now) + 60}).principal(token, now=now)
    assert refused.value.final
    with pytest.raises(KeyRefused, match="disabled") as refused:
        _policy(disabled=True).principal(token, now=now)
    assert refused.value.final


def test_a_key_dropped_from_the_snapshot_stops_its_cached_tokens_for_good() -> None:
    token = _token(sid="sgn_key")
    _policy().principal(token)
    with pytest.raises(KeyRefused, match="does not know") as refused:
        _policy(keys={}).principal(token)
    assert refused.value.final  # no retry brings the key back: sign in again


def test_a_proxy_without_a_snapshot_yet_refuses_every_credential_retryably() -> None:
    """Started while Redis was unreachable: it knows no key, and must not tell clients that
    theirs is wrong for good."""
    for credential in (_token(sid="sgn_early"), "mtd_some-key"):
        with pytest.raises(KeyRefused, match="not loaded its keys yet") as refused:
            Policy.empty().principal(credential)
        assert not refused.value.final


def test_the_cache_of_verified_tokens_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_CACHE_LIMIT", 5)
    monkeypatch.setattr(tokens, "_verified", {})
    policy = _policy()
    for i in range(20):
        policy.principal(_token(sid=f"sgn_{i}"))
    assert len(tokens._verified) == 5


def test_a_developer_signed_in_before_this_proxys_policy_refresh_is_retryable_not_final() -> None:
    """Provisioned at sign-in, the developer reaches each proxy with its next policy refresh;
    a request in between must not make Claude Code ask to sign in again (final = the client's
    x-should-retry: false)."""
    token = tokens.issue(KEY, issuer="https://gw.example", developer_id="dev_new",
                         sid="sgn_new", email="new@example.com", ttl=900)[0]
    with pytest.raises(KeyRefused, match="not yet heard") as refused:
        _policy().principal(token)
    assert not refused.value.final
