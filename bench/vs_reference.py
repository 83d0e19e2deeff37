"""meterd, a bare pass-through and Anthropic's gateway on the same upstream, in one run.

    python bench/vs_reference.py [--duration S]

Needs the reference setup running (`../shared/anchors/claude-apps-gateway/setup.sh`: Anthropic's
gateway on 26300 with its spend caps in Postgres, its test IdP on 26100, its fake Messages API on
26200; `CAG_HOME`, default /tmp/cag, is where it lives). Starts bench/run.py's stack (a throwaway
Redis; a developer with a gateway key, a monthly budget and rate limits, so both Lua scripts run
on every request) and points a bare pass-through proxy and `meterd proxy` at the reference's
fake upstream; signs a user in to the reference (its `srv/login.py`, the device flow) and gives
them a spend cap, so both gateways price every request against a cap. Then wrk
(bench/wrk/messages.lua, the ~400 B streaming body with Claude Code's headers, 64 connections,
closed loop) runs against each in turn: the upstream directly, the bare proxy, meterd, the
reference. One table: req/s, latency, CPU per request of the target's processes and of its store
(Redis for meterd, Postgres for the reference), and the ratios. Every request through meterd
must be one usage event, as in bench/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bodies import HEADERS, small_body  # noqa: E402
from run import CONNECTIONS, LoadMeter, WrkResult, process_ticks, run_wrk, stack  # noqa: E402
from side_by_side import REFERENCE_WRITE_KEY, UPSTREAM, UPSTREAM_KEY, call  # noqa: E402

from meterd.ports import free_port  # noqa: E402

CAG_HOME = Path(os.environ.get("CAG_HOME", "/tmp/cag"))
USER = ("bench-ref", "bench-ref@example.com", "eng")  # sub, email, groups at its IdP
CAP_CENTS = 100_000_000  # $1M a month: checked on every request, never reached


def pid_of(path: Path) -> int:
    """A process id from a pid file (Postgres's postmaster.pid has it on its first line)."""
    return int(path.read_text().split()[0])


def reference_bearer(reference: str) -> str:
    """The reference's access token for USER, through its device flow, and a spend cap."""
    out = subprocess.run([str(CAG_HOME / "venv/bin/python"), str(CAG_HOME / "srv/login.py"),
                          *USER], capture_output=True, text=True, check=True).stdout
    token = str(orjson.loads(out.strip().splitlines()[-1])["access_token"])
    status, _, body = asyncio.run(call(
        "POST", reference + "/v1/organizations/spend_limits",
        headers={"x-api-key": REFERENCE_WRITE_KEY},
        json={"scope": {"type": "user", "user_id": USER[0]}, "amount": str(CAP_CENTS),
              "period": "monthly"}))
    if status != 200:
        raise SystemExit(f"bench: the reference refused the spend cap: {status} {body}")
    return token


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its direct children: Postgres's postmaster
    and its backends, each in a session of its own."""
    ticks = process_ticks(lambda p, fields: p == pid or int(fields[1]) == pid)  # 1: parent
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(name: str, url: str, sessions: set[int], store: Callable[[], float] | None,
            body: Path, key: str, headers: Path, duration: int) -> tuple[WrkResult, float]:
    """One saturated wrk run: the result (CPU per request of `sessions`) and the CPU per
    request of the store (`store` gives its CPU seconds so far; none: 0)."""
    store0 = store() if store else 0.0
    with LoadMeter(sessions, sessions) as load:
        r = run_wrk(url, body, key, duration, headers_file=headers, target=name, body="small")
    r.cpu_us = load.target_cpu_s * 1e6 / max(r.requests, 1)
    store_us = (store() - store0) * 1e6 / max(r.requests, 1) if store else 0.0
    return r, store_us


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--reference", default="http://127.0.0.1:26300")
    args = parser.parse_args(argv)
    try:
        gateway = os.getsid(pid_of(CAG_HOME / "gw/gw.pid"))
        postgres = pid_of(CAG_HOME / "pg/data/postmaster.pid")
        upstream = os.getsid(pid_of(CAG_HOME / "srv/upstream.pid"))
    except (OSError, ValueError, IndexError) as exc:
        raise SystemExit(f"bench: the reference setup is not running ({exc}); start it with "
                         "../shared/anchors/claude-apps-gateway/setup.sh") from None
    token = reference_bearer(args.reference)
    with stack("warning") as s:
        body, headers = s.workdir / "small.json", s.workdir / "headers.txt"
        body.write_bytes(small_body())
        headers.write_text("".join(f"{k}: {v}\n" for k, v in HEADERS.items()))
        bare_port, meterd_port = free_port(), free_port()
        s.spawn([sys.executable, str(HERE / "bare_proxy.py"), "--port", str(bare_port),
                 "--upstream", UPSTREAM, "--key", UPSTREAM_KEY], "bare-ref", bare_port)
        s.start_meterd(meterd_port, upstream=UPSTREAM, name="meterd-ref")
        runs: list[tuple[str, str, set[int], Callable[[], float] | None, str]] = [
            ("direct to upstream", UPSTREAM, {upstream}, None, s.key),
            ("bare proxy", s.url(bare_port), {s.sessions["bare-ref"]}, None, s.key),
            ("meterd", s.url(meterd_port), {s.sessions["meterd-ref"]}, s.redis_cpu_s, s.key),
            ("Anthropic's gateway", args.reference, {gateway},
             lambda: tree_cpu_s(postgres), token)]
        results: dict[str, tuple[WrkResult, float]] = {}
        failed: list[str] = []
        for name, url, sessions, store, key in runs:
            before = s.events()
            results[name] = measure(name, url, sessions, store, body, key, headers,
                                    args.duration)
            r = results[name][0]
            if r.non_2xx or any(r.errors.values()):
                failed.append(f"{name}: {r.non_2xx} non-2xx answers, socket errors {r.errors}")
            if name == "meterd" and s.wait_events(before + r.requests) - before != r.requests:
                failed.append(f"meterd: {r.requests} answered, not as many usage events")
    bare, ours, theirs = (results[n][0] for n in ("bare proxy", "meterd", "Anthropic's gateway"))
    print(f"same upstream (the reference's fake Messages API), {os.cpu_count()} CPUs, "
          f"{args.duration} s per run, wrk -c{CONNECTIONS}, {len(small_body())} B streaming "
          "body, closed loop\n")
    print(f"{'target':<22}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'CPU us':>8}{'store us':>10}"
          "  vs bare proxy")
    for name, (r, store_us) in results.items():
        ratio = f"{r.rps / bare.rps:.1%}" if name in ("meterd", "Anthropic's gateway") else ""
        print(f"{name:<22}{r.rps:>8,.0f}{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}{r.cpu_us:>8,.0f}"
              f"{store_us:>10,.0f}  {ratio}")
    print(f"\nmeterd / Anthropic's gateway: {ours.rps / theirs.rps:.2f}x the req/s at "
          f"{ours.cpu_us / theirs.cpu_us:.0%} of its CPU per request (store: Redis "
          f"{results['meterd'][1]:,.0f} us, Postgres {results[theirs.target][1]:,.0f} us)")
    for line in failed:
        print("FAILED: " + line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
