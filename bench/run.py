"""The meterd benchmark: meterd next to a bare pass-through proxy, same load, one table.

    python bench/run.py [--duration S] [--quick] [--smoke] [--json FILE]

Starts, on free ports and in a temporary directory:

- a throwaway `redis-server --save ''`;
- the mock upstream (`meterd mock-upstream`: precomputed streaming answers);
- the floor, `bench/bare_proxy.py`: aiohttp pass-through, no auth, no metering;
- `meterd proxy` (one process) with full metering on that Redis: a team, a developer, a
  gateway key, a monthly budget and rate limits (requests, input and output tokens per minute,
  concurrency) are created with the `meterd` CLI in direct mode, and the developer gets an
  access token as `/login` would give them (signed with the gateway's key), so every request runs
  admission (admit.lua) and settlement (settle.lua). The admission script waits for the
  `{meterd}:ready` marker, which the admin process sets when it starts; no admin process runs
  here, so the benchmark sets the marker itself.

Then it drives each with wrk (`bench/wrk/messages.lua`: `POST /v1/messages`, `stream: true`,
Claude Code's headers) with a ~400 B body and a ~60 KB Claude Code-like body:

1. saturation, closed loop, 64 connections: the mock directly, the bare proxy, meterd with the
   gateway key, meterd with the signed-in developer's bearer token, and `meterd proxy
   --workers 2` (SO_REUSEPORT);
2. open loop at half of meterd's saturation rate: the bare proxy and meterd (latency when
   not overloaded).

Every request sent through meterd must show up as exactly one usage event in the Redis stream
`{meterd}:events`; the run checks this after each wrk run (wrk stops sending before it stops,
so nothing is in flight at the end) and exits 1 if any request went unmetered or failed.

`--duration S` seconds per run (default 10; `--quick` 3 s and no warm-up runs; `--smoke` 1 s,
bare and meterd only, for CI). Needs `wrk` and `redis-server` on PATH.

`--against TREE` compares two versions of meterd instead (A/B): it starts `meterd proxy` from
this checkout and from another (`git worktree add /tmp/base main`) on the same stack, and
alternates saturated small-body runs of the two (`--rounds`, default 10; both started afresh
each round, each first in every other one). This machine's speed drifts by 10 % within a
minute, so only runs that close together compare; the median of the paired differences in CPU
per request is the verdict, once an A/A run (a checkout against itself) has shown the noise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson
import redis

from meterd.ports import free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bodies import HEADERS, large_body, small_body  # noqa: E402

MOCK_KEY = "sk-ant-mock"
EVENTS = "{meterd}:events"
READY = "{meterd}:ready"
CONNECTIONS = 64
DRAIN_S = 1  # wrk runs this much longer than it sends, so every answer arrives
BIG = 10**12  # rate limits that apply (the scripts run) but never refuse
TARGET_PROCESS = {"direct to mock": "mock-upstream", "bare proxy": "bare-proxy",
                  "meterd": "meterd", "meterd, bearer": "meterd", "meterd --workers 2": "meterd-2w",
                  "meterd (against)": "meterd-against"}
BUSY = 0.15  # CPUs' worth of other work during a run that makes its numbers suspect


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


def _cpu_ticks() -> int:
    """Busy CPU time of the whole machine, in clock ticks."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    return sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait


