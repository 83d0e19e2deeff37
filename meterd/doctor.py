"""`meterd doctor`: run on a developer's machine before depending on the gateway.

Finds the gateway settings Claude Code will use (the shell environment, then the user's
`~/.claude/settings.json`, then the managed settings file, each overriding the one before),
calls the gateway with that credential, and says who the gateway thinks you are and what you
may still spend, or exactly what is wrong.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from ledger.money import format_usd
from ledger.policy import KEY_PREFIX

MANAGED = (Path("/etc/claude-code/managed-settings.json"),
           Path("/Library/Application Support/ClaudeCode/managed-settings.json"))
CREDENTIAL_VARS = ("ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY")


@dataclass
class Found:
    base_url: str = ""
    base_url_from: str = ""
    key: str = ""
    key_from: str = ""
    problems: list[str] = field(default_factory=list)


def _settings_file(path: Path) -> dict[str, Any]:
    try:
        doc = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc})") from None
    return doc if isinstance(doc, dict) else {}


def discover(environ: Mapping[str, str], home: Path,
             managed: tuple[Path, ...] = MANAGED) -> Found:
    """What Claude Code will use, and where each piece came from."""
    found = Found()
    layers: list[tuple[str, Mapping[str, Any], str]] = [("the environment", environ, "")]
    for path in (home / ".claude" / "settings.json", *managed):
        try:
            doc = _settings_file(path)
        except ValueError as exc:
            found.problems.append(str(exc))
            continue
        env = doc.get("env") if isinstance(doc.get("env"), dict) else {}
        layers.append((str(path), env or {}, str(doc.get("apiKeyHelper") or "")))
    for source, env, helper in layers:
        if env.get("ANTHROPIC_BASE_URL"):
            found.base_url, found.base_url_from = str(env["ANTHROPIC_BASE_URL"]), source
        for var in CREDENTIAL_VARS:
            if env.get(var):
                found.key, found.key_from = str(env[var]), f"{var} in {source}"
        if helper:
            found.key, found.key_from = _run_helper(helper, found), f"apiKeyHelper in {source}"
        for var, value in env.items():
            if var not in CREDENTIAL_VARS and str(value).startswith(KEY_PREFIX):
                found.problems.append(
                    f"your gateway key is in {var} ({source}); Claude Code reads it from "
                    "ANTHROPIC_AUTH_TOKEN (or ANTHROPIC_API_KEY, or an apiKeyHelper)")
    if not found.base_url:
        found.problems.append(
            "ANTHROPIC_BASE_URL is not set: Claude Code would call the provider directly, not "
            "the gateway. Set it in your shell or in the managed settings `env` block.")
    if found.key.startswith("sk-ant-"):
        found.problems.append(
            f"{found.key_from} holds an Anthropic API key, not a gateway key (mtd_...); ask "
            "your admin for a gateway key")
    elif not found.key:
        found.problems.append("no gateway key: set ANTHROPIC_AUTH_TOKEN or an apiKeyHelper")
    return found


def _run_helper(command: str, found: Found) -> str:
    try:
        out = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=10,
                             check=True)
    except (subprocess.SubprocessError, OSError) as exc:
        found.problems.append(f"apiKeyHelper {command!r} failed: {exc}")
        return ""
    return out.stdout.strip()


async def check(found: Found) -> tuple[bool, list[str]]:
    """Ask the gateway who we are. Returns (ok, lines to print)."""
    lines = [f"gateway: {found.base_url or '(none)'}"
             + (f"  (from {found.base_url_from})" if found.base_url else ""),
             f"key:     {_masked(found.key)}" + (f"  (from {found.key_from})" if found.key else "")]
    if found.problems:
        return False, lines + [f"problem: {p}" for p in found.problems]
    url = found.base_url.rstrip("/") + "/meterd/v1/me"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s, \
                s.get(url, headers={"authorization": f"Bearer {found.key}"}) as resp:
            body = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return False, [*lines, f"problem: cannot reach the gateway at {found.base_url} "
                               f"({type(exc).__name__}: {exc})"]
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = {}
    if status != 200:
        message = doc.get("error", {}).get("message", f"HTTP {status}")
        if status == 404:
            message = f"{found.base_url} answered 404: is it a meterd gateway?"
        return False, [*lines, f"problem: the gateway refused the key: {message}"]
    lines += [f"you are: {doc['developer']['name']} (team {doc['team']['name'] or '-'})"]
    for b in doc["budgets"]:
        lines.append(f"budget:  {b['cap']}: {format_usd(b['spent_micros'])} of "
                     f"{format_usd(b['amount_micros'])} spent, "
                     f"{format_usd(b['remaining_micros'])} left (resets {b['resets_at']})")
    if not doc["budgets"]:
        lines.append("budget:  no spend cap applies to you")
    for lim in doc["limits"]:
        parts = [f"{v} {k}" for k in ("rpm", "itpm", "otpm", "concurrency") if (v := lim[k])]
        lines.append(f"limits:  {lim['scope']} {lim['name']}: {', '.join(parts)}")
    return True, [*lines, "ok: Claude Code is set up to use the gateway"]


def _masked(key: str) -> str:
    return f"{key[:8]}…{key[-4:]}" if len(key) > 16 else ("(set)" if key else "(none)")


def run(environ: Mapping[str, str], home: Path) -> int:
    ok, lines = asyncio.run(check(discover(environ, home)))
    print("\n".join(lines), file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1
