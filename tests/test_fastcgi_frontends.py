"""The FastCGI front-end harness (tests/frontends.py) against the capture backend.

Each front-end reaches a FastCGI backend over a Unix socket and over TCP, and behaves on
the connection as docs/fastcgi-frontends.md says: who sets KEEP_CONN, who reuses a
connection, who streams a chunked upload. The captures themselves are checked in
tests/test_scope.py.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fcgi_capture import STDIN, FcgiCaptureBackend, parse_fcgi
from frontends import (
    FASTCGI_FRONTENDS,
    FrontEnd,
    cgi_fcgi,
    python_for_apache_user,
    run_apache_fastcgi,
    run_apache_fcgid,
    run_haproxy_fastcgi,
    run_nginx_fastcgi,
    socket_dir,
)

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent


@contextlib.contextmanager
def backend_for(kind: str) -> Iterator[FcgiCaptureBackend]:
    """A capture backend on a Unix socket a front-end worker can reach, or on TCP."""
    if kind == "tcp":
        with FcgiCaptureBackend() as backend:
            yield backend
    else:
        with socket_dir() as d, FcgiCaptureBackend(f"unix:{d}/fcgi.sock") as backend:
            yield backend


def params_of(raw: bytes) -> dict[bytes, bytes]:
    return dict(parse_fcgi(raw).params)


@pytest.mark.parametrize("kind", ["unix", "tcp"])
@pytest.mark.parametrize("name", sorted(FASTCGI_FRONTENDS))
def test_every_front_end_reaches_the_backend(name: str, kind: str) -> None:
    with backend_for(kind) as backend, FASTCGI_FRONTENDS[name](backend.backend) as fe:
        for variant, prefix in fe.variants.items():
            resp = fe.get(f"{prefix}/x?y=1")
            assert (resp.status, resp.body) == (200, b"captured\n"), (variant, fe.log_text())
            [got] = backend.pop_all()
            params = params_of(got.raw)
            assert params.get(b"HTTP_HOST", b"").startswith(b"127.0.0.1"), variant
            if variant != "noparams":
                assert params[b"REQUEST_URI"] == f"{prefix}/x?y=1".encode()
        assert backend.errors == []


def requests_through(
    run: Callable[..., contextlib.AbstractContextManager[FrontEnd]], count: int, **kwargs: Any
) -> FcgiCaptureBackend:
    """``count`` GETs, one client connection each, through a fresh front-end."""
    with FcgiCaptureBackend() as backend:
        with run(backend.backend, **kwargs) as fe:
            for i in range(count):
                assert fe.get(f"/r{i}").status == 200
        return backend


@pytest.mark.parametrize(
    ("run", "kwargs", "keep", "connections"),
    [
        # Keep-conn needs the config: nginx fastcgi_keep_conn + upstream keepalive.
        (run_nginx_fastcgi, {}, 0, 4),
        (run_nginx_fastcgi, {"keep_conn": True}, 1, 1),
        # Apache mod_proxy_fcgi: enablereuse=on.
        (run_apache_fastcgi, {}, 0, 4),
        (run_apache_fastcgi, {"reuse": True}, 1, 1),
        # HAProxy sets KEEP_CONN by default, but with its default "http-reuse safe" a
        # request on a new client connection never takes an idle backend connection:
        # one backend connection per client connection, each left open.
        (run_haproxy_fastcgi, {}, 1, 4),
        (run_haproxy_fastcgi, {"http_reuse": "always"}, 1, 1),
        (run_haproxy_fastcgi, {"keep_conn": False}, 0, 4),
    ],
)
def test_keep_conn_and_connection_reuse(
    run: Callable[..., contextlib.AbstractContextManager[FrontEnd]],
    kwargs: dict[str, Any],
    keep: int,
    connections: int,
) -> None:
    backend = requests_through(run, 4, **kwargs)
    requests = [parse_fcgi(c.raw) for c in backend.requests]
    assert len(requests) == 4
    assert {r.flags for r in requests} == {keep}
    assert len({c.connection for c in backend.requests}) == connections
    if keep:
        # What the front-end did with the connections it kept: closed them when it
        # stopped (nginx, Apache) or reset them (HAProxy).
        assert set(backend.endings) <= {"eof", "reset"}
    else:
        assert set(backend.endings) == {"done"}


def test_haproxy_request_ids_on_a_reused_connection() -> None:
    backend = requests_through(run_haproxy_fastcgi, 3, http_reuse="always")
    assert [c.request_id for c in backend.requests] == [1, 3, 5]


def test_haproxy_get_values_on_each_new_connection() -> None:
    backend = requests_through(run_haproxy_fastcgi, 2, get_values=True)
    for captured in backend.requests:
        [record] = parse_fcgi(captured.raw).management
        assert b"FCGI_MAX_REQS" in record.content


def big_chunked(fe: FrontEnd, prefix: str = "") -> Any:
    """A 300 kB chunked upload, in 30 chunks."""
    return fe.request("POST", f"{prefix}/big", body=[b"x" * 10_000] * 30, chunked=True)


def test_nginx_unbuffered_streams_chunked_uploads() -> None:
    with FcgiCaptureBackend() as backend, run_nginx_fastcgi(backend.backend) as fe:
        assert big_chunked(fe, "/unbuffered").status == 200
        assert big_chunked(fe).status == 200
        streamed, buffered = (parse_fcgi(c.raw) for c in backend.pop_all())
    assert dict(streamed.params)[b"CONTENT_LENGTH"] == b""
    assert dict(buffered.params)[b"CONTENT_LENGTH"] == b"300000"
    assert len(streamed.stdin) == len(buffered.stdin) == 300_000


def test_apache_streams_a_chunked_upload_without_content_length() -> None:
    # mod_proxy_fcgi gives a small chunked body its CONTENT_LENGTH (the capture), a large
    # one none: the body is the STDIN stream, and HTTP_TRANSFER_ENCODING says chunked.
    with FcgiCaptureBackend() as backend, run_apache_fastcgi(backend.backend) as fe:
        assert big_chunked(fe).status == 200
        [captured] = backend.pop_all()
    request = parse_fcgi(captured.raw)
    params = dict(request.params)
    assert b"CONTENT_LENGTH" not in params
    assert params[b"HTTP_TRANSFER_ENCODING"] == b"chunked"
    assert len(request.stdin) == 300_000
    assert request.records[STDIN] > 2


def test_haproxy_refuses_a_chunked_upload_larger_than_its_buffer() -> None:
    # HAProxy sends CONTENT_LENGTH always; a chunked body that does not fit its buffer
    # gets 400, and the backend sees a connection that closes without a byte.
    with FcgiCaptureBackend() as backend, run_haproxy_fastcgi(backend.backend) as fe:
        # HAProxy may answer and close before the client has sent it all: the client's
        # send then fails, and over loopback the reset can beat the 400 to the client.
        # Whatever the client gets, it is never a success, and the backend gets nothing.
        chunk = b"2710\r\n" + b"x" * 10_000 + b"\r\n"
        request = (
            b"POST /big HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n" + chunk * 30 + b"0\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", fe.port), timeout=15) as s:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(request)
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while data := s.recv(65536):
                    answer += data
        if answer:
            assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert backend.pop_all() == []
        assert fe.request("POST", "/small", body=[b"x" * 100] * 3, chunked=True).status == 200
        [captured] = backend.pop_all()
    assert dict(parse_fcgi(captured.raw).params)[b"CONTENT_LENGTH"] == b"300"


def test_mod_fcgid_spawns_the_command_with_a_socket_on_fd_0() -> None:
    python, env = python_for_apache_user()
    with socket_dir() as outdir:
        outdir.chmod(0o770)  # the application runs as Apache's user, with our group
        command = [python, str(HERE / "fcgi_capture.py"), str(outdir)]
        with run_apache_fcgid(command, env=env) as fe:
            for variant, prefix in fe.variants.items():
                resp = fe.get(f"{prefix}/a/b?c=d")
                assert (resp.status, resp.body) == (200, b"captured\n"), fe.log_text()
                [path] = outdir.glob("*.fcgi")
                params = params_of(path.read_bytes())
                path.unlink()
                assert params[b"SCRIPT_NAME"] == prefix.encode(), variant
                assert params[b"PATH_INFO"] == b"/a/b"
    # mod_fcgid stopped the application with Apache (SIGTERM was enough), and nothing
    # was left to kill.
    assert not fe.app_killed
    assert not fe.left_behind


def test_mod_fcgid_reads_a_chunked_upload_before_it_sends_it() -> None:
    python, env = python_for_apache_user()
    with socket_dir() as outdir:
        outdir.chmod(0o770)
        command = [python, str(HERE / "fcgi_capture.py"), str(outdir)]
        with run_apache_fcgid(command, env=env) as fe:
            assert big_chunked(fe, "/app").status == 200, fe.log_text()
        [path] = outdir.glob("*.fcgi")
        request = parse_fcgi(path.read_bytes())
    assert dict(request.params)[b"CONTENT_LENGTH"] == b"300000"
    assert len(request.stdin) == 300_000


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_cgi_fcgi_sends_exactly_the_environment_it_is_given(kind: str) -> None:
    with backend_for(kind) as backend:
        environ = {"REQUEST_METHOD": "PUT", "REQUEST_URI": "/u", "CONTENT_LENGTH": "5"}
        stdout = cgi_fcgi(backend.backend, environ, b"hello")
        [captured] = backend.pop_all()
    assert stdout.startswith(b"Status: 200 OK\r\n")
    request = parse_fcgi(captured.raw)
    assert dict(request.params) == {k.encode(): v.encode() for k, v in environ.items()}
    assert request.stdin == b"hello"
    assert request.flags == 0
