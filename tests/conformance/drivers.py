"""The conformance suite's drivers: one request, sent over one path, as a front-end sends it.

A :class:`Request` says what to send (method, path, headers, the body as a plan
of pieces and pauses, whether its length is known, whether the client vanishes
after the plan, how slowly to read); a driver sends it over its path and returns
an :class:`Answer` (status, headers, body, and whether the response was complete
or cut, as a front-end can tell). Paths:

- ``scgi``: one connection per request, Unix, or TCP when the scenario looks at a cut
  (a reset must be seen to tell one).
- ``uwsgi``: the same, with nginx's uwsgi packet (stock ``uwsgi_params``) for the head.
- ``fastcgi``: one Unix connection per request, no FCGI_KEEP_CONN (nginx's default).
- ``fastcgi-keep``: FCGI_KEEP_CONN, the request sent twice on one connection (nginx
  ``fastcgi_keep_conn on``); both answers and both records must agree.
- ``fastcgi-mpx``: the request twice at once on one connection, ids 1 and 2, their
  records mixed (HAProxy ``option mpxs-conns``); the client vanishing is
  ABORT_REQUEST, as HAProxy sends it.

The variables are what nginx's stock ``scgi_params`` / ``fastcgi_params`` send
(tests/data/captures/nginx-stock-*): CONTENT_TYPE *and* HTTP_CONTENT_TYPE,
CONTENT_LENGTH *and* HTTP_CONTENT_LENGTH, an empty CONTENT_LENGTH on FastCGI
when the length is unknown (``fastcgi_request_buffering off`` and a chunked
upload). :func:`running_path` runs the real server, ``trioscgi.serve``,
in-process, with the app on trio or on the hosted asyncio loop.
"""

from __future__ import annotations

import itertools
import struct
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

import fcgi_client as fc
import scgi_client
import trio
import uwsgi_client

from trioscgi import Config
from trioscgi._apps.wsgi import wrap_wsgi

from . import app as conformance_app

ASGI_WIRES = ("scgi", "uwsgi", "fastcgi", "fastcgi-keep", "fastcgi-mpx")
LOOPS = ("trio", "asyncio")
ASGI_PATHS = tuple(f"{wire}-{loop}" for wire in ASGI_WIRES for loop in LOOPS)
WSGI_PATHS = ("wsgi-scgi", "wsgi-uwsgi", "wsgi-fastcgi", "wsgi-fastcgi-keep")
ALL_PATHS = ASGI_PATHS + WSGI_PATHS


def features(path: str) -> frozenset[str]:
    """What a path can carry (scenarios.NEEDS): the ASGI app (with pathsend) or the
    WSGI one, a body of unknown length (FastCGI streams STDIN; SCGI needs
    CONTENT_LENGTH), a body as it comes, and the app in this process (every path
    here)."""
    out = {"streams_body", "in_process"}
    if not path.startswith("wsgi-"):
        out |= {"asgi", "pathsend"}
    if "fastcgi" in path:
        out.add("unknown_length")
    return frozenset(out)


# Every exchange and every wait for a record ends by itself within this.
PATIENCE = 15.0
# The server's graceful_timeout: how long a shutdown waits for requests in flight.
GRACEFUL_TIMEOUT = 0.5


@dataclass(frozen=True)
class Pause:
    """Stop sending for ``seconds``: long enough that the server reads what came
    before, and the app waits in ``receive()``, before the next piece."""

    seconds: float = 0.03


@dataclass(frozen=True)
class Shutdown:
    """Ask the server to shut down gracefully now (in-process servers only)."""


Step = bytes | Pause | Shutdown


@dataclass
class Request:
    """One request as the front-end sends it."""

    path: str = "/echo"
    method: str = "POST"
    query: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    # The body, as pieces sent one write each, with pauses between. The first
    # piece goes out in the same write as the head (b"" for the head alone).
    plan: list[Step] = field(default_factory=list)
    # False: no CONTENT_LENGTH (FastCGI streams STDIN of unknown length).
    length_known: bool = True
    # The length the head declares (CONTENT_LENGTH); None: the plan's whole body.
    declared_length: int | None = None
    # The body's end is sent with its last piece (FastCGI: the empty STDIN
    # record; SCGI: nothing, CONTENT_LENGTH says where it ends).
    end_body: bool = True
    # True: after the plan, the client goes away instead of reading the answer
    # (nginx closes its upstream connection; HAProxy sends ABORT_REQUEST).
    vanish: bool = False
    read_size: int = 65536
    read_pause: float = 0.0
    # The scenario looks at whether the answer was cut: SCGI then goes over TCP,
    # where a reset shows (on AF_UNIX a reset and a clean close look the same).
    cut_must_show: bool = False

    @property
    def body(self) -> bytes:
        return b"".join(s for s in self.plan if isinstance(s, bytes))

    @property
    def length(self) -> int:
        return len(self.body) if self.declared_length is None else self.declared_length

    @property
    def uri(self) -> str:
        return self.path + ("?" + self.query if self.query else "")


