"""A free TCP port, for the demo's mock upstream, the tests and the benchmarks."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (the OS's pick; another process may
    take it before the caller binds it, which a test or a demo can live with)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