def process_ticks(wanted: Callable[[int, list[str]], bool]) -> int:
    """CPU time (user + system), in clock ticks, of every live process that `wanted` picks by
    its pid and the fields of its /proc stat after the command (field 3 of stat first)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if wanted(int(entry), fields):
            total += int(fields[11]) + int(fields[12])
    return total


def _session_ticks(sessions: set[int]) -> int:
    """CPU time of every live process in these sessions, in clock ticks."""
    return process_ticks(lambda _, fields: int(fields[3]) in sessions)  # field 6: session


class LoadMeter:
    """How much CPU a run used: the target's, and other processes' (a busy machine makes
    numbers unreliable, so the table says when that happened)."""

    def __init__(self, target_sessions: set[int], own_sessions: set[int]) -> None:
        self.target, self.own = target_sessions, own_sessions
        self.hz = os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> LoadMeter:
        self.t0 = time.monotonic()
        self.machine0 = _cpu_ticks()
        self.target0 = _session_ticks(self.target)
        self.own0 = _session_ticks(self.own)
        self.children0 = _children_ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        self.machine_s = (_cpu_ticks() - self.machine0) / self.hz
        self.target_cpu_s = (_session_ticks(self.target) - self.target0) / self.hz
        self.ours_s = (_session_ticks(self.own) - self.own0 + _children_ticks()
                       - self.children0) / self.hz

    def busy(self, seconds: float) -> tuple[float, float]:
        """(CPUs busy on the machine, CPUs busy outside the benchmark) over `seconds` (the
        sending window: the run's last second only lets answers arrive)."""
        return self.machine_s / seconds, max(0.0, (self.machine_s - self.ours_s) / seconds)


def _children_ticks() -> int:
    """CPU time of finished child processes (wrk, the CLI), in clock ticks."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return int((usage.ru_utime + usage.ru_stime) * os.sysconf("SC_CLK_TCK"))


@dataclass
class WrkResult:
    target: str
    body: str
    rate: float  # 0 = closed loop
    requests: int  # completed
    sent: int
    window_s: float  # from the first request sent to the last answer
    non_2xx: int
    errors: dict[str, int]
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    events: int | None = None  # usage events meterd wrote for this run (meterd targets)
    cpu_us: float = 0  # CPU time of the target (all its processes) per completed request
    redis_cpu_us: float = 0  # Redis's CPU (INFO cpu, user + sys) per completed request
    foreign_cpus: float = 0  # CPUs' worth of work by processes outside the benchmark
    machine_cpus: float = 0  # CPUs' worth of work by every process (of os.cpu_count())

    @property
    def ok_2xx(self) -> int:
        return self.requests - self.non_2xx


def run_wrk(url: str, body_file: Path, key: str, duration: int, *, rate: float = 0,
            connections: int = CONNECTIONS, headers_file: Path | None = None,
            target: str = "", body: str = "") -> WrkResult:
    """One wrk run: send for `duration` s (closed loop, or open loop at `rate` req/s)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration + DRAIN_S}s", "--timeout", "10s",
           "-s", str(HERE / "wrk" / "messages.lua"), url, "--", str(body_file), key,
           str(rate), str(duration), str(headers_file or "")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = re.search(r"^BENCH (\{.*\})$", out, re.M)
    if match is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    r = orjson.loads(match.group(1))
    window_s = r["window_ms"] / 1000 if r["window_ms"] > 0 else duration
    return WrkResult(
        target=target, body=body, rate=rate, requests=r["requests"], sent=r["sent"],
        window_s=window_s,
        non_2xx=r["non_2xx"], errors=r["errors"], rps=r["requests"] / window_s,
        p50_ms=r["p50_us"] / 1000, p90_ms=r["p90_us"] / 1000, p99_ms=r["p99_us"] / 1000,
        p999_ms=r["p99.9_us"] / 1000)