@dataclass
class Answer:
    """The response as the front-end sees it."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    # False: the front-end can tell the response was cut (a reset on SCGI over
    # TCP, no END_REQUEST or a broken connection on FastCGI, a body shorter than
    # its Content-Length).
    complete: bool

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


def parse_answer(data: bytes, complete: bool) -> Answer:
    try:
        response = scgi_client.parse_response(data)
    except ValueError:
        return Answer(0, [], data, False)
    answer = Answer(response.status, response.headers, response.body, complete)
    length = answer.header("content-length")
    if length is not None and int(length) != len(answer.body):
        answer.complete = False
    return answer


_keys = itertools.count()


def new_key(label: str) -> str:
    return f"{label}-{next(_keys)}"


# --------------------------------------------------------------------------------------
# What nginx sends


def _header_vars(request: Request) -> list[tuple[str, str]]:
    headers = [("host", "localhost"), *request.headers]
    if request.length or request.method in ("POST", "PUT"):
        headers.append(("content-type", "application/octet-stream"))
        if request.length_known:
            headers.append(("content-length", str(request.length)))
        else:
            headers.append(("transfer-encoding", "chunked"))
    out = []
    for name, value in headers:
        out.append(("HTTP_" + name.upper().replace("-", "_"), value))
    return out


def _content_type(request: Request) -> str:
    return "application/octet-stream" if request.length or request.method in ("POST", "PUT") else ""


def scgi_vars(request: Request) -> list[tuple[str, str]]:
    """nginx 1.22's stock scgi_params, in its order (tests/data/captures/nginx-stock-*.scgi)."""
    return [
        ("CONTENT_LENGTH", str(request.length)),
        ("REQUEST_METHOD", request.method),
        ("REQUEST_URI", request.uri),
        ("QUERY_STRING", request.query),
        ("CONTENT_TYPE", _content_type(request)),
        ("DOCUMENT_URI", request.path),
        ("DOCUMENT_ROOT", "/srv/html"),
        ("SCGI", "1"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "35896"),
        ("SERVER_PORT", "80"),
        ("SERVER_NAME", "localhost"),
        *_header_vars(request),
    ]


def uwsgi_vars(request: Request) -> list[tuple[str, str]]:
    """nginx 1.22's stock uwsgi_params, in its order (nginx-stock-*.uwsgi): PATH_INFO is
    the decoded path, CONTENT_LENGTH and CONTENT_TYPE are empty without a body."""
    return uwsgi_client.stock_vars(
        request.method,
        request.uri,
        content_length=str(request.length) if request.length else "",
        content_type=_content_type(request),
        headers=_header_vars(request),
    )


def fastcgi_vars(request: Request) -> list[tuple[str, str]]:
    """nginx 1.22's stock fastcgi_params, in its order (nginx-stock-*.fcgi)."""
    return [
        ("QUERY_STRING", request.query),
        ("REQUEST_METHOD", request.method),
        ("CONTENT_TYPE", _content_type(request)),
        ("CONTENT_LENGTH", str(request.length) if request.length_known and request.length else ""),
        ("SCRIPT_NAME", request.path),
        ("REQUEST_URI", request.uri),
        ("DOCUMENT_URI", request.path),
        ("DOCUMENT_ROOT", "/srv/html"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "nginx/1.22.1"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "50000"),
        ("REMOTE_USER", ""),
        ("SERVER_ADDR", "127.0.0.1"),
        ("SERVER_PORT", "80"),
        ("SERVER_NAME", "localhost"),
        ("REDIRECT_STATUS", "200"),
        *_header_vars(request),
    ]


