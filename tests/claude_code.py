"""Claude Code itself, the pinned binary `.ci/run` installs, run as a developer runs it."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import need

CLAUDE = Path(os.environ.get("MTD_CLAUDE_BIN", Path.home() / ".cache/meterd/claude-code/"
                             "node_modules/.bin/claude"))
# Nothing but what the test is about leaves the machine (a test opts back in by its env).
QUIET = {"DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
         "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}


def need_claude() -> None:
    """Skip (fail under CI=true) when the pinned Claude Code or its node is missing."""
    need(CLAUDE.exists(), f"Claude Code is not installed at {CLAUDE} (.ci/run installs "
                          "@anthropic-ai/claude-code there; or set MTD_CLAUDE_BIN)")
    need(shutil.which("node") is not None or CLAUDE.resolve().suffix != ".js",
         "node is not installed")


@dataclass(frozen=True)
class Run:
    code: int
    output: str  # stdout then stderr
    debug: str  # the --debug-file, when asked for


async def claude_p(home: Path, env: Mapping[str, str], *,
                   model: str | None = "claude-sonnet-4-6", debug: bool = False,
                   cwd: Path | None = None, timeout: float = 120) -> Run:
    """`claude -p "Say hello"` with `home` as HOME and CLAUDE_CONFIG_DIR=`home`/.claude, and
    only PATH from this process's environment besides `env`."""
    need_claude()
    home.mkdir(parents=True, exist_ok=True)
    debug_file = home / "debug.log"
    debug_file.unlink(missing_ok=True)
    args = [str(CLAUDE), "-p", "Say hello", *(["--model", model] if model else []),
            *(["--debug-file", str(debug_file)] if debug else [])]
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd or home, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(home),
             "CLAUDE_CONFIG_DIR": str(home / ".claude"), **env})
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Run(proc.returncode, (out + err).decode(),
               debug_file.read_text() if debug and debug_file.exists() else "")