@dataclass
class Stack:
    """The processes of one benchmark run, each on its own free port, all stopped at exit."""

    workdir: Path
    log_level: str = "info"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sessions: dict[str, int] = field(default_factory=dict)  # process name -> its session id
    redis_port: int = 0
    mock_port: int = 0
    bare_port: int = 0
    meterd_port: int = 0
    key: str = ""
    bearer: str = ""
    meterd_pid: int = 0
    sentinel: bool = False  # meterd reaches Redis through three Sentinels (and a replica)
    sentinel_ports: list[int] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        if self.sentinel:
            return ("redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
                    + "/bench")
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start_sentinels(self) -> None:
        """A replica of the bench Redis and three Sentinels watching it (as `bench`)."""
        replica = free_port()
        self.spawn(["redis-server", "--port", str(replica), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", str(self.workdir), "--dbfilename",
                    "replica.rdb", "--replicaof", "127.0.0.1", str(self.redis_port)],
                   "redis-replica", replica)
        for i in range(3):
            port = free_port()
            conf = self.workdir / f"sentinel-{i}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                            f"sentinel monitor bench 127.0.0.1 {self.redis_port} 2\n")
            self.spawn(["redis-server", str(conf), "--sentinel"], f"sentinel-{i}", port)
            self.sentinel_ports.append(port)

    def redis_cpu_s(self) -> float:
        """CPU seconds the Redis primary has used (user + sys), from INFO cpu."""
        info = self.redis().info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"

    def spawn(self, cmd: Sequence[str], what: str, port: int, env: dict[str, str] | None = None,
              log: str = "", cwd: Path = ROOT) -> subprocess.Popen[bytes]:
        out = open(self.workdir / (log or f"{what}.log"), "ab")  # noqa: SIM115
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, cwd=cwd,
                                start_new_session=True)  # own group: workers stop with it
        out.close()
        self.procs.append(proc)
        self.sessions[what] = proc.pid
        wait_port(port, proc, what)
        return proc

    def meterd_env(self, data_dir: str, upstream: str = "") -> dict[str, str]:
        return {"MTD_REDIS_URL": self.redis_url, "MTD_DATA_DIR": str(self.workdir / data_dir),
                "MTD_UPSTREAM_URL": upstream or self.url(self.mock_port),
                "MTD_UPSTREAM_KEY": MOCK_KEY, "MTD_LOG_LEVEL": self.log_level}

    def meterd_cli(self, *steps: Sequence[str] | str) -> str:
        """Management commands in direct mode (no admin process runs), run by the `meterd`
        command's own entry point in one interpreter (one start-up instead of one each); a
        step given as a string is Python code run in between."""
        script = "import sys\nfrom meterd.cli import main\n" + "".join(
            step + "\n" if isinstance(step, str)
            else f"print('$ meterd', *{list(step)!r}, flush=True)\nmain({list(step)!r})\n"
            for step in steps)
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                              env={**os.environ, **self.meterd_env("admin")},
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"meterd management commands failed:\n{done.stdout}"
                               f"{done.stderr.strip()}")
        return done.stdout

    def start(self) -> None:
        self.redis_port = free_port()
        self.spawn(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
                   "redis-server", self.redis_port)
        if self.sentinel:
            self.start_sentinels()
        self.setup_identity()
        self.mock_port = free_port()
        self.spawn([sys.executable, "-m", "meterd.cli", "mock-upstream", "--port",
                    str(self.mock_port)], "mock-upstream", self.mock_port)
        self.bare_port = free_port()
        self.spawn([sys.executable, str(HERE / "bare_proxy.py"), "--port", str(self.bare_port),
                    "--upstream", self.url(self.mock_port), "--key", MOCK_KEY],
                   "bare-proxy", self.bare_port)
        self.meterd_port = free_port()
        self.meterd_pid = self.start_meterd(self.meterd_port).pid

    def setup_identity(self) -> None:
        """A developer with a key, an access token, a monthly budget and rate limits."""
        limit = str(BIG)
        out = self.meterd_cli(
            ["team", "create", "bench"],
            ["dev", "create", "Bench Dev", "--email", "bench@example.com", "--team", "bench"],
            ["key", "issue", "bench@example.com"],
            ["budget", "set", "developer", "bench@example.com", "--usd", "1000000",
             "--period", "monthly"],
            ["limits", "set", "developer", "bench@example.com", "--rpm", limit, "--itpm", limit,
             "--otpm", limit, "--concurrency", "100000"],
            MINT_BEARER,
            ["team", "list"])  # any command: its admin app publishes the new signing key
        match = re.search(r"\bmtd_\S+", out)
        bearer = re.search(r"^BEARER (\S+)$", out, re.M)
        if match is None or bearer is None:
            raise RuntimeError(f"no key or token in the output of the setup:\n{out}")
        self.key, self.bearer = match.group(0), bearer.group(1)
        # Normally `meterd admin` sets this once the counters are known complete.
        self.redis().set(READY, 1)

    def start_meterd(self, port: int, workers: int = 1, upstream: str = "",
                     name: str = "", tree: Path = ROOT) -> subprocess.Popen[bytes]:
        """`meterd proxy` on `port` (against the mock unless `upstream` is given), run from
        the checkout `tree`."""
        name = name or ("meterd" if workers == 1 else f"meterd-{workers}w")
        proc = self.spawn([sys.executable, "-m", "meterd.cli", "proxy", "--port", str(port),
                           "--workers", str(workers)], name, port,
                          env=self.meterd_env(f"proxy-{port}", upstream), cwd=tree)
        time.sleep(0.5 if workers > 1 else 0.1)  # let every worker bind and load the policy
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the group: forked workers too
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)
        self.sessions = {k: v for k, v in self.sessions.items() if v != proc.pid}

    def close(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)

    def redis(self) -> redis.Redis:
        return redis.Redis(port=self.redis_port)

    def events(self) -> int:
        return int(self.redis().xlen(EVENTS))

    def wait_events(self, expected: int, timeout: float = 15) -> int:
        """The stream length once it reaches `expected` (settlement runs after the answer),
        or whatever it is at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            n = self.events()
            if n >= expected or time.monotonic() > deadline:
                time.sleep(0.2)  # anything beyond `expected` would be a double count
                return self.events()
            time.sleep(0.05)


# The access token the device flow would hand the bench developer: signed with the gateway's
# signing key (made here on first use, published by the next command), valid for a day.
MINT_BEARER = """
from ledger import tokens
from ledger.catalog import Catalog, connect
from ledger.signins import SignIns
from meterd.apps import DB_FILE
from meterd.settings import Settings
catalog = Catalog(connect(Settings.load().data_path / DB_FILE))
token, _ = tokens.issue(SignIns(catalog).signing_key(), issuer="http://bench.invalid",
                        developer_id=catalog.developer_id("bench@example.com"),
                        sid="sgn_bench", email="bench@example.com", ttl=86400)
