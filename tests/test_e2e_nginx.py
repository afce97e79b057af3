"""End to end: real nginx in front of the real trioscgi process (Unix socket and TCP)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import e2e_checks as checks
import pytest
from frontends import FrontEnd, TrioscgiProcess, nginx_version, parse_raw_response, run_nginx

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["unix", "tcp"])
def nginx(request: pytest.FixtureRequest, starlette_server: TrioscgiProcess) -> Iterator[FrontEnd]:
    with run_nginx(starlette_server.backends[request.param]) as fe:
        yield fe


@pytest.fixture(scope="module", params=["unix", "tcp"])
def nginx_fastapi(
    request: pytest.FixtureRequest, fastapi_server: TrioscgiProcess
) -> Iterator[FrontEnd]:
    with run_nginx(fastapi_server.backends[request.param]) as fe:
        yield fe


@pytest.fixture(scope="module")
def nginx_rooted(rooted_server: TrioscgiProcess) -> Iterator[FrontEnd]:
    with run_nginx(rooted_server.backends["unix"]) as fe:
        yield fe


@pytest.mark.parametrize("prefix", ["", "/app"], ids=["stock", "prefix"])
def test_routes(nginx: FrontEnd, prefix: str) -> None:
    checks.check_routes(nginx, prefix)
    checks.check_query(nginx, prefix)


def test_stock_scgi_params_path(nginx: FrontEnd) -> None:
    # No SCRIPT_NAME/PATH_INFO in the stock scgi_params: path from REQUEST_URI, root_path "".
    checks.check_paths(nginx, "", root_path="")
    got = checks.json_of(nginx.get("/echo/a%2Fb"))
    assert (got["path"], got["raw_path"]) == ("/echo/a/b", "/echo/a%2Fb")


def test_prefix_location_root_path(nginx: FrontEnd) -> None:
    checks.check_paths(nginx, "/app", root_path="/app")


def test_stock_params_with_root_path_flag(nginx_rooted: FrontEnd) -> None:
    # The app is mounted at /app with the stock location: --root-path says where.
    checks.check_paths(nginx_rooted, "/app", root_path="/app")


def test_no_scgi_params_is_a_clean_400(nginx: FrontEnd) -> None:
    # Without scgi_params nginx sends no REQUEST_METHOD/REQUEST_URI: 400, not a 502.
    assert nginx.get("/noparams/x").status == 400
    assert nginx.get("/").status == 200


@pytest.mark.parametrize("prefix", ["", "/app"], ids=["stock", "prefix"])
def test_forms_and_bodies(nginx: FrontEnd, prefix: str) -> None:
    checks.check_form_urlencoded(nginx, prefix)
    checks.check_form_multipart(nginx, prefix)
    checks.check_chunked_body(nginx, prefix)


def test_large_body(nginx: FrontEnd) -> None:
    checks.check_large_body(nginx, "")


def test_streaming(nginx: FrontEnd) -> None:
    checks.check_streaming(nginx, "")


def test_duplicate_headers(nginx: FrontEnd) -> None:
    # nginx 1.22 (Debian 12) repeats duplicate headers; >= 1.23 joins them.
    checks.check_duplicate_headers(nginx, "", joined=nginx_version() >= (1, 23))


def test_client_abort_mid_stream(nginx: FrontEnd, e2e_dir: Path) -> None:
    checks.check_client_abort(nginx, "", e2e_dir)


@pytest.mark.parametrize("prefix", ["", "/app"], ids=["stock", "prefix"])
def test_fastapi(nginx_fastapi: FrontEnd, prefix: str) -> None:
    checks.check_fastapi(nginx_fastapi, prefix)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_sigterm_completes_request_in_flight(transport: str, e2e_dir: Path) -> None:
    checks.check_sigterm_in_flight(run_nginx, transport, e2e_dir)


def test_client_abort_is_not_logged_as_an_app_error(e2e_dir: Path) -> None:
    checks.check_abort_not_logged_as_error(run_nginx, e2e_dir)


def test_app_failing_mid_stream_is_not_a_complete_response(
    request: pytest.FixtureRequest, nginx: FrontEnd
) -> None:
    # Over TCP trioscgi resets the connection, and nginx aborts its client's
    # chunked response: no terminating chunk. (A Unix socket has no reset;
    # nginx then sees a plain EOF: see docs/deploy-nginx.md.)
    from frontends import raw_http

    reply = raw_http(
        nginx.port, b"GET /broken-stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 200")
    assert b"partial\n" in reply
    complete = reply.endswith(b"\r\n0\r\n\r\n")
    if "tcp" in request.node.callspec.id:
        assert not complete, reply[-200:]


def test_unbuffered_request_body_truncation_is_logged(
    nginx: FrontEnd, starlette_server: TrioscgiProcess
) -> None:
    # With scgi_request_buffering off, nginx < 1.29.6 connects with the head and the part of
    # the body it already has, and says CONTENT_LENGTH = that part. The request is served (we
    # can't know the rest is coming) but the operator is told why bodies come up short.
    with socket.create_connection(("127.0.0.1", nginx.port), timeout=30) as c:
        c.sendall(
            b"POST /unbuffered/body HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Length: 10\r\nConnection: close\r\n\r\n12345"
        )
        if nginx_version() >= (1, 29, 6):
            c.sendall(b"67890")  # fixed nginx waits for the whole body: send it
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    reply = parse_raw_response(data)
    assert reply.status == 200
    size = json.loads(reply.body)["size"]
    warned = "client's Content-Length was '10'" in starlette_server.stderr.read_text()
    if nginx_version() >= (1, 29, 6):
        assert (size, warned) == (10, False)
    else:
        assert (size, warned) == (5, True)
