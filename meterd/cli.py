"""The `meterd` command: process roles (serve, proxy, admin, mock-upstream) and management."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from aiohttp import web

from dashboard.commands import add_account_commands
from dashboard.params import parse_expiry
from ledger.models_allowed import split as split_models
from ledger.money import format_usd
from meterd import doctor, mock_upstream
from meterd.apps import SOCKET_FILE, create_root_app
from meterd.client import ManagementError, call, fetch
from meterd.settings import Settings, SettingsError
from meterd.tls import server_context


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.load(args.config, host=getattr(args, "host", None),
                         proxy_port=getattr(args, "port", None),
                         data_dir=getattr(args, "data_dir", None))


def _prepare_data_dir(settings: Settings) -> None:
    # 0700: the admin socket inside trusts whoever can reach it.
    settings.data_path.mkdir(parents=True, exist_ok=True)
    settings.data_path.chmod(0o700)


async def _tune_gc(app: web.Application) -> None:
    """Keep the garbage collector off the hot path, once everything long-lived is loaded.

    The cyclic GC's full collections walk every object in the process, and a server that
    imported aiohttp, redis, DuckDB and the dashboard holds hundreds of thousands of them:
    that cost per request was more than the proxy's own work (bench/, issue 6). Freezing the
    start-up heap takes it out of every collection, and a larger first generation makes the
    collections that remain rarer. Cyclic garbage is still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(7000, 10, 10)


def _run(app: web.Application, settings: Settings, port: int, unix: bool = False,
         reuse_port: bool = False) -> None:
    """Serve `app` on host:port (https when the TLS files are set) and, with `unix`, on the
    data directory's socket (plain: the CLI's channel), until SIGINT or SIGTERM."""
    ssl_context = server_context(settings)  # a bad file stops the start, with its name
    path = str(settings.data_path / SOCKET_FILE) if unix else None
    app.on_startup.append(_tune_gc)  # after the cleanup contexts: their state is loaded
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        runner.run(_serve(app, settings, port, path, ssl_context, reuse_port))


async def _serve(app: web.Application, settings: Settings, port: int, path: str | None,
                 ssl_context: ssl.SSLContext | None, reuse_port: bool) -> None:
    # web.run_app would put TLS on the Unix socket too, which the CLI reaches over plain http.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_grace)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Before the setup, which a standby admin spends waiting to lead: a signal then stops it
    # there (what the setup finished is released by the cleanup), and one that comes as the
    # setup ends is a clean shutdown after it.
    starting = asyncio.ensure_future(runner.setup())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return
        stopping.cancel()
        starting.result()  # a setup that failed raises here
        # backlog: a fleet of Claude Code sessions reconnecting at once (after a deploy) must
        # queue for accept(), not be reset; the default, 128, overflows under a burst of about
        # a thousand connections (seen on the mock upstream in bench/slow_streams.py).
        await web.TCPSite(runner, settings.host, port, ssl_context=ssl_context, backlog=1024,
                          reuse_port=reuse_port or None).start()
        if path:
            # Left by a process that died: we hold the DuckDB file now (a standby admin got
            # here only once it led), so no live process owns it.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            await web.UnixSite(runner, path, backlog=1024).start()
        await stop.wait()
    finally:
        await runner.cleanup()


def cmd_serve(args: argparse.Namespace) -> None:
    settings = _settings(args)
    if args.demo:
        from meterd.demo import prepare_demo

        settings = prepare_demo(settings)
    _prepare_data_dir(settings)
    _setup_logging(settings.log_level)
    # SIGHUP re-reads the configuration and swaps in its providers and routes.
    app = create_root_app(settings, reload_settings=None if args.demo else lambda: _settings(args))
    if args.demo:
        from meterd.demo import announce, populate, with_mock_upstream

        with_mock_upstream(app, settings)
        app.on_startup.append(populate)
        app.on_startup.append(lambda _app: announce(settings))
    else:
        print(f"meterd serving the proxy on {settings.proxy_url} and the dashboard on "
              f"{settings.proxy_url}/admin/", flush=True)
    _run(app, settings, settings.proxy_port, unix=True)


def cmd_proxy(args: argparse.Namespace) -> None:
    settings = _settings(args)
    _prepare_data_dir(settings)
    _setup_logging(settings.log_level)
    workers = max(1, args.workers)
    if workers > 1:
        # SO_REUSEPORT: the kernel spreads connections over independent worker processes.
        for _ in range(workers - 1):
            if os.fork() == 0:
                break
    _run(create_root_app(settings, admin=False, reload_settings=lambda: _settings(args),
                         reuse_port=workers > 1),
         settings, settings.proxy_port, reuse_port=workers > 1)


