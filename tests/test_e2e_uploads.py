"""End to end: file uploads to asyncio applications behind real nginx, byte for byte.

Django's ASGI handler and Quart (both put on the hosted asyncio loop by ``app_loop =
auto``) take twenty 1 MB multipart uploads in a row, as a browser sends them: one
keep-alive connection to nginx, the body written in pieces. Each view answers with the
sha256 of every file it got. nginx passes them on over SCGI (stock ``scgi_params``) and
over FastCGI keep-conn (``fastcgi_keep_conn on`` + upstream ``keepalive``), both to the
same trioscgi process (the wire is told by the first byte).

Issue 19: an app whose ``receive()`` came before the body got ``http.disconnect`` on
the asyncio loop, and Django answered 500 to most uploads.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from frontends import (
    HTTP_TIMEOUT,
    FrontEnd,
    TrioscgiProcess,
    run_nginx,
    run_nginx_fastcgi,
    run_trioscgi,
)

pytestmark = pytest.mark.e2e

UPLOADS = 20
FILE_SIZE = 1_000_000
PIECE = 16 * 1024  # what a client's socket writes at a time, about


@pytest.fixture(scope="module")
def django_server(e2e_dir: Path) -> Iterator[TrioscgiProcess]:
    """Django's ASGI handler, no app_loop setting (auto: asyncio)."""
    env = {"DJANGO_ASGI_DB": str(e2e_dir / "django.db"), "DJANGO_ASGI_MARKS": str(e2e_dir)}
    with run_trioscgi(
        "django_asgi_app.asgi:application",
        sockdir=e2e_dir,
        logdir=e2e_dir,
        env=env,
        name="django-uploads",
    ) as s:
        yield s
    assert "Traceback" not in s.logs()


@pytest.fixture(scope="module")
def quart_server(e2e_dir: Path) -> Iterator[TrioscgiProcess]:
    """Quart, no app_loop setting (auto: asyncio)."""
    with run_trioscgi(
        "quart_app:app",
        sockdir=e2e_dir,
        logdir=e2e_dir,
        env={"QUART_MARKS": str(e2e_dir)},
        name="quart-uploads",
    ) as s:
        yield s
    assert "Traceback" not in s.logs()


def _nginx_scgi(server: TrioscgiProcess) -> contextlib.AbstractContextManager[FrontEnd]:
    return run_nginx(server.backends["unix"])


def _nginx_fastcgi_keep(server: TrioscgiProcess) -> contextlib.AbstractContextManager[FrontEnd]:
    return run_nginx_fastcgi(server.backends["tcp"], keep_conn=True)


FRONTENDS: dict[str, Callable[[TrioscgiProcess], contextlib.AbstractContextManager[FrontEnd]]] = {
    "nginx-scgi": _nginx_scgi,
    "nginx-fastcgi-keep": _nginx_fastcgi_keep,
}


def multipart(boundary: str, name: str, filename: str, content: bytes) -> bytes:
    """A multipart/form-data body with one text field and one file, as browsers build it."""
    b = boundary.encode()
    return b"".join(
        [
            b"--%s\r\n" % b,
            b'Content-Disposition: form-data; name="note"\r\n\r\n',
            filename.encode() + b"\r\n",
            b"--%s\r\n" % b,
            b'Content-Disposition: form-data; name="%s"; filename="%s"\r\n'
            % (name.encode(), filename.encode()),
            b"Content-Type: application/octet-stream\r\n\r\n",
            content,
            b"\r\n--%s--\r\n" % b,
        ]
    )


def upload_many(fe: FrontEnd) -> None:
    """UPLOADS uploads on one keep-alive connection; each file must arrive whole."""
    conn = http.client.HTTPConnection("127.0.0.1", fe.port, timeout=HTTP_TIMEOUT)
    try:
        for i in range(UPLOADS):
            content = os.urandom(FILE_SIZE)
            boundary = f"----trioscgi{os.urandom(8).hex()}"
            body = multipart(boundary, "f", f"file{i}.bin", content)
            conn.putrequest("POST", "/upload", skip_accept_encoding=True)
            conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            for start in range(0, len(body), PIECE):
                conn.send(body[start : start + PIECE])
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200, (i, resp.status, data[:2000])
            assert json.loads(data) == {
                "files": {"f": {"sha256": hashlib.sha256(content).hexdigest(), "size": FILE_SIZE}},
                "fields": {"note": f"file{i}.bin"},
            }, i
    finally:
        conn.close()


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_django_takes_twenty_1mb_uploads(django_server: TrioscgiProcess, frontend: str) -> None:
    with FRONTENDS[frontend](django_server) as fe:
        upload_many(fe)
    assert "without sending a response" not in django_server.logs()


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_quart_takes_twenty_1mb_uploads(quart_server: TrioscgiProcess, frontend: str) -> None:
    with FRONTENDS[frontend](quart_server) as fe:
        upload_many(fe)
    assert "without sending a response" not in quart_server.logs()
