"""Shared pytest fixtures.

End-to-end fixtures start the real ``python -m trioscgi`` process (tests/frontends.py)
once per test module; each e2e module puts its front-end in front of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from frontends import TrioscgiProcess, run_trioscgi, socket_dir


@pytest.fixture(scope="module")
def e2e_dir() -> Iterator[Path]:
    """A directory for Unix sockets and server logs that front-end workers can reach."""
    with socket_dir() as d:
        yield d


@pytest.fixture(scope="module")
def starlette_server(e2e_dir: Path) -> Iterator[TrioscgiProcess]:
    """trioscgi serving tests/apps/starlette_app.py on a Unix socket and on TCP."""
    with run_trioscgi("starlette_app:app", sockdir=e2e_dir, logdir=e2e_dir, name="starlette") as s:
        yield s


@pytest.fixture(scope="module")
def rooted_server(e2e_dir: Path) -> Iterator[TrioscgiProcess]:
    """Like ``starlette_server`` but with ``--root-path /app`` (front-ends that can't say it)."""
    with run_trioscgi(
        "starlette_app:app",
        sockdir=e2e_dir,
        logdir=e2e_dir,
        args=["--root-path", "/app"],
        name="rooted",
    ) as s:
        yield s


@pytest.fixture(scope="module")
def fastapi_server(e2e_dir: Path) -> Iterator[TrioscgiProcess]:
    """trioscgi serving tests/apps/fastapi_app.py on a Unix socket and on TCP."""
    with run_trioscgi("fastapi_app:app", sockdir=e2e_dir, logdir=e2e_dir, name="fastapi") as s:
        yield s