catalog.conn.close()
print("BEARER", token, flush=True)
"""


@contextlib.contextmanager
def stack(log_level: str = "info", sentinel: bool = False) -> Iterator[Stack]:
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is not installed (apt-get install {tool})")
    with tempfile.TemporaryDirectory(prefix="meterd-bench-") as tmp:
        s = Stack(Path(tmp), log_level, sentinel=sentinel)
        try:
            s.start()
            yield s
        finally:
            s.close()


def stack_or(on: Stack | None, log_level: str = "info",
             sentinel: bool = False) -> contextlib.AbstractContextManager[Stack]:
    """`on`, a stack the caller started and stops (the tests share one between scripts), or
    a new one of this run's own."""
    return contextlib.nullcontext(on) if on is not None else stack(log_level, sentinel)


@dataclass
class Bench:
    """Runs wrk against the stack's targets and checks metering after each meterd run."""

    s: Stack
    duration: int
    warmup: int
    files: dict[str, Path]
    headers_file: Path
    results: list[WrkResult] = field(default_factory=list)
    unmetered: list[str] = field(default_factory=list)

    def run(self, target: str, port: int, body: str, *, rate: float = 0, metered: bool = True,
            key: str | None = None, record: bool = True, duration: int | None = None
            ) -> WrkResult:
        before = self.s.events() if metered else 0
        redis_before = self.s.redis_cpu_s()
        with LoadMeter({self.s.sessions[TARGET_PROCESS[target]]},
                       set(self.s.sessions.values())) as load:
            result = run_wrk(self.s.url(port), self.files[body], key or self.s.key,
                             duration or self.duration, rate=rate,
                             headers_file=self.headers_file, target=target, body=body)
        result.cpu_us = load.target_cpu_s * 1e6 / max(result.requests, 1)
        result.redis_cpu_us = (self.s.redis_cpu_s() - redis_before) * 1e6 / max(result.requests, 1)
        result.machine_cpus, result.foreign_cpus = load.busy(result.window_s)
        if metered:
            result.events = self.s.wait_events(before + result.ok_2xx) - before
            if result.events != result.ok_2xx or result.sent != result.requests:
                self.unmetered.append(
                    f"{target} ({body}{', warm-up' if not record else ''}): {result.sent} sent, "
                    f"{result.requests} completed, {result.ok_2xx} 2xx, "
                    f"{result.events} usage events")
        if result.non_2xx or any(result.errors.values()):
            self.unmetered.append(f"{target} ({body}): {result.non_2xx} non-2xx answers, "
                                  f"socket errors {result.errors}")
        if record:
            self.results.append(result)
        return result

    def saturate(self, target: str, port: int, body: str, metered: bool = True,
                 key: str | None = None) -> WrkResult:
        if self.warmup:
            self.run(target, port, body, metered=metered, key=key, record=False,
                     duration=self.warmup)
        return self.run(target, port, body, metered=metered, key=key)


