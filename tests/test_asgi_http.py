"""The HTTP cycle (``trioscgi._asgi.http``) against a fake wire: its ASGI rules, no socket.

``FakeWire`` implements the seam's ``Wire`` (``trioscgi._asgi.seam``): the request body
comes from a list of chunks, every write is recorded, and the front-end's departure
(``go_away()``) and the cut (``abort()``) are observable. ``FakeHost`` is the
``CycleHost``. What a real front-end sees of the same rules on a socket is in
test_wire_scgi.py and test_fastcgi_wire.py.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trioscgi import Config
from trioscgi import scgi as p
from trioscgi._accesslog import AccessLogger
from trioscgi._asgi.http import HTTPCycle
from trioscgi._asgi.scope import http_scope
from trioscgi._asgi.seam import CycleHost, Session, Wire
from trioscgi._counters import WorkerMetrics
from trioscgi._errors import ClientDisconnected, WriteTimeout
from trioscgi._types import ASGIApp, Bytes, Message

HANG = 10  # seconds: bounds a test the code under test would hang; never reached when green

Receive = Callable[[], Any]
Send = Callable[[Message], Any]


@dataclass
class Write:
    """One call of ``Wire.write`` or ``Wire.write_file`` (the file's bytes read out)."""

    head: p.Response | None
    body: bytes
    more: bool


class FakeWire:
    """A front-end as the cycle sees it.

    Args:
        body: the request body's chunks as the wire would return them; the last one ends
            the body unless ``complete`` is false, in which case the client stops sending
            after them and ``read_body`` waits until :meth:`go_away`.
    """

    def __init__(self, body: list[bytes] | None = None, *, complete: bool = True) -> None:
        self.body = list(body or [])
        self.complete = complete
        self.reads = 0
        self.writes: list[Write] = []
        self.gone = trio.Event()
        self.aborted = False
        self.drained = False
        self.write_error: ClientDisconnected | None = None

    def go_away(self) -> None:
        """The front-end closes the connection (its client went away)."""
        self.gone.set()

    async def read_body(self) -> tuple[bytes, bool]:
        self.reads += 1
        if self.body and not self.gone.is_set():
            # Already in the buffer, as a real wire often has it: no I/O, no checkpoint.
            chunk = self.body.pop(0)
            return chunk, bool(self.body) or not self.complete
        assert not self.complete or self.gone.is_set(), "read past the end of the body"
        await self.gone.wait()
        raise ClientDisconnected("client went away during the request body")

    async def write(self, head: p.Response | None, body: Bytes, more: bool) -> None:
        await trio.lowlevel.checkpoint()
        if self.write_error is not None:
            raise self.write_error
        if self.gone.is_set():
            raise ClientDisconnected("the client went away")
        self.writes.append(Write(head, bytes(body), more))

    async def write_file(
        self, head: p.Response | None, fd: int, offset: int, count: int, more: bool
    ) -> int:
        await trio.lowlevel.checkpoint()
        if self.gone.is_set():
            raise ClientDisconnected("the client went away")
        data = os.pread(fd, count, offset)
        self.writes.append(Write(head, data, more))
        return len(data)

    async def wait_disconnect(self) -> None:
        await self.gone.wait()

    async def drain(self) -> None:
        await trio.lowlevel.checkpoint()
        self.body.clear()
        self.drained = True

    def abort(self) -> None:
        self.aborted = True

    @property
    def sent(self) -> bytes:
        """The response body as the front-end got it."""
        return b"".join(w.body for w in self.writes)

    @property
    def status(self) -> int | None:
        """The status of the head written (None: no head went out)."""
        heads = [w.head for w in self.writes if w.head is not None]
        assert len(heads) <= 1, "the head went out more than once"
        return heads[0].status if heads else None


async def no_app(scope: Any, receive: Receive, send: Send) -> None:
    raise AssertionError("run() sets the app")


def ignore(*args: object) -> None:
    pass


@dataclass
class FakeHost:
    """The server as the cycle sees it; ``cuts`` records request_cut()."""

    app: ASGIApp = no_app
    config: Config = field(default_factory=Config)
    state: dict[str, Any] | None = None
    access_logger: AccessLogger | None = None
    metrics: WorkerMetrics | None = None
    warn_request: Callable[..., None] = ignore
    websocket_sessions: set[Session] = field(default_factory=set)
    cuts: list[dict[str, Any]] = field(default_factory=list)

    def request_cut(self, scope: dict[str, Any], started: float) -> None:
        self.cuts.append(scope)

    def request_served(self) -> None:
        """max_requests counts in dispatch, not in the cycle: nothing to do here."""


def make_scope(method: str = "GET", length: int = 0) -> dict[str, Any]:
    environ = [
        (b"CONTENT_LENGTH", str(length).encode()),
        (b"SCGI", b"1"),
        (b"REQUEST_METHOD", method.encode()),
        (b"REQUEST_URI", b"/x"),
        (b"SERVER_PROTOCOL", b"HTTP/1.1"),
        (b"REMOTE_ADDR", b"127.0.0.1"),
        (b"REMOTE_PORT", b"40000"),
        (b"SERVER_NAME", b"localhost"),
        (b"SERVER_PORT", b"80"),
    ]
    return http_scope(environ, root_path="", state=None)


async def run(
    app: ASGIApp,
    wire: FakeWire,
    *,
    method: str = "GET",
    host: FakeHost | None = None,
) -> HTTPCycle:
    """Run ``app`` for one request whose body is ``wire.body``; return the finished cycle."""
    length = sum(map(len, wire.body))
    host = host or FakeHost()
    host.app = app
    cycle = HTTPCycle(_as_wire(wire), _as_host(host))
    with trio.fail_after(HANG):
        await cycle.run(make_scope(method, length), body_done=not wire.body, protocol="scgi")
    return cycle


def _as_wire(wire: FakeWire) -> Wire:
    return wire  # mypy checks here that FakeWire is a Wire


def _as_host(host: FakeHost) -> CycleHost:
    return host  # ... and that FakeHost is a CycleHost


START: Message = {"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]}


def body(data: bytes = b"", more: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --- the head is held until the first body message -------------------------------------------


async def test_head_goes_out_with_the_first_body_message() -> None:
    wire = FakeWire()
    seen: list[list[Write]] = []

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        await send(START)
        seen.append(list(wire.writes))
        await send(body(b"hello"))

    cycle = await run(app, wire)
    assert seen == [[]]
    assert len(wire.writes) == 1
    (write,) = wire.writes
    assert write.head is not None
    assert (write.head.status, write.body, write.more) == (200, b"hello", False)
    assert list(write.head.headers) == [(b"x-a", b"1")]
    assert (cycle.status, cycle.response_bytes, wire.aborted) == (200, 5, False)


async def test_an_empty_first_body_sends_the_head_and_later_empty_ones_nothing() -> None:
    wire = FakeWire()

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        await send(START)
        await send(body(b"", more=True))
        await send(body(b"", more=True))
        await send(body(b"ab", more=True))
        await send(body(b""))

    await run(app, wire)
    assert [(w.head is not None, w.body, w.more) for w in wire.writes] == [
        (True, b"", True),
        (False, b"ab", True),
        (False, b"", False),
    ]


async def test_app_transfer_encoding_is_dropped() -> None:
    wire = FakeWire()

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        headers = [(b"Transfer-Encoding", b"chunked"), (b"x-b", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": iter(headers)})
        await send(body(b"x"))

    await run(app, wire)
    assert wire.writes[0].head is not None
    assert list(wire.writes[0].head.headers) == [(b"x-b", b"2")]


@pytest.mark.parametrize(
    ("method", "status", "sent"),
    [("HEAD", 200, b"hello"), ("GET", 204, b""), ("GET", 304, b"")],
)
async def test_head_204_and_304_go_out_as_the_app_sent_them(
    method: str, status: int, sent: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # The cycle neither strips nor refuses a body here: the front-end frames the
    # response to its client and drops a HEAD's body itself.
    wire = FakeWire()

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        assert scope["method"] == method
        await send({"type": "http.response.start", "status": status})
        await send(body(sent))

    cycle = await run(app, wire, method=method)
    assert (wire.status, wire.sent, cycle.response_bytes) == (status, sent, len(sent))
    assert not wire.aborted
    assert not errors(caplog)


async def test_a_304_without_a_body_message_is_not_a_response() -> None:
    # ASGI: the response ends with an http.response.body; the head alone was held.
    wire = FakeWire()

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 304})

    await run(app, wire)
    assert wire.status == 500


# --- invalid messages raise from send(); the client gets a 500 ---------------------------


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([body(b"x")], "'http.response.body' sent before 'http.response.start'"),
        ([START, START], "'http.response.start' sent twice"),
        ([{"type": "http.response.start"}], "'http.response.start' without 'status'"),
        ([{"type": "http.response.start", "status": 99}], "invalid 'http.response.start'"),
        (
            [{"type": "http.response.start", "status": 200, "headers": [(b"a b", b"1")]}],
            "invalid 'http.response.start'",
        ),
        ([START, {"type": "http.response.body", "body": "str"}], "body must be bytes, got str"),
        ([{"type": "http.response.bogus"}], "unexpected ASGI message type 'http.response.bogus'"),
        (
            [START, {"type": "http.response.pathsend", "path": "rel/file"}],
            "needs an absolute path",
        ),
        ([{"type": "http.response.pathsend", "path": "/x"}], "sent before 'http.response.start'"),
    ],
)
async def test_invalid_messages_raise_from_send_and_the_client_gets_500(
    messages: list[Message], error: str, caplog: pytest.LogCaptureFixture
) -> None:
    wire = FakeWire()
    raised: list[str] = []

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        try:
            for message in messages:
                await send(message)
        except RuntimeError as exc:
            raised.append(str(exc))
            raise

    await run(app, wire)
    assert len(raised) == 1
    assert error in raised[0]
    assert (wire.status, wire.sent) == (500, b"500 Internal Server Error\n")
    assert errors(caplog) == ["exception in ASGI application before the response started"]


async def test_body_after_the_complete_response_raises() -> None:
    wire = FakeWire()
    raised: list[str] = []

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        await send(START)
        await send(body(b"done"))
        for late in (body(b"late"), {"type": "http.response.pathsend", "path": "/etc/hostname"}):
            try:
                await send(late)
            except RuntimeError as exc:
                raised.append(str(exc))

    await run(app, wire)
    assert raised == [
        "'http.response.body' sent after the response was complete",
        "'http.response.pathsend' sent after the response was complete",
    ]
    assert wire.sent == b"done"


# --- 500 before the head went out, a cut after --------------------------------------------


async def test_exception_before_start_is_500(caplog: pytest.LogCaptureFixture) -> None:
    wire = FakeWire()
    host = FakeHost(metrics=WorkerMetrics())

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        raise ValueError("boom")

    cycle = await run(app, wire, host=host)
    assert (wire.status, cycle.status, wire.aborted) == (500, 500, False)
    assert errors(caplog) == ["exception in ASGI application before the response started"]
    assert host.metrics is not None and host.metrics.app_exceptions == 1


async def test_exception_after_start_but_before_a_body_is_500() -> None:
    wire = FakeWire()

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        await send(START)
        raise ValueError("boom")

    await run(app, wire)
    assert (wire.status, wire.aborted) == (500, False)


async def test_return_without_a_response_is_500(caplog: pytest.LogCaptureFixture) -> None:
    wire = FakeWire()

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        return

    await run(app, wire)
    assert wire.status == 500
    assert errors(caplog) == ["ASGI application returned without sending a response"]


async def test_exception_after_the_body_started_cuts_the_response(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wire = FakeWire()
    host = FakeHost(metrics=WorkerMetrics())

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        await send(START)
        await send(body(b"part", more=True))
        raise ValueError("boom")

    await run(app, wire, host=host)
    assert (wire.status, wire.sent, wire.aborted) == (200, b"part", True)
    assert errors(caplog) == ["exception in ASGI application after the response started"]
    cut = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert cut == ["response cut short: GET /x, 4 body bytes sent (scgi, status 200)"]
    assert host.metrics is not None and host.metrics.responses_cut["scgi"] == 1


async def test_return_before_the_body_ended_cuts_the_response(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wire = FakeWire()

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        await send(START)
        await send(body(b"part", more=True))

    await run(app, wire)
    assert (wire.sent, wire.aborted) == (b"part", True)
    assert errors(caplog) == ["ASGI application returned before the response was complete"]


async def test_cancelled_from_outside_after_start_cuts_and_tells_the_host() -> None:
    wire = FakeWire()
    host = FakeHost()

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        await send(START)
        await send(body(b"part", more=True))
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(run, app, wire, host=host))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert wire.aborted
    assert [scope["path"] for scope in host.cuts] == ["/x"]


async def test_a_file_ending_short_cuts_the_response(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    wire = FakeWire()
    raised: list[str] = []

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        await send(START)
        with path.open("rb") as f:
            try:
                await send({"type": "http.response.zerocopysend", "file": f, "count": 10})
            except RuntimeError as exc:
                raised.append(str(exc))
                raise

    await run(app, wire)
    assert raised == ["file ended after 3 of 10 bytes"]
    assert (wire.sent, wire.aborted) == (b"abc", True)


# --- receive(): the body, then http.disconnect ---------------------------------------------


async def test_body_in_pieces_then_disconnect_once_the_response_is_sent() -> None:
    wire = FakeWire([b"ab", b"cd", b"e"])
    got: list[Message] = []

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        for _ in range(3):
            got.append(await receive())
        await send(START)
        await send(body(b"ok"))
        got.append(await receive())  # the response is complete: no wait for the client

    await run(app, wire)
    assert got == [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": True},
        {"type": "http.request", "body": b"e", "more_body": False},
        {"type": "http.disconnect"},
    ]
    assert not wire.drained


async def test_an_empty_body_known_at_the_head_needs_no_read() -> None:
    wire = FakeWire()
    got: list[Message] = []

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        got.append(await receive())
        await send(START)
        await send(body())

    await run(app, wire)
    assert got == [{"type": "http.request", "body": b"", "more_body": False}]
    assert wire.reads == 0


async def test_receive_after_the_body_waits_for_the_client_to_go() -> None:
    wire = FakeWire([b"ab"])
    got: list[Message] = []

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        await receive()
        got.append(await receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, app, wire)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        wire.go_away()
    assert got == [{"type": "http.disconnect"}]


async def test_a_receive_waiting_after_the_body_returns_when_the_response_ends() -> None:
    # ASGI: http.disconnect once the response is sent, though the client is still there.
    wire = FakeWire([b"ab"])
    got: list[Message] = []

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        await receive()

        async def listen() -> None:
            got.append(await receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            await send(START)
            await send(body(b"done"))

    await run(app, wire)
    assert got == [{"type": "http.disconnect"}]
    assert not wire.gone.is_set()


async def test_client_gone_mid_body_gives_disconnect_and_send_raises_oserror(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wire = FakeWire([b"ab"], complete=False)
    got: list[Message] = []
    raised: list[type[BaseException]] = []

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        got.append(await receive())
        got.append(await receive())  # waits: the client stopped sending
        got.append(await receive())
        try:
            await send(START)
        except OSError as exc:
            raised.append(type(exc))
            raise

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, app, wire)
        await trio.testing.wait_all_tasks_blocked()
        wire.go_away()
    assert got == [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.disconnect"},
        {"type": "http.disconnect"},
    ]
    assert raised == [ClientDisconnected]
    assert wire.writes == [] and not wire.aborted
    assert not errors(caplog)


async def test_a_cancelled_receive_takes_no_body_from_the_wire() -> None:
    wire = FakeWire([b"ab"])
    cycle = HTTPCycle(_as_wire(wire), _as_host(FakeHost()))
    with trio.CancelScope() as cancel:
        cancel.cancel()
        await cycle.receive()
    assert cancel.cancelled_caught
    assert (wire.reads, wire.body) == (0, [b"ab"])
    assert await cycle.receive() == {"type": "http.request", "body": b"ab", "more_body": False}


async def test_an_unread_body_is_drained_after_the_response() -> None:
    wire = FakeWire([b"unread"])

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        await send(START)
        await send(body(b"ok"))

    await run(app, wire)
    assert (wire.sent, wire.drained) == (b"ok", True)


async def test_an_unread_body_is_drained_after_a_500() -> None:
    wire = FakeWire([b"unread"])

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        raise ValueError("boom")

    await run(app, wire)
    assert (wire.status, wire.drained) == (500, True)


async def test_refuse_answers_and_drains() -> None:
    wire = FakeWire([b"unread"])
    cycle = HTTPCycle(_as_wire(wire), _as_host(FakeHost()))
    await cycle.refuse(400, body_done=False)
    assert (wire.status, wire.sent, wire.drained) == (400, b"400 Bad Request\n", True)


# --- the wire's errors -------------------------------------------------------------------


async def test_a_write_timeout_is_counted_and_the_app_sees_an_oserror() -> None:
    wire = FakeWire()
    wire.write_error = WriteTimeout("no progress for 30 s (write_timeout)")
    host = FakeHost(metrics=WorkerMetrics())
    raised: list[type[BaseException]] = []

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        await send(START)
        try:
            await send(body(b"x"))
        except OSError as exc:
            raised.append(type(exc))
            raise

    cycle = await run(app, wire, host=host)
    assert raised == [WriteTimeout]
    assert cycle.disconnected and not wire.aborted
    assert host.metrics is not None and host.metrics.timeouts["write"] == 1


# --- pathsend and zerocopysend through the wire ---------------------------------------------


async def test_pathsend_writes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"file body")
    wire = FakeWire()

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        assert "http.response.pathsend" in scope["extensions"]
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.pathsend", "path": str(path)})

    cycle = await run(app, wire)
    assert (wire.status, wire.sent, cycle.response_bytes) == (200, b"file body", 9)
    assert not wire.aborted


async def test_pathsend_of_a_missing_file_is_a_runtime_error(tmp_path: Path) -> None:
    wire = FakeWire()
    raised: list[type[BaseException]] = []

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        await send(START)
        try:
            await send({"type": "http.response.pathsend", "path": str(tmp_path / "absent")})
        except Exception as exc:
            raised.append(type(exc))
            raise

    await run(app, wire)
    # Not an OSError: that would tell the app its client went away.
    assert raised == [RuntimeError]
    assert wire.status == 500


async def test_zerocopysend_from_the_position_moves_it_and_offset_leaves_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    wire = FakeWire()
    positions: list[int] = []

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        await send(START)
        with path.open("rb") as f:
            f.seek(2)
            await send(
                {"type": "http.response.zerocopysend", "file": f, "count": 3, "more_body": True}
            )
            positions.append(f.tell())
            await send(
                {
                    "type": "http.response.zerocopysend",
                    "file": f,
                    "offset": 8,
                    "count": 1,
                    "more_body": True,
                }
            )
            positions.append(f.tell())
            await send({"type": "http.response.zerocopysend", "file": f})  # the rest
            positions.append(f.tell())

    await run(app, wire)
    assert positions == [5, 5, 10]
    assert [(w.body, w.more) for w in wire.writes] == [
        (b"234", True),
        (b"8", True),
        (b"56789", False),
    ]
    assert not wire.aborted


# --- the access log and the counters -------------------------------------------------------


async def test_access_log_and_metrics_count_each_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trioscgi.access")
    host = FakeHost(access_logger=AccessLogger("%(m)s %(U)s %(s)s %(B)s"))
    host.metrics = metrics = WorkerMetrics()
    in_flight: list[int] = []

    async def ok(scope: Any, receive: Receive, send: Send) -> None:
        in_flight.append(metrics.in_flight)
        await send(START)
        await send(body(b"hello"))

    async def fails(scope: Any, receive: Receive, send: Send) -> None:
        raise ValueError("boom")

    await run(ok, FakeWire(), host=host)
    await run(fails, FakeWire(), host=host)
    access = [r.getMessage() for r in caplog.records if r.name == "trioscgi.access"]
    assert access == ["GET /x 200 5", "GET /x 500 0"]
    assert in_flight == [1]
    assert metrics.in_flight == 0
    assert metrics.bytes_out == 5 + 0  # trioscgi's own 500 body is not the app's
    assert sum(metrics.duration_counts) == 2
    assert (metrics.requests[2], metrics.requests[5]) == (1, 1)  # SCGI: a 2xx, a 5xx
    assert metrics.app_exceptions == 1
