"""`meterd` run as an operator types it, on a data directory of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import MOCK_KEY


def operator_cli(data_dir: Path) -> Callable[..., str]:
    """A function that runs `meterd *args` on `data_dir` (embedded Redis), asserts its exit
    code (`code`, 0 unless given) and returns what it printed, stdout then stderr."""
    env = {**os.environ, "MTD_DATA_DIR": str(data_dir), "MTD_LOG_LEVEL": "warning",
           "MTD_UPSTREAM_KEY": MOCK_KEY}

    def cli(*args: str, code: int = 0) -> str:
        done = subprocess.run([sys.executable, "-m", "meterd.cli", *args], env=env,
                              capture_output=True, timeout=60)
        assert done.returncode == code, done.stderr.decode()
        return (done.stdout + done.stderr).decode()
    return cli