def _row(body: str, name: str, r: WrkResult, note: str) -> str:
    busy = f"{r.foreign_cpus:5.2f}" + ("!" if r.foreign_cpus > BUSY else " ")
    return (f"{body:<7}{name:<20}{r.rps:>9,.0f}{r.p50_ms:>8.2f}{r.p90_ms:>8.2f}{r.p99_ms:>8.2f}"
            f"{r.cpu_us:>9,.0f}{r.machine_cpus:>6.2f}{busy:>8}  {note}")


def render(results: list[WrkResult], title: str) -> str:
    """The one table: saturation per body, then latency at half of meterd's rate."""
    by = {(r.target, r.body, r.rate > 0): r for r in results}
    head = (f"{'body':<7}{'target':<20}{'req/s':>9}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}"
            f"{'CPU us':>9}{'busy':>6}{'other':>8}  ")
    lines = [title, "", "saturation (closed loop, 64 connections)", head + "vs bare",
             "-" * (len(head) + 18)]
    for body in ("small", "large"):
        bare = by.get(("bare proxy", body, False))
        one = by.get(("meterd", body, False))
        for name in ("direct to mock", "bare proxy", "meterd", "meterd, bearer",
                     "meterd --workers 2"):
            r = by.get((name, body, False))
            if r is None:
                continue
            note = ""
            if name == "meterd" and bare:
                note = f"{r.rps / bare.rps:.1%}"
            elif name == "meterd, bearer" and one:
                note = f"CPU {r.cpu_us / one.cpu_us - 1:+.1%} vs the key"
            elif name == "meterd --workers 2" and one:
                note = f"{r.rps / one.rps:.2f}x one meterd (ceiling {_ceiling(one):.2f}x)"
            lines.append(_row(body, name, r, note))
    if any(r.rate > 0 for r in results):
        lines += ["", "open loop at half of meterd's saturation rate, 64 connections",
                  head + "meterd - bare", "-" * (len(head) + 18)]
        for body in ("small", "large"):
            bare = by.get(("bare proxy", body, True))
            for name in ("bare proxy", "meterd"):
                r = by.get((name, body, True))
                if r is None:
                    continue
                note = ""
                if name == "meterd" and bare:
                    note = (f"p50 {r.p50_ms - bare.p50_ms:+.2f} ms, "
                            f"p99 {r.p99_ms - bare.p99_ms:+.2f} ms")
                lines.append(_row(body, name, r, note))
    lines += ["", "CPU us: CPU time of the target's processes per request. busy: CPUs' worth of "
              f"work on the whole machine (of {os.cpu_count()}; the mock upstream, Redis and wrk "
              "share them). other: the part of it done by processes outside the benchmark "
              f"('!' above {BUSY}: the machine was busy, numbers are suspect). ceiling: the most "
              "--workers 2 can reach here, all CPUs busy at one meterd's work per request "
              "(CPUs / one meterd's busy)."]
    return "\n".join(lines)


def _ceiling(one: WrkResult) -> float:
    """How many times one meterd's req/s the machine could carry with every CPU busy, if each
    request cost the whole machine what it did with one meterd (wrk, the mock upstream and
    Redis share the CPUs with the workers)."""
    return (os.cpu_count() or 1) / one.machine_cpus if one.machine_cpus else 0.0


