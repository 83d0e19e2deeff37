"""The benchmark suite (bench/) runs end to end and every request it sends is metered.

Short runs of the real scripts, through their command lines (`main(argv)`), on one stack
(Redis, the mock upstream, the bare proxy, `meterd proxy`) started once for the module: the
scripts started one each otherwise, the most of their time here. No timing assertions: the
numbers depend on the machine; these tests only prove the suite works and that meterd metered
every request of it.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from tests.conftest import need

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _script(name: str) -> ModuleType:
    """A bench script as the scripts import each other (bench/ on the path, top-level names)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return __import__(name)


@pytest.fixture(scope="module")
def stack() -> Iterator[Any]:
    need(shutil.which("wrk") is not None, "wrk is not installed (apt-get install wrk)")
    need(shutil.which("redis-server") is not None,
         "redis-server is not installed (apt-get install redis-server)")
    with _script("run").stack() as s:
        yield s


@pytest.fixture
def bench(stack: Any) -> Callable[..., dict[str, Any]]:
    def run(script: str, *args: str, out: Path) -> dict[str, Any]:
        _script(script).main([*args, "--json", str(out)], on=stack)
        assert out.exists(), f"{script} wrote no results"
        result: dict[str, Any] = orjson.loads(out.read_bytes())
        return result
    return run


def test_bench_run_meters_every_request_it_sends(bench: Any, tmp_path: Path) -> None:
    result = bench("run", "--smoke", out=tmp_path / "run.json")
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


def test_bench_ab_alternates_two_meterds_and_meters_both(bench: Any, tmp_path: Path) -> None:
    root = BENCH.parent  # against itself: the same code, from a second process
    result = bench("run", "--smoke", "--against", str(root), "--rounds", "2",
                   out=tmp_path / "ab.json")
    assert result["unmetered"] == []
    # each goes first in every other round
    assert [r["target"] for r in result["results"]] == [
        "meterd", "meterd (against)", "meterd (against)", "meterd"]
    for r in result["results"]:
        assert r["requests"] > 0 and r["events"] == r["requests"] and r["cpu_us"] > 0


def test_bench_slow_streams_are_all_complete_and_metered(bench: Any, tmp_path: Path) -> None:
    result = bench("slow_streams", "--streams", "50", "--duration", "2",
                   out=tmp_path / "slow.json")
    assert result["complete"] == 50 and result["failed"] == 0
    assert result["usage_events"] == result["full_usage_events"] == 50
    assert result["pings"] == 50 * 3  # one a second for 2 s, plus the answer's own


def test_bench_stream_latency_streams_are_all_complete_and_metered(bench: Any,
                                                                     tmp_path: Path) -> None:
    result = bench("stream_latency", "--quick", "--streams", "3", "--rounds", "1",
                   out=tmp_path / "latency.json")
    assert result["failed"] == 0 and result["complete"]
    assert result["usage_events"] == result["expected_usage_events"]