def _encoded(pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


def _with_key(request: Request, key: str) -> Request:
    if not key:
        return request
    copy = Request(**{f: getattr(request, f) for f in request.__dataclass_fields__})
    copy.headers = [*request.headers, ("x-record", key)]
    return copy


# --------------------------------------------------------------------------------------
# Reading


class _Reader:
    """Reads a stream ``read_size`` bytes at a time with ``read_pause`` between reads;
    a reset is an end, noted in ``reset``."""

    def __init__(self, stream: trio.abc.ReceiveStream, request: Request) -> None:
        self.stream = stream
        self.size = request.read_size
        self.pause = request.read_pause
        self.reset = False
        self.eof = False

    async def some(self) -> bytes | bytearray:
        if self.eof:
            return b""
        if self.pause:
            await trio.sleep(self.pause)
        try:
            data = await self.stream.receive_some(self.size)
        except trio.BrokenResourceError:
            self.reset = True
            data = b""
        if not data:
            self.eof = True
        return data


@dataclass
class _FcgiResult:
    stdout: bytearray = field(default_factory=bytearray)
    ended: bool = False
    protocol_status: int = -1


async def _read_records(reader: _Reader, ids: tuple[int, ...]) -> dict[int, _FcgiResult]:
    """Records until every id in ``ids`` has its END_REQUEST, or EOF."""
    results = {i: _FcgiResult() for i in ids}
    buffer = bytearray()
    while not all(r.ended for r in results.values()):
        while len(buffer) >= 8:
            version, kind, rid, length, padding = struct.unpack(">BBHHBx", buffer[:8])
            if version != 1:  # FastCGI 1.0
                # What a front-end takes for an upstream error (trioscgi writes one
                # before closing on a cut response): the stream ends here, not ended.
                return results
            if len(buffer) < 8 + length + padding:
                break
            content = bytes(buffer[8 : 8 + length])
            del buffer[: 8 + length + padding]
            result = results.get(rid)
            assert result is not None, f"a record for request {rid}, not one of {ids}"
            assert not result.ended, f"record type {kind} for request {rid} after END_REQUEST"
            if kind == fc.STDOUT:
                result.stdout += content
            elif kind == fc.END_REQUEST:
                result.ended = True
                result.protocol_status = struct.unpack(">IB3x", content)[1]
            if all(r.ended for r in results.values()):
                return results
        data = await reader.some()
        if not data:
            break
        buffer += data
    return results


def _fcgi_answer(result: _FcgiResult) -> Answer:
    return parse_answer(bytes(result.stdout), result.ended and result.protocol_status == 0)


# --------------------------------------------------------------------------------------
# The drivers


class Driver:
    """Sends one :class:`Request` over one path; reads the app's record of it."""

    name = ""
    # features(name): what the path can carry (scenarios.NEEDS).
    features: frozenset[str] = frozenset()
    # The app runs in this process: its records are read directly.
    in_process = True

    # (plan bytes sent, time.monotonic()) after each piece of the last exchange.
    progress: list[tuple[int, float]]
    # Begins the server's graceful shutdown (a Shutdown step); set by running_path.
    shutdown: Any = None

    async def exchange(self, request: Request, key: str = "") -> Answer | None:
        """Send ``request``; return the answer, or None if the client vanished."""
        self.progress = []
        with trio.fail_after(PATIENCE):
            return await self._exchange(request, key)

    async def _exchange(self, request: Request, key: str) -> Answer | None:
        raise NotImplementedError

    async def record(self, key: str) -> dict[str, Any]:
        """The app's record of request ``key`` once the app has returned."""
        return await _wait_record(key)


async def _wait_record(key: str) -> dict[str, Any]:
    with trio.fail_after(PATIENCE):
        while True:
            view = conformance_app.record_view(key)
            if view is not None and view["done"]:
                return view
            await trio.sleep(0.002)


async def _send_plan(
    stream: trio.SocketStream,
    head: bytes,
    request: Request,
    encode: Any,
    end: bytes = b"",
    *,
    progress: list[tuple[int, float]] | None = None,
    shutdown: Any = None,
) -> bool:
    """Send the head and the plan, and ``end`` with the last piece if the body ends.

    Returns False when the server closed on us meanwhile.
    """
    steps = request.plan
    last = max((i for i, s in enumerate(steps) if isinstance(s, bytes) and s), default=-1)
    pending = head
    if last == -1 and request.end_body:
        pending += end
    try:
        for i, step in enumerate(steps):
            if isinstance(step, Shutdown):
                if pending:
                    await stream.send_all(pending)
                    pending = b""
                assert shutdown is not None, "this path can't shut its server down"
                shutdown()
            elif isinstance(step, Pause):
                if pending:
                    await stream.send_all(pending)
                    pending = b""
                await trio.sleep(step.seconds)
            elif step:
                data = pending + encode(step)
                if i == last and request.end_body:
                    data += end
                await stream.send_all(data)
                pending = b""
                if progress is not None:
                    done = progress[-1][0] if progress else 0
                    progress.append((done + len(step), time.monotonic()))
        if pending:
            await stream.send_all(pending)
    except trio.BrokenResourceError:
        return False
    return True


class ScgiDriver(Driver):
    """A connection per request: Unix, or TCP when a cut must show."""

    name = "scgi"

    def __init__(self, unix: str, tcp: str) -> None:
        self.unix = unix
        self.tcp = tcp

    def head(self, request: Request) -> bytes:
        return scgi_client.encode_raw(
            b"".join(k + b"\0" + v + b"\0" for k, v in _encoded(scgi_vars(request)))
        )

    async def _exchange(self, request: Request, key: str) -> Answer | None:
        request = _with_key(request, key)
        assert request.length_known, f"{self.name} has no body of unknown length"
        head = self.head(request)
        stream = await scgi_client.connect(self.tcp if request.cut_must_show else self.unix)
        async with stream:
            await _send_plan(
                stream,
                head,
                request,
                lambda b: b,
                progress=self.progress,
                shutdown=self.shutdown,
            )
            if request.vanish:
                return None
            reader = _Reader(stream, request)
            chunks = []
            while data := await reader.some():
                chunks.append(data)
            return parse_answer(b"".join(chunks), not reader.reset)


class UwsgiDriver(ScgiDriver):
    """As SCGI (a connection per request), with a uwsgi packet for the head."""

    name = "uwsgi"

    def head(self, request: Request) -> bytes:
        return uwsgi_client.encode_packet(uwsgi_vars(request))


def _fcgi_head(request: Request, rid: int, keep: bool) -> bytes:
    return fc.begin(rid, keep=keep) + fc.params(rid, _encoded(fastcgi_vars(request)))


def _stdin(rid: int, data: bytes) -> bytes:
    return b"".join(
        fc.record(fc.STDIN, rid, data[i : i + 65535]) for i in range(0, len(data), 65535)
    )


class FastcgiDriver(Driver):
    """A connection per request (nginx's default), or keep-conn with the request twice."""

    def __init__(self, address: str, *, keep: bool = False) -> None:
        self.address = address
        self.keep = keep
        self.name = "fastcgi-keep" if keep else "fastcgi"

    async def _one(self, stream: trio.SocketStream, request: Request) -> Answer | None:
        head = _fcgi_head(request, 1, self.keep)
        end = fc.record(fc.STDIN, 1)
        sent = await _send_plan(
            stream,
            head,
            request,
            lambda b: _stdin(1, b),
            end,
            progress=self.progress,
            shutdown=self.shutdown,
        )
        if request.vanish and sent:
            return None
        results = await _read_records(_Reader(stream, request), (1,))
        return _fcgi_answer(results[1])

    async def _exchange(self, request: Request, key: str) -> Answer | None:
        stream = await scgi_client.connect(self.address)
        async with stream:
            if not self.keep:
                return await self._one(stream, _with_key(request, key))
            if request.vanish:
                # A request before it on the same connection, then this one, cut.
                warm = await self._one(stream, Request(plan=[b"warm-up"]))
                assert warm is not None and warm.status == 200 and warm.complete
                return await self._one(stream, _with_key(request, key))
            first = await self._one(stream, _with_key(request, key + "#1" if key else ""))
            if first is None or not first.complete:
                # A cut response cuts the connection (FastCGI has no other way to
                # say it): nothing more goes over this one.
                return first
            second = await self._one(stream, _with_key(request, key + "#2" if key else ""))
            assert first == second, f"the same request twice on one connection: {first} != {second}"
            return first

    async def record(self, key: str) -> dict[str, Any]:
        if not self.keep or not key:
            return await _wait_record(key)
        if conformance_app.RECORDS.get(key) is not None:
            return await _wait_record(key)  # the vanishing case: one request
        first = await _wait_record(key + "#1")
        if conformance_app.RECORDS.get(key + "#2") is None:
            return first  # the first was cut, and the connection with it
        second = await _wait_record(key + "#2")
        assert first == second, "the same request twice on one connection, two records"
        return first


class MultiplexDriver(Driver):
    """The request twice at once on one connection (ids 1 and 2), records interleaved."""

    name = "fastcgi-mpx"

    def __init__(self, address: str) -> None:
        self.address = address
        self._furthest: dict[str, int] = {}

    async def _exchange(self, request: Request, key: str) -> Answer | None:
        ids = (1, 2)
        reqs = [_with_key(request, f"{key}#{rid}" if key else "") for rid in ids]
        head = b"".join(fc.begin(rid, keep=True) for rid in ids) + b"".join(
            fc.params(rid, _encoded(fastcgi_vars(r))) for rid, r in zip(ids, reqs, strict=True)
        )
        stream = await scgi_client.connect(self.address)
        async with stream:
            sent = await _send_plan(
                stream,
                head,
                request,
                lambda b: b"".join(_stdin(rid, b) for rid in ids),
                b"".join(fc.record(fc.STDIN, rid) for rid in ids),
                progress=self.progress,
                shutdown=self.shutdown,
            )
            if sent and request.vanish:
                try:
                    await stream.send_all(b"".join(fc.record(fc.ABORT_REQUEST, rid) for rid in ids))
                except trio.BrokenResourceError:
                    pass
            results = await _read_records(_Reader(stream, request), ids)
            if request.vanish:
                # ABORT_REQUEST is answered with END_REQUEST (FastCGI 1.0, 5.4).
                assert all(r.ended for r in results.values()), results
                return None
            answers = [_fcgi_answer(results[rid]) for rid in ids]
            if not all(a.complete for a in answers):
                # One request's cut cuts the connection, and its neighbour with it
                # (FastCGI has no other way to say it): the answer is the one that
                # got further, and so is the record.
                assert not any(a.complete for a in answers), answers
                best = max(ids, key=lambda rid: len(results[rid].stdout))
                self._furthest[key] = best
                return answers[best - 1]
            assert answers[0] == answers[1], f"two multiplexed requests: {answers}"
            return answers[0]

    async def record(self, key: str) -> dict[str, Any]:
        if not key:
            return await _wait_record(key)
        first = await _wait_record(key + "#1")
        second = await _wait_record(key + "#2")
        if key in self._furthest:
            return (first, second)[self._furthest[key] - 1]
        assert first == second, "the same request twice multiplexed, two records"
        return first


# --------------------------------------------------------------------------------------
# The server


def _socket_dir() -> str:
    # Short: AF_UNIX paths are limited to 108 bytes.
    return tempfile.mkdtemp(prefix="conf-", dir="/tmp")


@asynccontextmanager
async def running_path(path: str) -> AsyncIterator[Driver]:
    """The real server (``trioscgi.serve``) running the suite's app for ``path``."""
    wsgi = path.startswith("wsgi-")
    if wsgi:
        wire, loop = path[len("wsgi-") :], "trio"
        asgi_app: Any = wrap_wsgi(validator(conformance_app.wsgi_app), Config())
    else:
        wire, _, loop = path.rpartition("-")
        asgi_app = conformance_app.app
    d = Path(_socket_dir())
    try:
        async with scgi_client.serving(
            asgi_app,
            [f"unix:{d}/s.sock", "127.0.0.1:0"],
            lifespan="on",
            app_loop=loop,
            read_timeout=PATIENCE,
            drain_timeout=2.0,
            graceful_timeout=GRACEFUL_TIMEOUT,
        ) as server:
            unix = next(a for a in server.addresses if a.startswith("unix:"))
            tcp = next(a for a in server.addresses if not a.startswith("unix:"))
            driver: Driver
            if wire == "scgi":
                driver = ScgiDriver(unix, tcp)
            elif wire == "uwsgi":
                driver = UwsgiDriver(unix, tcp)
            elif wire == "fastcgi":
                driver = FastcgiDriver(unix)
            elif wire == "fastcgi-keep":
                driver = FastcgiDriver(unix, keep=True)
            elif wire == "fastcgi-mpx":
                driver = MultiplexDriver(unix)
            else:
                raise ValueError(path)
            driver.name = path
            driver.features = features(path)
            driver.shutdown = server.stop
            yield driver
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()