def verdicts(results: list[WrkResult]) -> list[str]:
    """The issue's targets, each PASS or MISS, from this run's numbers."""
    by = {(r.target, r.body, r.rate > 0): r for r in results}
    out = []
    for body in ("small", "large"):
        bare, one = by.get(("bare proxy", body, False)), by.get(("meterd", body, False))
        if bare and one:
            ratio = one.rps / bare.rps
            out.append(f"{'PASS' if ratio >= 0.6 else 'MISS'}  {body}: meterd at {ratio:.1%} "
                       "of the bare proxy's req/s (target >= 60%)")
        bearer = by.get(("meterd, bearer", body, False))
        if bearer and one:
            extra = bearer.cpu_us / one.cpu_us - 1
            out.append(f"{'PASS' if extra <= 0.05 else 'MISS'}  {body}: a bearer token costs "
                       f"{extra:+.1%} CPU per request vs a gateway key (target <= +5%)")
        two = by.get(("meterd --workers 2", body, False))
        if two and one:
            ratio = two.rps / one.rps
            out.append(f"{'PASS' if ratio >= 1.6 else 'MISS'}  {body}: --workers 2 at "
                       f"{ratio:.2f}x one worker (target >= 1.6x; this machine's ceiling "
                       f"{_ceiling(one):.2f}x)")
        hb, hm = by.get(("bare proxy", body, True)), by.get(("meterd", body, True))
        if hb and hm:
            d50, d99 = hm.p50_ms - hb.p50_ms, hm.p99_ms - hb.p99_ms
            ok = d50 <= 1 and d99 <= 5
            out.append(f"{'PASS' if ok else 'MISS'}  {body}: at half rate meterd's p50 "
                       f"{d50:+.2f} ms and p99 {d99:+.2f} ms vs bare (targets <= 1 ms, <= 5 ms)")
    return out


def compare(b: Bench, tree: Path, rounds: int) -> list[str]:
    """A/B: this checkout's meterd and `tree`'s on one stack, saturated small-body runs
    alternated, one line per round and the median of the paired differences.

    Each round starts both afresh: two processes of the same code can differ by a few percent
    for their whole lives, so one pair of processes would measure itself. And each goes first
    every other round, so drift within a round cancels out."""
    s, pairs = b.s, []
    for i in range(rounds):
        started = {"meterd": ROOT, "meterd (against)": tree}
        ports = {target: free_port() for target in started}
        procs = [s.start_meterd(ports[target], name=TARGET_PROCESS[target], tree=checkout)
                 for target, checkout in started.items()]
        order = list(started) if i % 2 == 0 else list(started)[::-1]
        done = {target: b.saturate(target, ports[target], "small") for target in order}
        pairs.append((done["meterd"], done["meterd (against)"]))
        for proc in procs:
            s.stop(proc)
    head = f"{'round':<7}{'this: req/s':>12}{'CPU us':>8}{'against: req/s':>16}{'CPU us':>8}"
    lines = [f"A/B, small body, saturated: this checkout ({ROOT}) against {tree}", "",
             head + "    CPU us, this - against", "-" * (len(head) + 26)]
    for i, (this, other) in enumerate(pairs, 1):
        lines.append(f"{i:<7}{this.rps:>12,.0f}{this.cpu_us:>8.1f}{other.rps:>16,.0f}"
                     f"{other.cpu_us:>8.1f}    {this.cpu_us - other.cpu_us:+.1f}")
    diffs = sorted(this.cpu_us - other.cpu_us for this, other in pairs)
    median = statistics.median(diffs)
    lines += ["", f"median difference: {median:+.1f} µs of CPU per request "
              f"({median / statistics.median(p[1].cpu_us for p in pairs):+.1%}; rounds from "
              f"{diffs[0]:+.1f} to {diffs[-1]:+.1f}). Compare with an A/A run (a checkout "
              "against itself) before believing a few percent."]
    return lines


def run_suite(b: Bench, smoke: bool) -> None:
    """Saturation per body (the mock, the bare proxy, meterd, two workers), then the bare
    proxy and meterd at half of meterd's rate (`smoke`: bare and meterd saturated only)."""
    s = b.s
    for body in ("small", "large"):
        if not smoke:
            b.saturate("direct to mock", s.mock_port, body, metered=False, key=MOCK_KEY)
        b.saturate("bare proxy", s.bare_port, body, metered=False)
        b.saturate("meterd", s.meterd_port, body)
        b.saturate("meterd, bearer", s.meterd_port, body, key=s.bearer)
        if not smoke:
            port = free_port()
            workers = s.start_meterd(port, workers=2)
            try:
                b.saturate("meterd --workers 2", port, body)
            finally:
                s.stop(workers)
    if not smoke:
        for body in ("small", "large"):
            meterd = next(r for r in b.results if r.target == "meterd" and r.body == body)
            rate = round(meterd.rps / 2)
            b.run("bare proxy", s.bare_port, body, rate=rate, metered=False)
            b.run("meterd", s.meterd_port, body, rate=rate)


