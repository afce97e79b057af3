"""The conformance suite's applications: one ASGI app, one WSGI app, and their records.

The ASGI app is plain ASGI plus anyio (never trio or asyncio directly), so the same
object runs on trio and on the hosted asyncio loop, and under uvicorn and hypercorn.
Each request names its record with the ``x-record`` header; the app appends to it
every message ``receive()`` gave it, and marks of what it did, in order. The record
is read in-process (``RECORDS``) or over HTTP (``GET /_record/<key>``, as JSON) by a
later request, for servers in another process.

Routes (the same in both apps where WSGI can say it):

- ``/echo``: read the body; answer ``len=<n> sha=<hex>``.
- ``/peek``: call receive() in a cancelled scope three times, then as /echo.
- ``/slow-read``: leave the body unread for ``SLOW_READ_DELAY``, then as /echo.
- ``/after``: read the body, then call ``receive()`` again while the response is
  streamed in two parts: ASGI says it returns ``http.disconnect`` once the response
  is sent (or the client is gone), not before.
- ``/wait``: read the body, then wait in ``receive()`` for the client to go
  (``?busy``: after 0.1 s busy elsewhere).
- ``/linger``: read the body, wait 0.1 s in ``receive()`` (the client stays), answer.
- ``/stream?n=N&size=S``: read the body, then send N chunks of S bytes.
- ``/stream-until-gone``: read the body, then stream until ``send()`` raises.
- ``/error-before``, ``/error-after``: read the body, raise before / after the start.
- ``/state``: answer the lifespan state's ``token``.
- ``/pathsend``: answer ``PATHSEND_BODY`` with ``http.response.pathsend`` when offered.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import anyio

# key -> {"events": [...], "done": bool}
RECORDS: dict[str, dict[str, Any]] = {}
# key -> time.monotonic() when /slow-read began to read its body (in-process only).
READ_STARTED: dict[str, float] = {}
# How long /slow-read leaves its body unread.
SLOW_READ_DELAY = 0.3

STATE_TOKEN = "from-the-lifespan"
PATHSEND_BODY = b"pathsend body, " * 100
_pathsend_dir = tempfile.mkdtemp(prefix="conformance-")
atexit.register(shutil.rmtree, _pathsend_dir, ignore_errors=True)
PATHSEND_FILE = os.path.join(_pathsend_dir, "body.txt")
with open(PATHSEND_FILE, "wb") as _f:
    _f.write(PATHSEND_BODY)

# How long /after lets the pending receive() run while the response is half sent,
# and how long it waits for it once the response is done.
AFTER_HALFWAY = 0.05
AFTER_PATIENCE = 3.0
# /stream-until-gone: chunks of 16 KiB, 2 ms apart, until send() raises.
STREAM_UNTIL_GONE_CHUNKS = 500


class AppError(Exception):
    """The exception the /error-* routes raise on purpose."""


def stream_chunk(i: int, size: int) -> bytes:
    return bytes([i % 251]) * size


def expected_stream(n: int, size: int) -> bytes:
    return b"".join(stream_chunk(i, size) for i in range(n))


def echo_body(body: bytes) -> bytes:
    return b"len=%d sha=%s" % (len(body), hashlib.sha256(body).hexdigest()[:16].encode())


def normalize(events: list[Any]) -> list[Any]:
    """The record as ASGI defines it, independent of how the wire split the body.

    Consecutive ``http.request`` messages become one ``["body", length, sha16,
    ended]`` entry (``ended``: the last one had ``more_body`` False). Marks and
    other messages are kept as they are. The split itself is checked apart: every
    message before the last has more_body True (``check_splits``).
    """
    out: list[Any] = []
    in_body = False
    for event in events:
        if event[0] == "http.request":
            # ["http.request", length, more_body, sha16 of the body so far]
            _, length, more, digest = event
            if not in_body:
                out.append(["body", 0, "", False])
                in_body = True
            out[-1][1] += length
            out[-1][2] = digest
            out[-1][3] = not more
            in_body = more
        else:
            in_body = False
            out.append(list(event))
    return out


def check_splits(events: list[Any]) -> str:
    """ "" when no body message comes after the one that ended the body; else what did."""
    ended = False
    for i, event in enumerate(events):
        if event[0] == "http.request":
            if ended:
                return f"message {i} is an http.request after the body ended"
            ended = not event[2]
    return ""


def record_view(key: str) -> dict[str, Any] | None:
    """The record of request ``key``: normalized events, split errors, and whether it ended."""
    record = RECORDS.get(key)
    if record is None:
        return None
    events = list(record["events"])
    return {
        "events": normalize(events),
        "splits": check_splits(events),
        "done": record["done"],
    }


class Recorder:
    """One request's record. Bodies are kept as lengths and a running digest, not
    bytes: the records of a whole test session stay small."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.events: list[Any] = []
        self._hasher: Any = None
        if key:
            RECORDS[key] = {"events": self.events, "done": False}

    def add(self, *event: Any) -> None:
        self.events.append(list(event))

    def add_body(self, data: bytes, more: bool) -> None:
        if self._hasher is None:
            self._hasher = hashlib.sha256()
        self._hasher.update(data)
        self.add("http.request", len(data), more, self._hasher.hexdigest()[:16])
        if not more:
            self._hasher = None

    def done(self) -> None:
        if self.key:
            RECORDS[self.key]["done"] = True


