"""Single sign-on settings: the client secret from the environment or a file only, an https
issuer (plain http only on loopback, only when allowed), and group rules in TOML."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboard.oidc import OidcConfig, Placement
from meterd.settings import Settings, SettingsError

ISSUER = {"MTD_OIDC_ISSUER": "https://idp.example.com", "MTD_OIDC_CLIENT_ID": "meterd"}


def test_client_secret_comes_from_the_environment_or_a_file_never_the_config(
        tmp_path: Path) -> None:
    secret = tmp_path / "oidc-secret"
    secret.write_text("s3cret-from-file\n")
    s = Settings.load(environ={**ISSUER, "MTD_OIDC_CLIENT_SECRET_FILE": str(secret)})
    assert s.oidc_client_secret == "s3cret-from-file"
    assert "s3cret" not in repr(s)
    assert Settings.load(environ={**ISSUER, "MTD_OIDC_CLIENT_SECRET": "env"}) \
        .oidc_client_secret == "env"
    config = tmp_path / "meterd.toml"
    config.write_text('oidc_issuer = "https://idp.example.com"\noidc_client_secret = "x"\n')
    with pytest.raises(SettingsError, match="oidc_client_secret is a secret"):
        Settings.load(config, environ={})


@pytest.mark.parametrize(("issuer", "loopback", "error"), [
    ("https://idp.example.com", False, None),
    ("http://127.0.0.1:8080", True, None),
    ("http://localhost:8080/realms/x", True, None),
    ("http://[::1]:8080", True, None),
    ("http://127.0.0.1:8080", False, "MTD_OIDC_ALLOW_LOOPBACK"),
    ("http://idp.example.com", True, "not an https URL"),
    ("http://10.0.0.5", True, "not an https URL"),
    ("idp.example.com", False, "not an https URL"),
])
def test_issuer_must_be_https_except_loopback_when_allowed(
        issuer: str, loopback: bool, error: str | None) -> None:
    env = {"MTD_OIDC_ISSUER": issuer, "MTD_OIDC_CLIENT_ID": "meterd",
           "MTD_OIDC_ALLOW_LOOPBACK": "1" if loopback else "0"}
    if error is None:
        assert Settings.load(environ=env).oidc_issuer == issuer
    else:
        with pytest.raises(SettingsError, match=error):
            Settings.load(environ=env)


def test_an_issuer_needs_a_client_id() -> None:
    with pytest.raises(SettingsError, match="oidc_client_id"):
        Settings.load(environ={"MTD_OIDC_ISSUER": "https://idp.example.com"})


def test_sign_in_settings_read_from_the_environment() -> None:
    s = Settings.load(environ={**ISSUER, "MTD_OIDC_ALLOWED_DOMAINS": "example.com, corp.example",
                               "MTD_OIDC_DEFAULT_TEAM": "everyone",
                               "MTD_ACCESS_TOKEN_TTL": "300"})
    assert s.oidc_allowed_domains == ("example.com", "corp.example")
    assert (s.oidc_default_team, s.access_token_ttl) == ("everyone", 300)
    with pytest.raises(SettingsError, match="access_token_ttl"):
        Settings.load(environ={"MTD_ACCESS_TOKEN_TTL": "0"})


def test_group_rules_come_from_toml_and_are_checked(tmp_path: Path) -> None:
    config = tmp_path / "meterd.toml"
    config.write_text(
        'oidc_issuer = "https://idp.example.com"\noidc_client_id = "meterd"\n'
        '[[oidc_group_rules]]\ngroup = "eng-platform"\nteam = "platform"\nrole = "team_lead"\n'
        '[[oidc_group_rules]]\ngroup = "finops"\nrole = "finance"\n'
        '[[oidc_group_rules]]\ngroup = "eng"\nteam = "engineering"\n')
    s = Settings.load(config, environ={"MTD_OIDC_GROUP_RULES": "ignored: TOML only"})
    assert [dict(r) for r in s.oidc_group_rules] == [
        {"group": "eng-platform", "team": "platform", "role": "team_lead"},
        {"group": "finops", "role": "finance"},
        {"group": "eng", "team": "engineering"}]


@pytest.mark.parametrize(("rule", "error"), [
    ('group = "eng"\nrole = "owner"', "role is one of admin, finance, team_lead"),
    ('team = "platform"', "names no group"),
    ('group = "eng"', "names neither a team nor a role"),
    ('group = "eng"\nteam = "platform"\nteams = "x"', "a rule has group, team and role only"),
])
def test_a_malformed_group_rule_is_refused_naming_it(tmp_path: Path, rule: str,
                                                    error: str) -> None:
    config = tmp_path / "meterd.toml"
    config.write_text(f"[[oidc_group_rules]]\n{rule}\n")
    with pytest.raises(SettingsError, match=rf"oidc_group_rules\[0\]: {error}"):
        Settings.load(config, environ={})


def test_local_accounts_can_be_turned_off_only_with_single_sign_on() -> None:
    assert Settings.load(environ={}).local_accounts is True
    s = Settings.load(environ={**ISSUER, "MTD_LOCAL_ACCOUNTS": "0"})
    assert s.local_accounts is False
    with pytest.raises(SettingsError, match="local_accounts: false needs oidc_issuer"):
        Settings.load(environ={"MTD_LOCAL_ACCOUNTS": "0"})


def test_a_team_lead_rule_names_the_team_it_leads(tmp_path: Path) -> None:
    config = tmp_path / "meterd.toml"
    config.write_text('[[oidc_group_rules]]\ngroup = "leads"\nrole = "team_lead"\n')
    with pytest.raises(SettingsError, match=r"oidc_group_rules\[0\]: a team_lead rule names "
                                            "the team it leads"):
        Settings.load(config, environ={})


def test_a_team_lead_is_placed_in_the_team_it_leads_whatever_rule_comes_first() -> None:
    s = Settings(oidc_group_rules=(
        {"group": "eng", "team": "engineering"}, {"group": "finops", "role": "finance"},
        {"group": "plat-leads", "team": "platform", "role": "team_lead"})).replace()
    config = OidcConfig.from_settings(s)
    assert config.place(["eng", "plat-leads"]) == Placement("platform", "team_lead")
    assert config.place(["eng", "finops"]) == Placement("engineering", "finance")
    assert config.place(["marketing"]) == Placement("", "")
