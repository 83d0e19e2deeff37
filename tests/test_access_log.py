"""The access log (proxy/access_log.py): one JSON line per request with exactly the fields
it lists, in order, the lines of a flush interval in one write."""

from __future__ import annotations

import asyncio
import io

import orjson
import pytest

from ledger.settlement import Settlement
from proxy import access_log
from proxy.access_log import FIELDS, AccessLog


class CountingStream(io.StringIO):
    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def event(n: int) -> Settlement:
    """A settlement: the logged fields plus ones that must stay out of the log."""
    return Settlement(**{name: f"{name}-{n}" for name in FIELDS}, price_row="x", agent_id="a")


@pytest.fixture(autouse=True)
def quick_flushes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access_log, "FLUSH_INTERVAL", 0.01)


async def test_lines_finished_within_the_interval_are_written_together() -> None:
    stream = CountingStream()
    log = AccessLog(stream)
    for i in range(5):
        log.write(event(i))
        await asyncio.sleep(0)
    assert stream.getvalue() == ""  # not yet: when the interval is up
    await asyncio.sleep(0.05)
    lines = stream.getvalue().splitlines()
    assert [orjson.loads(line) for line in lines] == [
        {name: f"{name}-{i}" for name in FIELDS} for i in range(5)]
    assert stream.writes == 1
    log.write(event(5))
    await asyncio.sleep(0.05)
    assert orjson.loads(stream.getvalue().splitlines()[-1])["id"] == "id-5"
    assert stream.writes == 2


async def test_a_flood_is_written_in_bounded_batches(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access_log, "_MAX_LINES", 3)
    stream = CountingStream()
    log = AccessLog(stream)
    for i in range(7):
        log.write(event(i))
    assert stream.writes == 2  # lines 0-2 and 3-5, before the interval is up
    await asyncio.sleep(0.05)
    assert [orjson.loads(line)["id"] for line in stream.getvalue().splitlines()] == [
        f"id-{i}" for i in range(7)]
    assert stream.writes == 3


async def test_flush_writes_what_is_queued_and_stderr_is_the_default(
        capsys: pytest.CaptureFixture[str]) -> None:
    log = AccessLog()  # sys.stderr as it is when written: pytest's capture here
    log.write(event(1))
    log.flush()  # what the proxy does at shutdown, after the last settlement
    assert orjson.loads(capsys.readouterr().err) == {name: f"{name}-1" for name in FIELDS}
    await asyncio.sleep(0.05)  # the scheduled flush finds nothing more to write
    assert capsys.readouterr().err == ""