def cmd_admin(args: argparse.Namespace) -> None:
    settings = _settings(args)
    _prepare_data_dir(settings)
    _setup_logging(settings.log_level)
    _run(create_root_app(settings, proxy=False, standby=True), settings, settings.admin_port,
         unix=True)


def cmd_mock(args: argparse.Namespace) -> None:
    _setup_logging("warning")
    app = mock_upstream.create_mock_app(mock_upstream.options_from_args(args))
    print(f"mock upstream on http://{args.host}:{args.port}", flush=True)
    web.run_app(app, host=args.host, port=args.port, loop=_new_loop(), access_log=None,
                print=None)


def _manage(method: str, path: str, body: Callable[[argparse.Namespace], Any] | None = None,
            show: Callable[[Any], None] | None = None) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        settings = _settings(args)
        _prepare_data_dir(settings)
        result = asyncio.run(call(settings, method, path.format(**vars(args)),
                                  body(args) if body else None))
        (show or _show)(result)
    return run


def _query(**params: str | None) -> str:
    return urlencode({k: v for k, v in params.items() if v})


def cmd_report(args: argparse.Namespace) -> None:
    settings = _settings(args)
    query = _query(grain=args.grain, dimension=args.by, start=args.start, end=args.end,
                   team=args.team, developer=args.developer,
                   format="csv" if args.csv else None)
    raw = asyncio.run(fetch(settings, "GET", f"usage?{query}"))
    if args.csv:
        sys.stdout.write(raw.decode())
        return
    rows = orjson.loads(raw)["data"]
    _show({"data": [{"period": r["period"], args.by: r["label"], "requests": r["requests"],
                     "input": r["input_tokens"], "output": r["output_tokens"],
                     "cache read": r["cache_read"], "cost": format_usd(r["cost_micros"])}
                    for r in rows]})


def cmd_export(args: argparse.Namespace) -> None:
    settings = _settings(args)
    raw = asyncio.run(fetch(settings, "GET", "requests.parquet?" + _query(
        start=args.start, end=args.end)))
    Path(args.out).write_bytes(raw)
    print(f"wrote {len(raw):,} bytes to {args.out}")


