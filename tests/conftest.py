"""Shared pytest fixtures, and how the test files are named.

End-to-end fixtures start the real ``python -m trioscgi`` process (tests/frontends.py)
once per test module; each e2e module puts its front-end in front of them.

Test files mirror modules (STYLE.md), by this scheme:

- ``test_<module>.py`` for the module's last name, wherever it lives in the package:
  ``_apps/apploop.py`` -> test_apploop.py, ``_daemon/supervisor.py`` ->
  test_supervisor.py, ``_importer.py`` -> test_importer.py, ``_asgi/scope.py`` ->
  test_scope.py. The wing (``_apps``, ``_daemon``...) is not in the name: the last name
  is unique in the package.
- ``test_<wing>_<module>.py`` where the last name alone is ambiguous or says too little:
  a wire is named like its core (``_wire/scgi.py`` -> test_wire_scgi.py, beside the
  core's tests), and ``_asgi/http.py`` -> test_asgi_http.py.
- ``test_<module>_<topic>.py`` when one module's tests are split by topic
  (test_scope_tls.py: the scope's ``tls`` extension).
- Scenario files are named by what they do, not by a module, and that is fine:
  test_e2e_*.py (real front-ends end to end), test_hostile*.py (bad peers, per wire),
  test_*_frontends.py (the front-end harness), test_systemd.py, test_architecture.py
  (the layers), conformance/ (one suite over every front-end and wire).
- Helpers that are not tests carry no ``test_`` prefix: scgi_client.py, fcgi_client.py,
  frontends.py, wsgi_harness.py...

Two names predate the scheme and are left while other work edits them:
test_protocol.py tests the SCGI core ``scgi/`` (its old name ``protocol``; by the scheme,
test_scgi.py) and test_fastcgi_wire.py tests ``_wire/fastcgi.py`` (test_wire_fastcgi.py).
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
