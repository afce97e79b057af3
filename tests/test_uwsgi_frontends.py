"""The uwsgi front-ends (tests/frontends.py) against the capture backend: what they accept back.

nginx ``uwsgi_pass`` and Apache mod_proxy_uwsgi reach a uwsgi backend over a Unix socket
and over TCP, and take the response head as docs/uwsgi-frontends.md says: the core's
HTTP/1.1 status line from both, ``Status:`` from nginx only, and a 101 as a tunnel in
nginx. (The captures themselves are checked in tests/test_uwsgi.py.)
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator

import pytest
from frontends import (
    HTTP_TIMEOUT,
    UWSGI_CAPTURE_RESPONSE,
    UWSGI_FRONTENDS,
    CaptureBackend,
    read_uwsgi_request,
    socket_dir,
)

from trioscgi import uwsgi

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def backend_for(
    kind: str,
    response: bytes = UWSGI_CAPTURE_RESPONSE,
    then: Callable[[socket.socket], None] | None = None,
) -> Iterator[CaptureBackend]:
    """A uwsgi capture backend on a Unix socket a front-end worker can reach, or on TCP."""
    kwargs = {"read": read_uwsgi_request, "response": response, "then": then}
    if kind == "tcp":
        with CaptureBackend(**kwargs) as backend:  # type: ignore[arg-type]
            yield backend
    else:
        with socket_dir() as d, CaptureBackend(f"unix:{d}/uwsgi.sock", **kwargs) as backend:  # type: ignore[arg-type]
            yield backend


def environ_of(raw: bytes) -> dict[bytes, bytes]:
    conn = uwsgi.Connection()
    conn.receive_data(raw)
    request = conn.next_event()
    assert isinstance(request, uwsgi.Request)
    return dict(request.environ)


@pytest.mark.parametrize("kind", ["unix", "tcp"])
@pytest.mark.parametrize("name", sorted(UWSGI_FRONTENDS))
def test_every_front_end_reaches_the_backend(name: str, kind: str) -> None:
    with backend_for(kind) as backend, UWSGI_FRONTENDS[name](backend.backend) as fe:
        for variant, prefix in fe.variants.items():
            resp = fe.get(f"{prefix}/x?y=1")
            assert (resp.status, resp.body) == (200, b"captured\n"), (variant, fe.log_text())
            [raw] = backend.pop_all()
            environ = environ_of(raw)
            assert environ[b"REQUEST_URI"] == f"{prefix}/x?y=1".encode(), variant
        assert backend.errors == []


BODY = b"not here\n"
CORE_HEAD = uwsgi.response_head(
    uwsgi.Response(
        status=404,
        headers=[
            (b"content-type", b"text/plain"),
            (b"content-length", b"%d" % len(BODY)),
            (b"x-custom", b"kept"),
        ],
    )
)
CGI_HEAD = CORE_HEAD.replace(b"HTTP/1.1 404", b"Status: 404", 1)


@pytest.mark.parametrize(
    ("name", "head", "status"),
    [
        ("nginx", CORE_HEAD, 404),
        # nginx falls back to CGI headers when the first line is no status line.
        ("nginx", CGI_HEAD, 404),
        ("apache", CORE_HEAD, 404),
        # mod_proxy_uwsgi wants "HTTP/#.# ###" first: anything else fails (502).
        ("apache", CGI_HEAD, 502),
    ],
    ids=["nginx-core", "nginx-status", "apache-core", "apache-status"],
)
def test_response_heads(name: str, head: bytes, status: int) -> None:
    assert CORE_HEAD.startswith(b"HTTP/1.1 404 Not Found\r\n")
    with backend_for("tcp", head + BODY) as backend, UWSGI_FRONTENDS[name](backend.backend) as fe:
        resp = fe.get("/missing")
        assert resp.status == status, fe.log_text()
        if status == 404:
            assert resp.reason == "Not Found"
            assert resp.header("X-Custom") == "kept"
            assert resp.body == BODY


def echo(conn: socket.socket) -> None:
    """The backend's side of a tunnel: send back what comes, until EOF (bounded)."""
    for _ in range(1000):
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def test_nginx_tunnels_a_101() -> None:
    # ngx_http_uwsgi_process_header sets u->upgrade on a 101 when the client asked for an
    # upgrade: the bytes then flow both ways, as for WebSocket over SCGI.
    head = uwsgi.response_head(
        uwsgi.Response(
            status=101, headers=[(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]
        )
    )
    with (
        backend_for("tcp", head, then=echo) as backend,
        UWSGI_FRONTENDS["nginx"](backend.backend) as fe,
    ):
        with socket.create_connection(("127.0.0.1", fe.port), timeout=HTTP_TIMEOUT) as s:
            s.sendall(
                b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            got = b""
            while b"\r\n\r\n" not in got and len(got) < 65536:
                data = s.recv(65536)
                assert data, got
                got += data
            response, _, rest = got.partition(b"\r\n\r\n")
            assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), response
            s.sendall(b"through the tunnel")
            while len(rest) < len(b"through the tunnel"):
                data = s.recv(65536)
                assert data, rest
                rest += data
            assert rest == b"through the tunnel"
        [raw] = backend.pop_all()
        assert environ_of(raw)[b"HTTP_UPGRADE"] == b"websocket"