def serve(log_level: str) -> int:
    with stack(log_level) as s:
        s.workdir.joinpath("small.json").write_bytes(small_body())
        s.workdir.joinpath("large.json").write_bytes(large_body())
        s.workdir.joinpath("headers.txt").write_text(
            "".join(f"{k}: {v}\n" for k, v in HEADERS.items()))
        print(f"workdir {s.workdir}\nredis  {s.redis_url}\nmock   {s.url(s.mock_port)}\n"
              f"bare   {s.url(s.bare_port)}\nmeterd {s.url(s.meterd_port)} "
              f"(pid {s.meterd_pid})\nkey    {s.key}", flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    return 0


def main(argv: list[str] | None = None, on: Stack | None = None) -> int:
    """The command line; `on`: run on this already started stack (its log level holds)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, help="seconds per run (default 10; quick 3)")
    parser.add_argument("--quick", action="store_true", help="3 s runs, no warm-up runs")
    parser.add_argument("--smoke", action="store_true",
                        help="1 s runs of the bare proxy and meterd only (CI)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--log-level", default="info",
                        help="meterd's log level (info writes the access log; default info)")
    parser.add_argument("--against", type=Path, metavar="TREE",
                        help="A/B: compare with meterd run from this other checkout")
    parser.add_argument("--sentinel", action="store_true",
                        help="meterd finds Redis through three Sentinels (and a replica)")
    parser.add_argument("--rounds", type=int, default=10, help="A/B rounds (default 10)")
    parser.add_argument("--serve", action="store_true",
                        help="start the stack, print its URLs and key, wait for Ctrl-C "
                             "(for profiling by hand)")
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.log_level)
    duration = args.duration or (1 if args.smoke else 3 if args.quick else 10)
    warmup = 0 if (args.quick or args.smoke) else 2

    with stack_or(on, args.log_level, args.sentinel) as s:
        files = {"small": s.workdir / "small.json", "large": s.workdir / "large.json"}
        files["small"].write_bytes(small_body())
        files["large"].write_bytes(large_body())
        headers_file = s.workdir / "headers.txt"
        headers_file.write_text("".join(f"{k}: {v}\n" for k, v in HEADERS.items()))
        b = Bench(s, duration, warmup, files, headers_file)
        sizes = {name: path.stat().st_size for name, path in files.items()}
        print(f"bench: {os.cpu_count()} CPUs, {duration} s per run, wrk -t1 -c{CONNECTIONS}, "
              f"bodies {sizes['small']:,} B and {sizes['large']:,} B", file=sys.stderr)
        if args.against:
            print("\n".join(compare(b, args.against.resolve(), args.rounds)))
        else:
            run_suite(b, smoke=args.smoke)
            title = (f"meterd benchmark: {os.cpu_count()} CPUs, {duration} s per run, "
                     f"bodies {sizes['small']:,} B / {sizes['large']:,} B, "
                     "stream: true, mock upstream")
            print(render(b.results, title))
            print()
            for line in verdicts(b.results):
                print(line)
            print("\nRedis CPU per request (INFO cpu user+sys delta / requests; the primary):")
            for r in b.results:
                if r.events is not None:
                    print(f"  {r.body:<7}{r.target:<20}{r.redis_cpu_us:>7.1f} us")
        total = sum(r.requests for r in b.results if r.events is not None)
        events = sum(r.events or 0 for r in b.results)
        if b.unmetered:
            print("\nFAILED: not every request was answered and metered:")
            for line in b.unmetered:
                print("  " + line)
        else:
            print(f"\nmetering: every request through meterd was answered 2xx and metered "
                  f"({total:,} requests in the table, {events:,} usage events in "
                  f"{EVENTS}; warm-up runs checked too)")
        if args.json:
            args.json.write_bytes(orjson.dumps({
                "duration": duration, "results": [asdict(r) for r in b.results],
                "unmetered": b.unmetered}, option=orjson.OPT_INDENT_2))
    return 1 if b.unmetered else 0


if __name__ == "__main__":
    sys.exit(main())
