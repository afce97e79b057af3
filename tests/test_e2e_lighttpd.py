"""End to end: real lighttpd mod_scgi in front of the real trioscgi process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import e2e_checks as checks
import pytest
from frontends import FrontEnd, TrioscgiProcess, run_lighttpd

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["unix", "tcp"])
def lighttpd(
    request: pytest.FixtureRequest, starlette_server: TrioscgiProcess
) -> Iterator[FrontEnd]:
    with run_lighttpd(starlette_server.backends[request.param]) as fe:
        yield fe


@pytest.fixture(scope="module", params=["unix", "tcp"])
def lighttpd_fastapi(
    request: pytest.FixtureRequest, fastapi_server: TrioscgiProcess
) -> Iterator[FrontEnd]:
    with run_lighttpd(fastapi_server.backends[request.param]) as fe:
        yield fe


@pytest.mark.parametrize("prefix", ["", "/app"], ids=["root", "prefix"])
def test_routes(lighttpd: FrontEnd, prefix: str) -> None:
    checks.check_routes(lighttpd, prefix)
    checks.check_query(lighttpd, prefix)


def test_root_mount_path(lighttpd: FrontEnd) -> None:
    # "/" with fix-root-scriptname: SCRIPT_NAME "" and PATH_INFO = the whole path.
    checks.check_paths(lighttpd, "", root_path="")


def test_prefix_mount_root_path(lighttpd: FrontEnd) -> None:
    # "/app": SCRIPT_NAME "/app", PATH_INFO the rest -> root_path "/app".
    checks.check_paths(lighttpd, "/app", root_path="/app")


@pytest.mark.parametrize("prefix", ["", "/app"], ids=["root", "prefix"])
def test_forms_and_bodies(lighttpd: FrontEnd, prefix: str) -> None:
    checks.check_form_urlencoded(lighttpd, prefix)
    checks.check_form_multipart(lighttpd, prefix)
    checks.check_chunked_body(lighttpd, prefix)


def test_large_body(lighttpd: FrontEnd) -> None:
    checks.check_large_body(lighttpd, "")


def test_streaming(lighttpd: FrontEnd) -> None:
    checks.check_streaming(lighttpd, "")


def test_duplicate_headers(lighttpd: FrontEnd) -> None:
    checks.check_duplicate_headers(lighttpd, "", joined=True)


def test_client_abort_mid_stream(lighttpd: FrontEnd, e2e_dir: Path) -> None:
    checks.check_client_abort(lighttpd, "", e2e_dir)


@pytest.mark.parametrize("prefix", ["", "/app"], ids=["root", "prefix"])
def test_fastapi(lighttpd_fastapi: FrontEnd, prefix: str) -> None:
    checks.check_fastapi(lighttpd_fastapi, prefix)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_sigterm_completes_request_in_flight(transport: str, e2e_dir: Path) -> None:
    checks.check_sigterm_in_flight(run_lighttpd, transport, e2e_dir)
