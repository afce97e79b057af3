"""A fake connection for the WSGI adapter's tests (test_wsgi.py, test_wsgi_environ.py).

The adapter is an ASGI application: a test gives it a scope built from a real-shaped
SCGI environ (nginx's stock scgi_params) and a fake connection whose receive() returns
the body in chunks and whose send() records the messages, and runs it under trio.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

import trio

from trioscgi import Config
from trioscgi._apps.wsgi import wrap_wsgi
from trioscgi._asgi.scope import http_scope

Environ = list[tuple[bytes, bytes]]
StartResponse = Any


def nginx_environ(
    uri: str = "/hello?x=1",
    *,
    method: str = "GET",
    length: int = 0,
    content_type: str = "",
    extra: Iterable[tuple[str, str]] = (),
) -> Environ:
    """What nginx with the stock scgi_params sends (no SCRIPT_NAME, no PATH_INFO)."""
    _, _, query = uri.partition("?")
    items = [
        ("CONTENT_LENGTH", str(length)),
        ("REQUEST_METHOD", method),
        ("REQUEST_URI", uri),
        ("QUERY_STRING", query),
        ("CONTENT_TYPE", content_type),
        ("DOCUMENT_URI", uri.partition("?")[0]),
        ("SCGI", "1"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "51234"),
        ("SERVER_PORT", "8080"),
        ("SERVER_NAME", "localhost"),
        ("HTTP_HOST", "localhost:8080"),
        ("HTTP_ACCEPT", "*/*"),
        *extra,
    ]
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in items]


def make_scope(
    environ: Environ | None = None, *, root_path: str = "", zerocopy: bool = False
) -> Any:
    scope = http_scope(environ or nginx_environ(), root_path=root_path, state=None)
    if zerocopy:
        scope["extensions"]["http.response.zerocopysend"] = {}
    return scope


class FakeConnection:
    """receive()/send() of one request: the body in chunks, the messages recorded."""

    def __init__(self, body: Iterable[bytes] = (), *, fail_on_send: int | None = None) -> None:
        self.chunks = list(body)
        self.sent: list[MutableMapping[str, Any]] = []
        self.receive_calls = 0
        self.fail_on_send = fail_on_send

    async def receive(self) -> dict[str, Any]:
        self.receive_calls += 1
        await trio.lowlevel.checkpoint()
        if self.chunks:
            chunk = self.chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        if self.fail_on_send is not None and len(self.sent) >= self.fail_on_send:
            # What the server raises once the front-end closed (ASGI spec 2.4).
            raise BrokenPipeError(32, "Broken pipe")
        self.sent.append(message)

    @property
    def status(self) -> int:
        assert self.sent[0]["type"] == "http.response.start"
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.sent[0]["headers"])

    @property
    def body(self) -> bytes:
        assert self.sent[-1].get("more_body", False) is False
        return b"".join(m.get("body", b"") for m in self.sent[1:])


async def call(
    app: Any,
    scope: Any = None,
    conn: FakeConnection | None = None,
    config: Config | None = None,
) -> FakeConnection:
    conn = conn or FakeConnection()
    asgi = wrap_wsgi(app, config or Config())
    await asgi(scope or make_scope(), conn.receive, conn.send)
    return conn