def _header(scope: dict[str, Any], name: bytes) -> str:
    for k, v in scope.get("headers", ()):
        if k == name:
            return str(v.decode("latin-1"))
    return ""


def _record_answer(key: str) -> bytes:
    return json.dumps(record_view(key)).encode()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI application of the suite (see the module docstring)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if "state" in scope:
                    scope["state"]["token"] = STATE_TOKEN
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        raise RuntimeError(f"no {scope['type']} here")
    path: str = scope["path"]
    if path.startswith("/_record/"):
        await _answer(send, 200, _record_answer(path[len("/_record/") :]))
        return
    rec = Recorder(_header(scope, b"x-record"))
    try:
        await _route(scope, receive, send, rec, path)
    except BaseException as exc:
        name = type(exc).__name__
        # trio's Cancelled and asyncio's CancelledError: the same event, by loop.
        rec.add("raised", "cancelled" if name in ("Cancelled", "CancelledError") else name)
        raise
    finally:
        rec.done()


async def _answer(send: Any, status: int, body: bytes, headers: list[Any] | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Any, rec: Recorder) -> bytes | None:
    """The whole body, each message recorded; None when the client went."""
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            rec.add("http.disconnect")
            return None
        rec.add_body(message.get("body", b""), message.get("more_body", False))
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _peek(receive: Any, rec: Recorder) -> None:
    """Starlette's ``is_disconnected()``: receive() in a scope cancelled before the call,
    several times, with time for the body to come between. A message handed to a
    cancelled receive() is what such an app drops: the body would lose it."""
    for _ in range(3):
        with anyio.CancelScope() as scope:
            scope.cancel()
            message = await receive()
            rec.add("handed to a cancelled receive()", message["type"])
        await anyio.sleep(0.03)


async def _route(scope: dict[str, Any], receive: Any, send: Any, rec: Recorder, path: str) -> None:
    if path == "/peek":
        await _peek(receive, rec)
        path = "/echo"
    elif path == "/slow-read":
        await anyio.sleep(SLOW_READ_DELAY)
        READ_STARTED[rec.key] = time.monotonic()
        path = "/echo"
    body = await _read_body(receive, rec)
    if body is None:
        return
    if path == "/echo":
        await _answer(send, 200, echo_body(body))
    elif path == "/after":
        await _after(receive, send, rec)
    elif path == "/wait":
        if scope["query_string"] == b"busy":
            await anyio.sleep(0.1)  # not in receive() when the client goes
        message = await receive()
        rec.add(message["type"])
        try:
            await _answer(send, 200, b"too late")
        except OSError as exc:
            # ASGI 2.4: send() after the client went raises an OSError subclass.
            rec.add("send raised OSError", isinstance(exc, OSError))
    elif path == "/linger":
        # The client stays: receive() must not say it went.
        with anyio.move_on_after(0.1):
            message = await receive()
            rec.add(message["type"])
        rec.add("mark", "0.1 s in receive()")
        await _answer(send, 200, b"lingered")
    elif path == "/stream":
        query = parse_qs(scope["query_string"].decode())
        n = int(query.get("n", ["16"])[0])
        size = int(query.get("size", ["65536"])[0])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(n):
            await send(
                {"type": "http.response.body", "body": stream_chunk(i, size), "more_body": True}
            )
        await send({"type": "http.response.body", "body": b""})
        rec.add("mark", "sent")
    elif path == "/stream-until-gone":
        await _stream_until_gone(send, rec)
    elif path == "/error-before":
        raise AppError("before the start, on purpose")
    elif path == "/error-after":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise AppError("after the start, on purpose")
    elif path == "/state":
        token = scope.get("state", {}).get("token", "no state")
        # The ASGI spec version the server says it follows, for the peers' report.
        spec = str(scope.get("asgi", {}).get("spec_version", "2.0")).encode()
        await _answer(send, 200, token.encode(), [(b"x-asgi-spec-version", spec)])
    elif path == "/pathsend":
        offered = "http.response.pathsend" in (scope.get("extensions") or {})
        rec.add("mark", "pathsend offered" if offered else "pathsend not offered")
        if offered:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"%d" % len(PATHSEND_BODY))],
                }
            )
            await send({"type": "http.response.pathsend", "path": PATHSEND_FILE})
        else:
            await _answer(send, 200, PATHSEND_BODY)
    else:
        await _answer(send, 404, b"no such route")


