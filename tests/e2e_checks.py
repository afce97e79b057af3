"""Checks shared by the end-to-end tests of every front-end (tests/test_e2e_*.py).

Each takes a running front-end (tests/frontends.py) in front of the real trioscgi
process and the URL prefix of the mount to use.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from frontends import (
    HTTP_TIMEOUT,
    FrontEnd,
    HTTPResponse,
    backend_address,
    connectable,
    http_request,
    start_trioscgi,
    stop_process,
)

WAIT_LIMIT = 20.0


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT_LIMIT) -> None:
    """Poll ``predicate`` (bounded) until true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)  # polling interval, not a timing assumption


def json_of(resp: HTTPResponse) -> Any:
    assert resp.status == 200, (resp.status, resp.body[:2000])
    return json.loads(resp.body)


# --------------------------------------------------------------------------- Starlette


def check_routes(fe: FrontEnd, prefix: str) -> None:
    """Routing with path params, 404, lifespan state, app errors -> 500."""
    r = fe.get(f"{prefix}/")
    assert (r.status, r.body) == (200, b"hello, world\n")
    assert r.header("content-type") == "text/plain; charset=utf-8"
    assert json_of(fe.get(f"{prefix}/items/42")) == {"item_id": 42, "kind": "int"}
    assert fe.get(f"{prefix}/items/not-an-int").status == 404
    assert fe.get(f"{prefix}/no/such/route").status == 404
    assert json_of(fe.get(f"{prefix}/state")) == {"greeting": "hello from lifespan"}
    assert fe.get(f"{prefix}/fail").status == 500


def check_query(fe: FrontEnd, prefix: str) -> None:
    """The query string arrives raw, repeated keys and all."""
    got = json_of(fe.get(f"{prefix}/echo/q?a=1&b=two%20words&a=3&empty=&plus=x+y"))
    assert got["query_string"] == "a=1&b=two%20words&a=3&empty=&plus=x+y"
    assert got["query"] == [
        ["a", "1"],
        ["b", "two words"],
        ["a", "3"],
        ["empty", ""],
        ["plus", "x y"],
    ]
    assert got["method"] == "GET"
    assert got["http_version"] in ("1.0", "1.1")
    assert got["scheme"] == "http"


def check_paths(fe: FrontEnd, prefix: str, *, root_path: str) -> None:
    """path includes root_path; raw_path is raw; Starlette routes on path minus root_path."""
    got = json_of(fe.get(f"{prefix}/echo/some/where?x=1"))
    assert got["root_path"] == root_path
    assert got["path"] == f"{prefix}/echo/some/where"
    assert got["raw_path"] == f"{prefix}/echo/some/where"
    assert got["rest"] == "some/where"
    assert got["url_for_hello"].endswith(f"{root_path}/")
    # Percent-encoded UTF-8: path decoded, raw_path kept as sent.
    got = json_of(fe.get(f"{prefix}/echo/caf%C3%A9"))
    assert got["path"] == f"{prefix}/echo/café"
    assert got["raw_path"] == f"{prefix}/echo/caf%C3%A9"
    assert got["root_path"] == root_path


