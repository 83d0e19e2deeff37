"""The benchmark suite (bench/) runs end to end and every request it sends is metered.

Short runs of the real scripts as subprocesses, exactly as the README tells people to run them.
No timing assertions: the numbers depend on the machine; these tests only prove the suite
works and that meterd metered every request of it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import need

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(script: str, *args: str, out: Path) -> dict[str, Any]:
    need(shutil.which("wrk") is not None, "wrk is not installed (apt-get install wrk)")
    need(shutil.which("redis-server") is not None,
         "redis-server is not installed (apt-get install redis-server)")
    done = subprocess.run([sys.executable, str(BENCH / script), *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=100)
    assert out.exists(), f"{script} wrote no results:\n{done.stdout}\n{done.stderr}"
    print(done.stdout)
    result: dict[str, Any] = orjson.loads(out.read_bytes())
    return result


def test_bench_run_meters_every_request_it_sends(tmp_path: Path) -> None:
    result = _run("run.py", "--smoke", out=tmp_path / "run.json")
    assert result["unmetered"] == []
    meterd = [r for r in result["results"] if r["target"].startswith("meterd")]
    # with the gateway key and with a signed-in developer's bearer token
    assert {(r["target"], r["body"]) for r in meterd} == {
        ("meterd", "small"), ("meterd", "large"),
        ("meterd, bearer", "small"), ("meterd, bearer", "large")}
    for r in result["results"]:
        assert r["requests"] > 0 and r["requests"] == r["sent"]
        assert r["non_2xx"] == 0 and not any(r["errors"].values())
    for r in meterd:
        assert r["events"] == r["requests"]


def test_bench_ab_alternates_two_meterds_and_meters_both(tmp_path: Path) -> None:
    root = BENCH.parent  # against itself: the same code, from a second process
    result = _run("run.py", "--smoke", "--against", str(root), "--rounds", "2",
                  out=tmp_path / "ab.json")
    assert result["unmetered"] == []
    # each goes first in every other round
    assert [r["target"] for r in result["results"]] == [
        "meterd", "meterd (against)", "meterd (against)", "meterd"]
    for r in result["results"]:
        assert r["requests"] > 0 and r["events"] == r["requests"] and r["cpu_us"] > 0


def test_bench_slow_streams_are_all_complete_and_metered(tmp_path: Path) -> None:
    result = _run("slow_streams.py", "--streams", "50", "--duration", "2",
                  out=tmp_path / "slow.json")
    assert result["complete"] == 50 and result["failed"] == 0
    assert result["usage_events"] == result["full_usage_events"] == 50
    assert result["pings"] == 50 * 3  # one a second for 2 s, plus the answer's own


def test_bench_stream_latency_streams_are_all_complete_and_metered(tmp_path: Path) -> None:
    result = _run("stream_latency.py", "--quick", "--streams", "3", "--rounds", "1",
                  out=tmp_path / "latency.json")
    assert result["failed"] == 0 and result["complete"]
    assert result["usage_events"] == result["expected_usage_events"]
