"""`meterd user …` and `meterd admin-key …`: dashboard accounts and admin API keys from the
command line. They go through the admin API like every management command (over the Unix
socket), so the change is audited and the DuckDB file keeps one writer.

The wiring package passes in its own helpers (this package does not import it):
`add(name, fn, help, parent)` registers a subcommand; `manage(method, path, body, show)`
returns the function that calls the admin API.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dashboard.accounts import ADMIN_KEY_ROLES, MIN_PASSWORD, USER_ROLES

Add = Callable[..., argparse.ArgumentParser]
Manage = Callable[..., Callable[[argparse.Namespace], None]]


def read_password(args: argparse.Namespace) -> str:
    """From --password-file (a path, or - for stdin), else stdin when it is not a terminal,
    else prompted twice."""
    source = getattr(args, "password_file", None)
    if source == "-" or (source is None and not sys.stdin.isatty()):
        password = sys.stdin.readline().rstrip("\r\n")
    elif source:
        try:
            password = Path(source).read_text().rstrip("\r\n")
        except OSError as exc:
            raise SystemExit(f"meterd: cannot read {source}: {exc.strerror}") from None
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise SystemExit("meterd: the passwords differ")
    if len(password) < MIN_PASSWORD:
        raise SystemExit(f"meterd: a password needs at least {MIN_PASSWORD} characters")
    return password


def _show_user(result: Any) -> None:
    print(f"account {result['name']} ({result['role']}) created; sign in at /admin/")


def _show_admin_key(result: Any) -> None:
    print(f"admin API key {result['id']} ({result['role']}"
          + (f", {result['label']}" if result.get("label") else "") + ")")
    print(f"\n    {result['secret']}\n")
    print("This is the only time the key is shown; meterd stores only its hash.")
    print("Send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>' to /admin/api/v1/…")


def add_account_commands(sub: Any, add: Add, manage: Manage) -> None:
    """Register `meterd user …` and `meterd admin-key …` on the CLI's subparsers."""
    user = sub.add_parser("user", help="dashboard accounts").add_subparsers(
        dest="action", required=True)
    p = add("create", manage("POST", "users", lambda a: {
        "name": a.name, "role": a.role, "password": read_password(a)}, _show_user),
        "create a dashboard account (the first admin, finance users)", user)
    p.add_argument("name")
    p.add_argument("--role", choices=USER_ROLES, required=True)
    p.add_argument("--password-file", metavar="PATH",
                   help="read the password from this file ('-' = stdin); default: prompt, "
                        "or stdin when it is not a terminal")
    add("list", manage("GET", "users"), "list dashboard accounts", user)
    p = add("password", manage("POST", "users/{name}/password", lambda a: {
        "password": read_password(a)}), "set an account's password (ends its sessions)", user)
    p.add_argument("name")
    p.add_argument("--password-file", metavar="PATH")
    p = add("disable", manage("POST", "users/{name}/disable"), "disable an account", user)
    p.add_argument("name")
    p = add("enable", manage("POST", "users/{name}/enable"), "enable an account", user)
    p.add_argument("name")

    akey = sub.add_parser("admin-key", help="admin API keys").add_subparsers(
        dest="action", required=True)
    p = add("create", manage("POST", "admin_keys", lambda a: {
        "role": a.role, "label": a.label or ""}, _show_admin_key),
        "create an admin API key (shown once)", akey)
    p.add_argument("--role", choices=tuple(ADMIN_KEY_ROLES), required=True,
                   help="rw: acts as an admin; ro: reads, like finance")
    p.add_argument("--label", help="what the key is for")
    add("list", manage("GET", "admin_keys"), "list admin API keys (never their secrets)", akey)
    p = add("revoke", manage("POST", "admin_keys/{key_id}/revoke"), "revoke an admin API key",
            akey)
    p.add_argument("key_id")
