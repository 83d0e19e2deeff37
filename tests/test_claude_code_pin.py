"""Claude Code is pinned once, in `.ci/run` (CLAUDE_VERSION): the binary the tests run and the
version the README describes are that one."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.claude_code import CLAUDE, need_claude

ROOT = Path(__file__).resolve().parent.parent


def pinned_version() -> str:
    found = re.findall(r"^CLAUDE_VERSION=(\S+)$", (ROOT / ".ci/run").read_text(), re.MULTILINE)
    assert len(found) == 1, f".ci/run should set CLAUDE_VERSION once: {found}"
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", found[0]), found[0]
    return found[0]


def test_the_readme_describes_the_claude_code_version_ci_pins() -> None:
    # "Claude Code 2.1.332 does …" states what the pinned version does; a minimum such as
    # "Claude Code (2.1.327 or newer)" is not a pin.
    stated = set(re.findall(r"Claude Code ([0-9]+\.[0-9]+\.[0-9]+)",
                            (ROOT / "README.md").read_text()))
    assert stated == {pinned_version()}


def test_the_claude_code_the_tests_run_is_the_version_ci_pins() -> None:
    need_claude()
    out = subprocess.run([str(CLAUDE), "--version"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.split()[0] == pinned_version(), out