def check_form_urlencoded(fe: FrontEnd, prefix: str) -> None:
    resp = fe.request(
        "POST",
        f"{prefix}/form",
        headers=[("Content-Type", "application/x-www-form-urlencoded")],
        body=b"name=trio+scgi&empty=&utf8=caf%C3%A9&amp=a%26b",
    )
    assert json_of(resp) == {"name": "trio scgi", "empty": "", "utf8": "café", "amp": "a&b"}


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[str, bytes]:
    """(content type, body) of a multipart/form-data request."""
    boundary = "----trioscgi-e2e-boundary-7d9f"
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, (filename, content) in files.items():
        parts.append(
            (
                f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + content
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def check_form_multipart(fe: FrontEnd, prefix: str) -> None:
    content = os.urandom(300 * 1024)
    ctype, body = multipart({"title": "an upload"}, {"upload": ("data.bin", content)})
    got = json_of(
        fe.request("POST", f"{prefix}/form", headers=[("Content-Type", ctype)], body=body)
    )
    assert got == {
        "title": "an upload",
        "upload": {
            "filename": "data.bin",
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
        },
    }


def check_large_body(fe: FrontEnd, prefix: str, size: int = 8 * 1024 * 1024) -> None:
    """A body much larger than any buffer on the way arrives whole and in order."""
    content = os.urandom(size)
    got = json_of(
        fe.request(
            "POST",
            f"{prefix}/body",
            headers=[("Content-Type", "application/octet-stream")],
            body=content,
        )
    )
    assert got["size"] == size
    assert got["sha256"] == hashlib.sha256(content).hexdigest()


def check_chunked_body(fe: FrontEnd, prefix: str) -> None:
    """A chunked request body (nginx and lighttpd de-chunk it; Apache answers 411)."""
    chunks = [b"hello ", b"chunked ", b"world"]
    got = json_of(fe.request("POST", f"{prefix}/body", body=chunks, chunked=True))
    assert got["size"] == len(b"".join(chunks))
    assert got["sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()


def check_streaming(fe: FrontEnd, prefix: str) -> None:
    resp = fe.get(f"{prefix}/stream?n=200")
    assert resp.status == 200
    assert resp.body == b"".join(f"chunk {i}\n".encode() for i in range(200))


def check_duplicate_headers(fe: FrontEnd, prefix: str, *, joined: bool) -> None:
    """Repeated request headers reach the app (repeated by nginx < 1.23, else joined)."""
    got = json_of(
        fe.get(
            f"{prefix}/echo/h",
            headers=[("X-Dup", "first"), ("X-Other", "o"), ("X-Dup", "second")],
        )
    )
    dups = [v for k, v in got["headers"] if k == "x-dup"]
    assert dups == (["first, second"] if joined else ["first", "second"])
    assert ["x-other", "o"] in got["headers"]


def check_client_abort(fe: FrontEnd, prefix: str, tmp: Path) -> None:
    """The client closes mid-stream: the app learns of it; the server keeps serving."""
    marker = tmp / f"abort-{fe.name}-{time.monotonic_ns()}"
    request = (f"GET {prefix}/endless?marker={marker} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", fe.port), timeout=HTTP_TIMEOUT) as s:
        s.sendall(request)
        received = 0
        while received < 256 * 1024:  # well into the stream
            data = s.recv(65536)
            assert data, "stream ended before the client aborted"
            received += len(data)
        # RST rather than FIN, like a browser tab closing mid-download.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    wait_for(marker.exists, f"the app to see the disconnect (marker {marker})")
    # The server is still serving, with every listener.
    for _ in range(3):
        assert fe.get(f"{prefix}/").status == 200


# --------------------------------------------------------------------------- FastAPI


def check_fastapi(fe: FrontEnd, prefix: str) -> None:
    assert json_of(fe.get(f"{prefix}/items/5?q=hello")) == {"item_id": 5, "q": "hello"}
    assert json_of(fe.get(f"{prefix}/items/6")) == {"item_id": 6, "q": None}
    bad = fe.get(f"{prefix}/items/five")
    assert bad.status == 422
    assert bad.header("content-type") == "application/json"
    body = json.dumps({"name": "widget", "price": 2.5, "tags": ["a", "b"]}).encode()
    got = json_of(
        fe.request(
            "POST",
            f"{prefix}/items?quantity=4",
            headers=[("Content-Type", "application/json")],
            body=body,
        )
    )
    assert got == {"name": "widget", "total": 10.0, "tags": ["a", "b"]}
    invalid = fe.request(
        "POST",
        f"{prefix}/items",
        headers=[("Content-Type", "application/json")],
        body=b'{"name": "widget"}',
    )
    assert invalid.status == 422
    assert json_of(fe.get(f"{prefix}/users/ann/greet?excited=true")) == {"message": "hello ann!"}


# --------------------------------------------------------------------------- SIGTERM


def check_sigterm_in_flight(
    run_frontend: Callable[[str], Any], transport: str, sockdir: Path, prefix: str = ""
) -> None:
    """SIGTERM while a request is in flight: it completes, the listeners close,
    lifespan shutdown runs, and the process exits 0."""
    tag = f"sigterm-{transport}-{time.monotonic_ns()}"
    started, release = sockdir / f"{tag}.started", sockdir / f"{tag}.release"
    shutdown_marker = sockdir / f"{tag}.shutdown"
    server = start_trioscgi(
        "starlette_app:app",
        sockdir=sockdir,
        logdir=sockdir,
        env={"E2E_SHUTDOWN_MARKER": str(shutdown_marker)},
        name=tag,
    )
    try:
        with run_frontend(server.backends[transport]) as fe:
            result: dict[str, Any] = {}

            def client() -> None:
                try:
                    result["resp"] = http_request(
                        fe.port, "GET", f"{prefix}/wait?started={started}&release={release}"
                    )
                except BaseException as e:
                    result["error"] = e

            t = threading.Thread(target=client)
            t.start()
            try:
                wait_for(started.exists, "the request to reach the app")
                server.proc.send_signal(signal.SIGTERM)
                # Shutdown begins by closing the listeners (and removing our socket file).
                unix_path = Path(server.backends["unix"][len("unix:") :])
                wait_for(lambda: not unix_path.exists(), "the socket file to be removed")
                tcp = backend_address(server.backends["tcp"])
                wait_for(lambda: not connectable(tcp), "the TCP listener to close")
                assert server.proc.poll() is None, "exited with a request in flight"
                release.touch()
            finally:
                release.touch()
                t.join(HTTP_TIMEOUT + 5)
            assert "error" not in result, result
            resp = result["resp"]
            assert (resp.status, resp.body) == (200, b"released\n"), resp
            assert server.proc.wait(timeout=WAIT_LIMIT) == 0, server.logs()
    finally:
        stop_process(server.proc, signal.SIGKILL)
    assert shutdown_marker.read_text() == "lifespan shutdown ran\n"


def check_abort_not_logged_as_error(run_frontend: Callable[[str], Any], sockdir: Path) -> None:
    """A client abort is a client fault: no ERROR record, no traceback in the server log.

    (Starlette >= 1.0 turns the OSError from ``send`` into ``ClientDisconnect``
    and lets it escape the app.) The log is read after a clean stop, so every
    record is in it.
    """
    tag = f"abortlog-{time.monotonic_ns()}"
    server = start_trioscgi("starlette_app:app", sockdir=sockdir, logdir=sockdir, name=tag)
    try:
        with run_frontend(server.backends["unix"]) as fe:
            check_client_abort(fe, "", sockdir)
        assert server.stop() == 0, server.logs()
    finally:
        stop_process(server.proc, signal.SIGKILL)
    log = server.stderr.read_text(errors="replace")
    assert "[ERROR]" not in log and "Traceback" not in log, log[-3000:]