async def _stream_until_gone(send: Any, rec: Recorder) -> None:
    """Stream for at most about a second; ASGI 2.4: once the client is gone, send()
    raises an OSError."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    try:
        for i in range(STREAM_UNTIL_GONE_CHUNKS):
            await send(
                {"type": "http.response.body", "body": stream_chunk(i, 16384), "more_body": True}
            )
            await anyio.sleep(0.002)
    except OSError as exc:
        rec.add("send raised OSError", isinstance(exc, OSError))
        return
    rec.add("mark", "sent every chunk: the client's going was never seen")
    await send({"type": "http.response.body", "body": b""})


async def _after(receive: Any, send: Any, rec: Recorder) -> None:
    got: list[str] = []
    done = anyio.Event()

    async def listen() -> None:
        message = await receive()
        got.append(message["type"])
        rec.add(message["type"])
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listen)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first half, ", "more_body": True})
        await anyio.sleep(AFTER_HALFWAY)
        rec.add("mark", "response half sent")
        await send({"type": "http.response.body", "body": b"second half"})
        rec.add("mark", "response sent")
        with anyio.move_on_after(AFTER_PATIENCE):
            await done.wait()
        if not got:
            rec.add("mark", f"receive() still waiting {AFTER_PATIENCE} s after the response")
            tg.cancel_scope.cancel()


# --------------------------------------------------------------------------------------
# The WSGI app: the routes that WSGI can express (no receive() after the body, no
# disconnect, no lifespan), recording the body as one ASGI-like entry.


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes] | list[bytes]:
    """The WSGI application of the suite; the tests wrap it in ``wsgiref.validate``."""
    path = environ.get("PATH_INFO", "")
    if environ.get("SCRIPT_NAME"):
        path = environ["SCRIPT_NAME"] + path
    if path.startswith("/_record/"):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [_record_answer(path[len("/_record/") :])]
    rec = Recorder(environ.get("HTTP_X_RECORD", ""))
    try:
        if path == "/slow-read":
            time.sleep(SLOW_READ_DELAY)  # a worker thread: WSGI blocks
            READ_STARTED[rec.key] = time.monotonic()
            path = "/echo"
        stream = environ["wsgi.input"]
        parts = []
        while True:
            # wsgiref.validate wants read() with a size argument.
            data = stream.read(65536)
            if not data:
                break
            parts.append(data)
        body = b"".join(parts)
        rec.add_body(body, False)
        if path == "/echo":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [echo_body(body)]
        if path == "/stream":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            n = int(query.get("n", ["16"])[0])
            size = int(query.get("size", ["65536"])[0])
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return (stream_chunk(i, size) for i in range(n))
        if path == "/error-before":
            raise AppError("before the start, on purpose")
        if path == "/error-after":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return _error_after()
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such route"]
    except BaseException as exc:
        rec.add("raised", type(exc).__name__)
        raise
    finally:
        rec.done()


def _error_after() -> Iterator[bytes]:
    yield b"partial"
    raise AppError("after the start, on purpose")