def _show(result: Any) -> None:
    rows = result.get("data") if isinstance(result, dict) and "data" in result else None
    if rows is None:
        for k, v in result.items():
            print(f"{k}: {v}")
        return
    if not rows:
        print("(none)")
        return
    names = list(rows[0])
    widths = [max(len(n), *(len(str(r[n])) for r in rows)) for n in names]
    print("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[n]).ljust(w) for n, w in zip(names, widths, strict=True)))


def cmd_managed_show(args: argparse.Namespace) -> None:
    """The settings as JSON on stdout (what `managed set` reads back), the rest on stderr."""
    settings = _settings(args)
    found = asyncio.run(call(settings, "GET", f"managed_settings/{quote(args.scope, safe='')}"))
    print(f"{args.scope}: {found['checksum']}, saved {found['updated_at']}", file=sys.stderr)
    print(orjson.dumps(found["settings"], option=orjson.OPT_INDENT_2).decode())


def cmd_managed_set(args: argparse.Namespace) -> None:
    """Save (or with --preview only check) a settings file; prints the diff it makes."""
    settings = _settings(args)
    _prepare_data_dir(settings)
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ManagementError(f"{args.file} is not valid JSON: {exc}") from None
    path = f"managed_settings/{quote(args.scope, safe='')}"
    result = asyncio.run(call(settings, "POST" if args.preview else "PUT",
                              path + ("/preview" if args.preview else ""), document))
    print("\n".join(result["diff"]) or "(no changes)")
    print(f"{'would serve' if args.preview else 'saved'}: {result['checksum']}")


def _show_key(result: Any) -> None:
    print(f"key {result['id']} for {result['developer_id']}"
          + (f", expires {result['expires_at']}" if result["expires_at"] else ""))
    print(f"\n    {result['secret']}\n")
    print("This is the only time the key is shown; meterd stores only its hash.")


def _show_models(result: Any) -> None:
    _show({"data": [{"scope": "org" if r["scope"] == "org" else f"team {r['team_name']}",
                     "models": " ".join(r["models"])} for r in result["data"]]})


def _expiry(text: str) -> str:
    """A key expiry as the dashboard and the API read one: a date is the end of that UTC
    day, a date-time that instant; sent on as the instant."""
    try:
        return parse_expiry(text).isoformat()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meterd", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML config file (default: $MTD_CONFIG)")
    common.add_argument("--data-dir", help=f"data directory (default: {Settings.data_dir})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], None], help: str,
            parent: Any = sub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(fn=fn)
        return p

    p = add("serve", cmd_serve, "run proxy, dashboard and rollup in one process")
    p.add_argument("--host")
    p.add_argument("--port", type=int,
                   help=f"proxy and dashboard port (default {Settings.proxy_port})")
    p.add_argument("--demo", action="store_true",
                   help="run against a built-in mock upstream with seeded teams and keys")
    p = add("proxy", cmd_proxy, "run a stateless proxy against a shared Redis")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    p = add("admin", cmd_admin, "run the dashboard, admin API and rollup")
    p.add_argument("--host")
    p = sub.add_parser("mock-upstream", help="run a fake Anthropic Messages API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4010)
    mock_upstream.configure_parser(p)
    p.set_defaults(fn=cmd_mock)

    p = sub.add_parser("doctor", help="check this machine's Claude Code gateway setup")
    p.set_defaults(fn=lambda a: sys.exit(doctor.run(os.environ, Path.home())))

    team = sub.add_parser("team", help="teams").add_subparsers(dest="action", required=True)
    p = add("create", _manage("POST", "teams", lambda a: {"name": a.name}), "create a team", team)
    p.add_argument("name")
    add("list", _manage("GET", "teams"), "list teams", team)
    p = add("rename", _manage("PATCH", "teams/{team_id}", lambda a: {"name": a.name}),
            "rename a team (reports follow the id)", team)
    p.add_argument("team_id")
    p.add_argument("name")
    p = add("delete", _manage("DELETE", "teams/{team_id}"), "delete a team: refused with "
            "members, archived with history", team)
    p.add_argument("team_id")

    dev = sub.add_parser("dev", help="developers").add_subparsers(dest="action", required=True)
    p = add("create", _manage("POST", "developers", lambda a: {
        "name": a.name, "email": a.email, "team": a.team}), "create a developer", dev)
    p.add_argument("name")
    p.add_argument("--email", required=True)
    p.add_argument("--team", required=True)
    add("list", _manage("GET", "developers"), "list developers", dev)
    for action, says in (("disable", "disable (offboard): every key refused at once"),
                         ("enable", "re-enable a disabled developer")):
        p = add(action, _manage("POST", f"developers/{{developer_id}}/{action}"), says, dev)
        p.add_argument("developer_id")
    p = add("move", _manage("POST", "developers/{developer_id}/move", lambda a: {
        "team": a.team, "since": a.since or ""}), "move to another team from a day "
        "(the org's time zone; spend before it stays with the old team; a later day "
        "schedules it)", dev)
    p.add_argument("developer_id")
    p.add_argument("--team", required=True, help="the new team (id or name)")
    p.add_argument("--since", help="first day in the new team, e.g. 2026-12-01 (default: "
                   "today); moving back to the current team cancels a scheduled move")
    p = add("teams", _manage("GET", "developers/{developer_id}/memberships"),
            "the teams a developer was in, and when", dev)
    p.add_argument("developer_id")
    p = add("rename", _manage("PATCH", "developers/{developer_id}", lambda a: {"name": a.name}),
            "rename a developer", dev)
    p.add_argument("developer_id")
    p.add_argument("name")
    p = add("delete", _manage("DELETE", "developers/{developer_id}"),
            "delete a developer: archived (keys revoked, spend kept) if they have usage", dev)
    p.add_argument("developer_id")

    key = sub.add_parser("key", help="gateway keys").add_subparsers(dest="action", required=True)
    p = add("issue", _manage("POST", "keys", lambda a: {
        "developer": a.developer, "expires_at": a.expires, "label": a.label or ""}, _show_key),
        "issue a key (shown once)", key)
    p.add_argument("developer", help="developer id, email or name")
    p.add_argument("--expires", type=_expiry,
                   help="last day the key works (UTC), e.g. 2026-12-31, or a date-time")
    p.add_argument("--label", help="what the key is for, e.g. laptop or CI")
    add("list", _manage("GET", "keys"), "list keys (never their secrets)", key)
    p = add("revoke", _manage("POST", "keys/{key_id}/revoke"), "revoke a key now", key)
    p.add_argument("key_id")
    p = add("expire", _manage("POST", "keys/{key_id}/expire", lambda a: {"expires_at": a.at}),
            "set a key's expiry", key)
    p.add_argument("key_id")
    p.add_argument("--at", type=_expiry,
                   help="a date (the key works to its end, UTC) or a date-time (default: now)")

    budget = sub.add_parser("budget", help="spend caps").add_subparsers(dest="action",
                                                                        required=True)
    p = add("set", _manage("POST", "budgets", lambda a: {
        "scope": a.scope, "target": a.target or "", "period": a.period, "amount_usd": a.usd,
        "mode": a.mode}), "set the cap of a developer, team, team member or the org", budget)
    p.add_argument("scope", choices=("developer", "team", "team_member", "org"))
    p.add_argument("target", nargs="?", help="developer or team (not for org)")
    p.add_argument("--period", choices=("daily", "weekly", "monthly"), default="monthly")
    p.add_argument("--usd", required=True, help="the cap in dollars, e.g. 250 or 99.50")
    p.add_argument("--mode", choices=("estimate", "strict"), default="estimate",
                   help="strict reserves the worst case: spend never passes the cap")
    add("list", _manage("GET", "budgets"), "list caps", budget)
    p = add("delete", _manage("DELETE", "budgets/{budget_id}"), "remove a cap", budget)
    p.add_argument("budget_id")

    limits = sub.add_parser("limits", help="rate limits").add_subparsers(dest="action",
                                                                         required=True)
    p = add("set", _manage("PUT", "rate_limits", lambda a: {
        "scope": a.scope, "target": a.target, **{k: getattr(a, k) for k in (
            "rpm", "itpm", "otpm", "concurrency") if getattr(a, k) is not None}}),
        "set rate limits of a developer or team (0 removes one)", limits)
    p.add_argument("scope", choices=("developer", "team"))
    p.add_argument("target")
    p.add_argument("--rpm", type=int, help="requests per minute")
    p.add_argument("--itpm", type=int, help="input tokens (incl. cache writes) per minute")
    p.add_argument("--otpm", type=int, help="output tokens per minute")
    p.add_argument("--concurrency", type=int, help="requests in flight at once")
    add("list", _manage("GET", "rate_limits"), "list rate limits", limits)
    models = sub.add_parser("models", help="models each team may call").add_subparsers(
        dest="action", required=True)
    p = add("set", _manage("PUT", "allowed_models/{scope}", lambda a: {
        "models": [m for text in a.models for m in split_models(text)]}),
        "set the models a team (or, with `org`, every team without a list) may call", models)
    p.add_argument("scope", help="a team (id or name), or org for the default")
    p.add_argument("models", nargs="+", help="model ids or globs, e.g. claude-sonnet-4-6 "
                   "'claude-haiku-*'")
    add("list", _manage("GET", "allowed_models", show=_show_models), "list the model lists",
        models)
    p = add("clear", _manage("DELETE", "allowed_models/{scope}"),
            "remove a list (a team falls back to org's; without one, any model)", models)
    p.add_argument("scope", help="a team (id or name), or org")
    add_account_commands(sub, add, _manage)

    managed = sub.add_parser("managed", help="managed settings Claude Code fetches").add_subparsers(
        dest="action", required=True)
    p = add("show", cmd_managed_show, "print the managed settings of the organization or a team",
            managed)
    p.add_argument("scope", nargs="?", default="org", help="org (default), or a team")
    p = add("set", cmd_managed_set, "replace the managed settings of the organization or a "
            "team with a JSON file (audited); prints the diff", managed)
    p.add_argument("scope", help="org, or a team (id or name)")
    p.add_argument("file", help="a JSON file, or - for standard input")
    p.add_argument("--preview", action="store_true", help="only check it and print the diff")

    p = add("report", cmd_report, "spend and tokens per period and dimension")
    p.add_argument("--grain", choices=("day", "week", "month"), default="day")
    p.add_argument("--by", choices=("team", "developer", "model", "session", "project"),
                   default="team")
    p.add_argument("--start", help="first day (default: the 1st of this month)")
    p.add_argument("--end", help="day after the last (default: tomorrow)")
    p.add_argument("--team", help="only this team (id)")
    p.add_argument("--developer", help="only this developer (id)")
    p.add_argument("--csv", action="store_true", help="CSV instead of a table")
    p = add("export", cmd_export, "raw request rows of a date range as Parquet (archiving)")
    p.add_argument("--start", required=True, help="first day, e.g. 2026-10-01")
    p.add_argument("--end", required=True, help="day after the last, e.g. 2026-11-01")
    p.add_argument("--out", required=True, help="file to write")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (SettingsError, ManagementError) as exc:
        print(f"meterd: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
