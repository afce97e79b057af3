"""End to end: real Apache httpd mod_proxy_scgi in front of the real trioscgi process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import e2e_checks as checks
import pytest
from frontends import FrontEnd, TrioscgiProcess, run_apache

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["unix", "tcp"])
def apache(request: pytest.FixtureRequest, starlette_server: TrioscgiProcess) -> Iterator[FrontEnd]:
    with run_apache(starlette_server.backends[request.param]) as fe:
        yield fe


@pytest.fixture(scope="module", params=["unix", "tcp"])
def apache_fastapi(
    request: pytest.FixtureRequest, fastapi_server: TrioscgiProcess
) -> Iterator[FrontEnd]:
    with run_apache(fastapi_server.backends[request.param]) as fe:
        yield fe


@pytest.fixture(scope="module")
def apache_rooted(rooted_server: TrioscgiProcess) -> Iterator[FrontEnd]:
    with run_apache(rooted_server.backends["unix"]) as fe:
        yield fe


def test_routes(apache: FrontEnd) -> None:
    checks.check_routes(apache, "")
    checks.check_query(apache, "")


def test_whole_path_script_name_is_not_root_path(apache: FrontEnd) -> None:
    # Apache sends SCRIPT_NAME = the whole decoded path and no PATH_INFO.
    checks.check_paths(apache, "", root_path="")
    got = checks.json_of(apache.get("/echo/a%2Fb"))  # AllowEncodedSlashes NoDecode
    assert (got["path"], got["raw_path"], got["root_path"]) == ("/echo/a/b", "/echo/a%2Fb", "")


def test_prefix_needs_root_path_flag(apache: FrontEnd, apache_rooted: FrontEnd) -> None:
    # ProxyPass /app/ cannot tell the app its mount point: without --root-path
    # the app sees /app/... as its own routes (404); with it, root_path is /app.
    assert apache.get("/app/echo/x").status == 404
    checks.check_paths(apache_rooted, "/app", root_path="/app")


def test_forms_and_bodies(apache: FrontEnd) -> None:
    checks.check_form_urlencoded(apache, "")
    checks.check_form_multipart(apache, "")


def test_chunked_request_is_refused_by_apache(apache: FrontEnd) -> None:
    # mod_proxy_scgi answers 411 itself; the server must shrug off the empty connection.
    resp = apache.request("POST", "/body", body=[b"abc"], chunked=True)
    assert resp.status == 411
    assert apache.get("/").status == 200


def test_large_body(apache: FrontEnd) -> None:
    checks.check_large_body(apache, "")


def test_streaming(apache: FrontEnd) -> None:
    checks.check_streaming(apache, "")


def test_duplicate_headers(apache: FrontEnd) -> None:
    checks.check_duplicate_headers(apache, "", joined=True)


def test_client_abort_mid_stream(apache: FrontEnd, e2e_dir: Path) -> None:
    checks.check_client_abort(apache, "", e2e_dir)


def test_fastapi(apache_fastapi: FrontEnd) -> None:
    checks.check_fastapi(apache_fastapi, "")


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_sigterm_completes_request_in_flight(transport: str, e2e_dir: Path) -> None:
    checks.check_sigterm_in_flight(run_apache, transport, e2e_dir)
