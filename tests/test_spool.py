"""The settlement spool: replayed by its own process or, after a crash, by another, and never
held back by a line that is not a settlement."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.spool import REJECTED, Spool
from tests.conftest import Gateway
from tests.test_processes import seconds_until_refused


def line(n: int) -> bytes:
    return orjson.dumps({"keys": [f"k{n}"], "args": [n]}) + b"\n"


class Applied(list[int]):
    async def __call__(self, entry: dict[str, Any]) -> None:
        self.append(entry["args"][0])


async def test_a_dead_process_spool_is_replayed_by_another_and_removed(tmp_path: Path) -> None:
    dead = tmp_path / "otherhost-4242.jsonl"
    dead.write_bytes(line(1) + line(2))
    live = tmp_path / "otherhost-4343.jsonl"
    live.write_bytes(line(3))
    spool = Spool(tmp_path)
    applied = Applied()
    with open(live, "rb") as owner:
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live process holds its file
        assert await spool.replay(applied) == 2
    assert applied == [1, 2]
    assert not dead.exists() and live.exists()  # the live one is its owner's to replay
    spool.close()


async def test_lines_that_are_not_settlements_are_set_aside_and_the_rest_replayed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = tmp_path / "otherhost-4242.jsonl"
    torn = b'{"keys": ["k4"], "ar'  # the process died while appending it
    dead.write_bytes(line(1) + b"\x00\x17damaged\n" + line(2) + b"[3]\n" + torn)
    spool = Spool(tmp_path)
    applied = Applied()
    assert await spool.replay(applied) == 2
    assert applied == [1, 2] and not dead.exists()
    assert (tmp_path / REJECTED).read_bytes() == b"\x00\x17damaged\n[3]\n" + torn + b"\n"
    assert "otherhost-4242.jsonl: 3 line(s) are not settlements" in caplog.text
    spool.close()


async def test_a_spool_left_torn_under_our_own_name_takes_new_settlements_whole(
        tmp_path: Path) -> None:
    """A restarted process can get the pid of the one that died mid-line (in a container,
    always): its new settlements must not be glued to the torn line and lost with it."""
    ours = tmp_path / f"{socket.gethostname()}-{os.getpid()}.jsonl"
    ours.write_bytes(line(1) + b'{"keys": ["k2"')
    spool = Spool(tmp_path)
    spool.append({"keys": ["k3"], "args": [3]})
    applied = Applied()
    assert await spool.replay(applied) == 2
    assert applied == [1, 3] and spool.depth == 0
    assert (tmp_path / REJECTED).read_bytes() == b'{"keys": ["k2"\n'
    spool.close()


async def test_a_spool_that_cannot_be_replayed_does_not_stop_policy_updates(
        gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    failed = asyncio.Event()

    async def unreadable() -> int:
        failed.set()
        raise PermissionError("spool directory unreadable")

    monkeypatch.setattr(gateway.proxy.gate, "replay_spool", unreadable)
    await asyncio.wait_for(failed.wait(), 5)  # the maintenance loop has run into it
    key = await gateway.developer()
    catalog = gateway.admin.catalog

    async def revoke() -> None:
        key_id = (await gateway.admin.db(catalog.keys))[0]["id"]
        await gateway.admin.db(catalog.revoke_key, key_id)

    code, _ = await asyncio.wait_for(
        seconds_until_refused(gateway, gateway.url, key, revoke), 5)
    assert code == 401
