"""The FastCGI wire layer: records ⇄ :mod:`trioscgi.fastcgi` core ⇄ one ASGI cycle per request.

Each request runs through :func:`~trioscgi._asgi.dispatch.serve_request`: in the connection's
own task when it is alone on the connection (nginx, Apache and lighttpd never multiplex: no
task per request), in a task of its own once request ids are multiplexed (HAProxy ``option
mpxs-conns``). Whoever waits for input reads it for all; a request busy in the connection's
task without reading gets a reader beside it from the server's sweep (``look_at_inline``),
so its ABORT_REQUEST or a multiplexed neighbour waits at most a second or so, not until it
answers.
With ``FCGI_KEEP_CONN`` the connection then waits for the next request until the server's
sweep closes it after ``idle_timeout``; without it, it closes after the ``END_REQUEST``.

A connection opens no nursery of its own: entering and leaving one costs about as much as
the rest of a request's connection handling (a cancel scope, and a schedule point at its
exit), and nginx's default (no ``fastcgi_keep_conn``) pays it per request. The few tasks a
connection needs (a multiplexed request, a reader beside a busy one) start in the server's
connection nursery, each under a cancel scope the connection keeps, and the connection's
task waits for them before it closes the socket: their lifetime stays inside the
connection's, as a nursery would keep it.

FastCGI has no per-request flow control. What bounds memory: the core keeps at most
``fastcgi_max_requests`` requests per connection (``OVERLOADED`` beyond), each head at most
``max_header_size``; request bodies waiting for their application are held up to
``_MAX_BUFFERED`` bytes per connection, beyond which the connection stops reading until an
application takes some. A request whose application never reads its body so stalls its own
connection, never the server, until the response ends (its leftovers are then discarded) or
``read_timeout`` ends the requests that wait.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, cast

import trio
from trio.lowlevel import ParkingLot

from .. import fastcgi as f
from .. import scgi as p
from .._asgi.dispatch import serve_request
from .._asgi.seam import CycleHost, error_bytes
from .._cgi import cgi_head
from .sockio import (
    COALESCE_LIMIT,
    RECV_SIZE,
    Bytes,
    ClientDisconnected,
    SocketIO,
    Timeout,
    body_stalled,
)

__all__ = ["INLINE_LOOK", "FastCGIConnection"]

log = logging.getLogger("trioscgi")

# Request-body bytes held per connection for applications that have not read them yet.
_MAX_BUFFERED = 1 << 20
# What each chunk held counts beyond its bytes: its bytes object and deque slot cost
# about 50 bytes in CPython, so 2-byte STDIN records would otherwise hold ~30 times
# _MAX_BUFFERED.
_CHUNK_COST = 64
# Seconds between the server sweep's looks at requests running in their connection's own
# task: one that has not read since the last look gets a reader beside it, so within one
# to two looks a busy application's ABORT_REQUEST, close or multiplexed neighbour is read.
INLINE_LOOK = 0.5
# Written right behind the END_REQUEST of a kept connection's last response, when we are
# about to close it (graceful shutdown): an empty GET_VALUES_RESULT, a well-formed record
# that needs no answer. nginx keeps a connection for its next request only when the
# END_REQUEST ends what it read; anything behind it makes nginx close the connection
# instead of caching it (ngx_http_fastcgi_input_filter), so it never sends a request on
# a connection we are closing.
_LAST_RECORD = b"\x01\x0a\x00\x00\x00\x00\x00\x00"
# Written before closing on a cut response (_tell_cut): a record header of version 0,
# which FastCGI 1.0 front-ends refuse as an error.
_CUT_RECORD = bytes(8)
# Seconds the front-end has to take it (it was reading the response until now).
_CUT_PATIENCE = 1.0
# A file response is read in pieces of this size (a multiple of 8: no padding needed).
_FILE_PIECE = 65528 * 4


class FastCGIHost(CycleHost, Protocol):
    """What a FastCGI connection needs from its server beyond what a cycle needs."""

    @property
    def fastcgi_connections(self) -> set[FastCGIConnection]:
        """The live connections, told to close when idle on a graceful shutdown."""

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Start ``fn(*args)`` in the server's connection nursery."""


class FastCGIConnection(SocketIO):
    """Serve the requests of one FastCGI connection; the task that runs it owns the socket.

    Whoever needs input reads it: the connection's task between requests, a request
    waiting for its body or for a disconnect otherwise. One reads at a time (the
    ``_reading`` token); it dispatches every record to its request and wakes the others
    (``_activity``). So a request runs in the connection's own task when it is alone on
    the connection (no task per request: nginx, Apache and lighttpd never multiplex),
    and in a task of its own beside others when the front-end multiplexes.
    """

    __slots__ = (
        "_activity",
        "_broken",
        "_buffered",
        "_closing",
        "_conn",
        "_cut",
        "_eof",
        "_head_deadline",
        "_head_timed_out",
        "_helper",
        "_host",
        "_idle_since",
        "_inline",
        "_keep_conn",
        "_looked_at",
        "_multiplexed",
        "_new",
        "_out",
        "_reading",
        "_refused",
        "_requests",
        "_reset_idle",
        "_served",
        "_stopping",
        "_tasks",
        "_tasks_done",
        "_wait_first",
        "_write_lot",
        "_writing",
    )

    def __init__(self, sock: socket.socket, host: FastCGIHost) -> None:
        config = host.config
        super().__init__(sock, config.write_timeout)
        self._host = host
        self._conn = f.Connection(
            max_params_size=config.max_header_size,
            max_body_size=config.max_body_size,
            max_requests=config.fastcgi_max_requests,
            multiplex=config.fastcgi_max_requests > 1,
            max_conns=config.max_connections,
        )
        self._requests: dict[int, _Request] = {}
        self._new: list[tuple[_Request, list[tuple[bytes, bytes]]]] = []
        self._buffered = 0
        self._keep_conn = True
        self._served = 0
        self._broken = False
        self._eof = False
        self._stopping = False
        self._multiplexed = False
        self._inline = False
        self._idle_since: float | None = None
        self._head_deadline = math.inf
        self._head_timed_out = False
        self._wait_first = False
        self._refused = 0  # the core's refusals told so far
        self._helper = False  # a task reads beside a busy inline request
        self._looked_at = -1  # the inline request the sweep saw last (by _served)
        self._out: list[bytes] = []
        self._reading = False
        self._activity = ParkingLot()
        self._writing = False
        self._write_lot = ParkingLot()
        self._closing = False  # _cancel_all: end the connection now
        self._cut = False  # a response was cut short: the front-end must see it (abort)
        self._reset_idle = False  # closed while idle and kept: with a reset (run)
        # The cancel scopes of the tasks started for this connection (_start).
        self._tasks: set[trio.CancelScope] = set()
        self._tasks_done: ParkingLot | None = None

    async def run(self, initial: bytes = b"", deadline: float | None = None) -> None:
        """Serve requests until the front-end closes, keep-conn ends or the server stops
        (``initial``, ``deadline``: as for :meth:`SCGIConnection.run`)."""
        host = self._host
        host.fastcgi_connections.add(self)
        # The first request's head must come within header_timeout, the whole head and
        # not each read (a byte every few seconds must not hold us); later, the server's
        # sweep closes idle connections. A deadline on the reads, not on the nursery:
        # setting and lifting a scope's deadline costs more per connection.
        self._head_deadline = (
            trio.current_time() + host.config.header_timeout if deadline is None else deadline
        )
        try:
            try:
                if initial:
                    self._conn.receive_data(initial)
                    await self._process(False)
                await self._serve()
            except BaseException:
                if not self._requests and self._served:
                    # Idle and cancelled (graceful_timeout ran out): see close_idle.
                    self._reset_idle = True
                self._cancel_all()  # as a nursery would: our tasks end with us
                raise
            finally:
                # The front-end is gone or we stop: requests still waiting for
                # body bytes or a disconnect learn it now.
                self._all_gone()
                if self._tasks:
                    await self._join_tasks()
        finally:
            host.fastcgi_connections.discard(self)
            if self._cut and not self._eof:
                await self._tell_cut()
            # An idle kept connection closes with a reset over TCP: a front-end that
            # takes it from its keepalive cache before it sees the close then finds
            # the error (SO_ERROR) before it sends the request, and sends it on a
            # new connection (nginx retries so even a POST: nothing was sent). A
            # clean FIN would be noticed only after its request went out.
            self.close(reset=self._broken or self._reset_idle)
        if self._head_timed_out:
            if host.metrics is not None:
                host.metrics.timeouts["header"] += 1
            log.info(
                "FastCGI request not received within %g s (header_timeout)",
                host.config.header_timeout,
            )

    async def _serve(self) -> None:
        while True:
            new = self._new
            if new:
                if len(new) == 1 and len(self._requests) == 1 and not self._multiplexed:
                    # Alone on the connection: run it here, no task. While it runs,
                    # it reads for itself when it waits for input.
                    request, params = new.pop()
                    self._inline = True
                    try:
                        await request.run(params)
                    finally:
                        self._inline = False
                else:
                    self._multiplexed = True
                    for request, params in new:
                        self._start(request.run, params)
                    new.clear()
                continue
            if self._eof or self._broken or self._closing:
                return
            if (self._stopping or not self._keep_conn) and self._served and not self._requests:
                if self._keep_conn and self._late_request():
                    # The front-end had already sent its next request: serve it too.
                    await self._process(False)
                    continue
                return
            if self._reading or self._buffered > _MAX_BUFFERED:
                # A request reads for now, or applications have not taken what we
                # hold (then we stop reading: FastCGI's only flow control).
                await self._activity.park()
            else:
                await self._pump()

    def _late_request(self) -> bool:
        """Closing a kept connection: whether bytes of a next request are already here.

        Checked with no schedule point before the close, so that only a request
        written in the microseconds between this read and the close can meet a closed
        socket (and nginx, told by _LAST_RECORD, sends none).
        """
        try:
            data = self.sock.recv(RECV_SIZE)
        except OSError:  # BlockingIOError: nothing there (the usual case)
            return False
        if not data:
            self._eof = True
            return False
        self._conn.receive_data(data)
        return True

    async def _pump(self) -> None:
        """Read once from the socket, hand each record to its request, answer what the core
        answers itself, and wake everyone waiting on this connection."""
        self._reading = True
        try:
            if self._wait_first:
                # Kept alive after a response: the next request can't be there yet
                # (front-ends send one at a time per connection), so wait before
                # reading rather than try a read that fails.
                self._wait_first = False
                data = await self.recv_when_readable()
            elif self._served or self._requests:
                data = await self.recv_unbounded()
            else:
                data = await self.recv(0.0, self._head_deadline)
        except Timeout:
            # No request head by header_timeout: closed (run() logs it).
            self._head_timed_out = self._eof = True
            return
        except trio.ClosedResourceError:
            return  # _cancel_all woke us: the connection ends
        except OSError as exc:
            log.info("FastCGI connection lost: %s", exc)
            data = b""
        finally:
            self._reading = False
        self._conn.receive_data(data)
        await self._process(not data)

    async def _process(self, eof: bool) -> None:
        conn = self._conn
        try:
            event = conn.next_event()
            while event is not f.NEED_DATA:
                if type(event) is f.ConnectionClosed:
                    self._eof = True
                    break
                self._dispatch(event)
                event = conn.next_event()
        except f.RemoteProtocolError as exc:
            if eof:
                log.info("FastCGI front-end closed the connection mid-request: %s", exc)
                self._eof = True
            else:
                log.info("bad FastCGI input: %s; closing the connection", exc)
                self._broken = True
        if self._broken:
            self._cancel_all()  # the stream can't go on: end every request now
        elif self._eof:
            self._all_gone()
        if conn.refused != self._refused:
            self._tell_refusals()
        if self._activity:  # someone waits (cheaper to ask than to unpark nobody)
            self._activity.unpark_all()
        pending = conn.data_to_send()
        if self._out:
            pending += b"".join(self._out)
            self._out.clear()
        if pending and not self._broken:
            try:
                await self._write(pending)
            except ClientDisconnected as exc:
                # The front-end left or stopped reading; _write marked the connection
                # broken. The requests learn it here.
                log.info("FastCGI connection lost: %s", exc)
                self._all_gone()

    async def _tell_cut(self) -> None:
        """Before closing on a cut response: a record no front-end accepts.

        nginx takes an EOF for the end of the response without fastcgi_keep_conn (its
        default), and on its unbuffered path (``X-Accel-Buffering: no``) even with it:
        over a Unix socket, where a close cannot be a reset, a cut response then ends
        cleanly (its last chunk sent: it looks whole). A record it cannot parse (version
        0) is an upstream error: it closes its client's connection without the last chunk
        ("upstream sent unsupported FastCGI protocol version: 0"), whatever the socket.
        """
        with trio.move_on_after(_CUT_PATIENCE) as scope:
            scope.shield = True  # a final write, bounded
            with contextlib.suppress(OSError):
                await self.sendall(_CUT_RECORD)

    def look_at_inline(self) -> None:
        """The server's sweep, every ``INLINE_LOOK`` s: a request that has run in the
        connection's own task since the last look without reading gets a reader beside it.

        Nobody else reads while it runs: a busy application (waiting on its database, not
        on ``receive()``) would hold up an ABORT_REQUEST for it, the front-end's close, and
        the next request of a front-end that multiplexes, all until it answers. Looking
        costs the request path nothing; the reader costs a task only for requests that run
        past a look or two.
        """
        if not self._inline or self._helper or self._reading or self._closing:
            self._looked_at = -1
        elif self._looked_at != self._served:
            self._looked_at = self._served  # first seen; the next look decides
        else:
            self._helper = True
            self._start(self._read_beside, self._served)

    async def _read_beside(self, served: int) -> None:
        # Read for everyone while the inline request that was seen busy runs; it ends
        # when that request does (_served moves on; the connection's task reads again).
        try:
            while self._inline and self._served == served and not self._ended():
                if self._reading or self._buffered > _MAX_BUFFERED:
                    await self._activity.park()
                else:
                    await self._pump()
        finally:
            self._helper = False

    def _tell_refusals(self) -> None:
        # BEGIN_REQUESTs the core refused by itself: the front-end's configuration and
        # ours disagree. A warning, at most one a while (a peer can send thousands).
        conn = self._conn
        count = conn.refused - self._refused
        self._refused = conn.refused
        status = conn.last_refusal
        host = self._host
        if host.metrics is not None:
            kind = "unknown_role" if status == f.UNKNOWN_ROLE else "overloaded"
            host.metrics.refused[kind] += count
        if status == f.UNKNOWN_ROLE:
            why = "a role other than RESPONDER (AUTHORIZER and FILTER are not served)"
        elif status == f.OVERLOADED:
            limit = host.config.fastcgi_max_requests
            why = f"over {limit} requests at once on one connection (fastcgi_max_requests)"
        else:
            why = (
                "a second request at once on one connection while fastcgi_max_requests"
                " is 1 (FCGI_MPXS_CONNS is 0)"
            )
        host.warn_request("FastCGI front-end sent %s; refused %d request(s)", why, count)

    async def wait_for_input(self) -> None:
        """For a request that waits: read for everyone if nobody is, else wait for news."""
        if self._reading or self._eof or self._broken or self._buffered > _MAX_BUFFERED:
            await self._activity.park()
        else:
            await self._pump()

    def stop_when_idle(self, *, hold: bool) -> None:
        """Graceful shutdown: take the requests that come, close after the last response.

        A kept connection idle on our side may already carry the front-end's next
        request: nginx takes a connection from its keepalive cache and writes to it
        before it could see our close, and then answers a POST with a 502 (it never
        retries a request it has sent). FastCGI gives the application no way to say "no
        more requests" on a FCGI_KEEP_CONN connection; the one moment at which no request
        can be in flight on it is right after an END_REQUEST (and _LAST_RECORD then tells
        nginx not to cache it).

        ``hold``: a new worker serves the socket (a reload): an idle connection stays
        open until a request comes, which is served and then closes it, or until the
        front-end closes it, or until graceful_timeout (docs/operations.md: keep nginx's
        upstream ``keepalive_timeout`` below it). Otherwise (a full stop: nothing will
        answer once we are gone) an idle connection closes now, unless a request has
        already arrived on it, which is served first.
        """
        self._stopping = True
        if not hold and not self._requests and self._served:
            # Wake the reader: _serve then takes what has arrived (_late_request) or
            # closes. Not _cancel_all: a request read in this very scheduler pass
            # would then run with its answer refused.
            if self._reading:
                trio.lowlevel.notify_closing(self.sock)
            if self._activity:
                self._activity.unpark_all()

    def _after_last_end(self) -> bytes:
        """Stopping: what follows an END_REQUEST. _LAST_RECORD when it ends the last
        request of a kept connection (which then closes), nothing while others run on it
        (a multiplexing front-end still reads their records)."""
        return _LAST_RECORD if self._keep_conn and len(self._requests) <= 1 else b""

    def idle_for(self, now: float) -> float:
        """How long the connection has waited with no request (0 while one runs)."""
        if self._requests or self._idle_since is None:
            return 0.0
        return now - self._idle_since

    def close_idle(self) -> None:
        """Close a kept-alive connection that has waited too long for its next request."""
        if not self._requests:
            self._stopping = True
            self._reset_idle = True
            self._cancel_all()

    def _dispatch(self, event: f.Event) -> None:
        kind = type(event)
        if kind is f.Data:
            data = cast(f.Data, event)
            request = self._requests.get(data.request_id)
            if request is not None:
                request.feed(data.data)
        elif kind is f.Request:
            event = cast(f.Request, event)
            self._keep_conn = event.keep_conn
            request = _Request(self, event.request_id)
            self._requests[event.request_id] = request
            if self._inline:
                # A second request while one runs in the connection's task: the
                # front-end multiplexes; from now on each request gets a task.
                self._multiplexed = True
                self._start(request.run, event.params)
            else:
                self._new.append((request, event.params))
        elif kind is f.EndOfMessage:
            request = self._requests.get(cast(f.EndOfMessage, event).request_id)
            if request is not None:
                request.feed_end()
        elif kind is f.Abort:
            request = self._requests.get(cast(f.Abort, event).request_id)
            if request is not None:
                request.aborted_by_peer()
        elif kind is f.Rejected:
            event = cast(f.Rejected, event)
            self._keep_conn = event.keep_conn
            rid = event.request_id
            if self._host.metrics is not None:
                self._host.metrics.rejected(event.status_hint)
            running = self._requests.get(rid)
            if running is None or running._ended:
                # Not running, or the id is reused: an earlier request on it ended
                # (aborted), and its application may still run. The refusal is the new one's.
                self._served += 1
                if not self._requests:
                    self._idle_since = trio.current_time()  # for the idle sweep
            elif running.started:
                # Its body broke a limit (413, no CONTENT_LENGTH announced it) after
                # its response began: no 413 can replace it, and an END_REQUEST
                # would make it look whole. Only a cut connection is honest.
                log.info(
                    "bad request: %s, after its response began; closing the connection",
                    event.reason,
                )
                running.peer_gone()
                self._broken = True
                return
            else:
                # Running but not answering yet: the 413 answers it, and the app
                # sees a disconnect (its writes fail, receive() says so).
                running.rejected()
            log.info("bad request: %s; answered %d", event.reason, event.status_hint)
            self._out.append(self._conn.send_stdout(rid, error_bytes(event.status_hint)))
            self._out.append(self._conn.end_request(rid))

    # --- shared by the requests -----------------------------------------------------

    async def _write(self, data: Bytes) -> None:
        """Write whole records: one writer at a time, so records never interleave."""
        await self._write_many((data,))

    async def _write_many(self, parts: Sequence[Bytes]) -> None:
        while self._writing:
            await self._write_lot.park()
        if self._broken or self._closing:
            if self._write_lot:
                self._write_lot.unpark_all()  # every writer waiting learns it too
            raise ClientDisconnected("the FastCGI connection is closed")
        self._writing = True
        try:
            # Who writes has just checked for cancellation (the cycle's send(), the
            # file loop) or must write regardless (what the read loop answers).
            if len(parts) == 1:
                await self.sendall(parts[0], checked=True)
            else:
                await self.send_many(parts, checked=True)
        except BaseException:
            # Part of a record may have gone out: the stream can't go on.
            self._broken = True
            raise
        finally:
            self._writing = False
            if self._write_lot:
                self._write_lot.unpark()

    def _finished(self, request: _Request) -> None:
        if self._requests.get(request.request_id) is request:
            del self._requests[request.request_id]
        self._buffered -= request.buffered
        request.buffered = 0
        self._served += 1
        if not self._requests:
            if self._broken or self._stopping or not self._keep_conn:
                if not self._inline or self._helper:
                    # A task may be reading: end it. (Inline with no reader beside, this
                    # is the connection's task: its loop ends by itself, and a cancel,
                    # which costs more than the rest of the close, is not needed.)
                    self._cancel_all()
            else:
                # Idle: the server's sweep closes it after idle_timeout.
                self._idle_since = trio.current_time()
                self._wait_first = True
        if self._activity:
            self._activity.unpark_all()
        if self._broken:
            self._cancel_all()

    def _ended(self) -> bool:
        return self._eof or self._broken or self._closing

    def _start(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run ``fn(*args)`` in a task of its own, which the connection outlives."""
        scope = trio.CancelScope()
        if self._closing:
            scope.cancel()  # it starts cancelled, as in a nursery being cancelled
        self._tasks.add(scope)
        self._host.spawn(self._task, scope, fn, args)

    async def _task(
        self, scope: trio.CancelScope, fn: Callable[..., Awaitable[None]], args: tuple[object, ...]
    ) -> None:
        try:
            with scope:
                await fn(*args)
        except Exception:
            # A bug of ours: in a nursery it would have ended the connection.
            log.exception("unexpected error while serving a FastCGI connection")
            self._broken = True
            self._cancel_all()
        finally:
            self._tasks.discard(scope)
            if not self._tasks and self._tasks_done is not None:
                self._tasks_done.unpark_all()

    async def _join_tasks(self) -> None:
        # What a nursery's end does: wait for our tasks. They see the end (the requests
        # were told the peer is gone) or were cancelled; the wait itself is shielded,
        # as a nursery's is, so the socket is never closed under one of them.
        if self._tasks_done is None:
            self._tasks_done = ParkingLot()
        with trio.CancelScope(shield=True):
            while self._tasks:
                await self._tasks_done.park()

    def _all_gone(self) -> None:
        """The stream is over for every request: those waiting for body bytes or a
        disconnect learn it, and whoever is parked wakes to see it."""
        for request in list(self._requests.values()):
            request.peer_gone()
        if self._activity:
            self._activity.unpark_all()

    def _cancel_all(self) -> None:
        """End the connection now: its tasks are cancelled, its own task stops reading."""
        self._closing = True
        self._all_gone()  # their stream is cut: waiting for it is over
        for scope in self._tasks:
            scope.cancel()
        if self._reading or self._writing:
            # Whoever waits on the socket wakes (trio.ClosedResourceError, a
            # ClientDisconnected to a writer); the socket is closed once the
            # connection's task is out of _serve.
            trio.lowlevel.notify_closing(self.sock)
        if self._write_lot:
            self._write_lot.unpark_all()


class _Request:
    """One request of a FastCGI connection; the :class:`~trioscgi._asgi.seam.Wire` of its cycle."""

    __slots__ = (
        "_body",
        "_body_ended",
        "_conn",
        "_discard",
        "_ended",
        "_gone",
        "buffered",
        "request_id",
        "started",
    )

    def __init__(self, conn: FastCGIConnection, request_id: int) -> None:
        self._conn = conn
        self.request_id = request_id
        self._body: collections.deque[bytes] = collections.deque()
        self._body_ended = False
        self._gone = False
        self._ended = False  # END_REQUEST sent
        self._discard = False
        self.buffered = 0
        self.started = False  # the response head went out

    async def run(self, params: list[tuple[bytes, bytes]]) -> None:
        conn = self._conn
        try:
            await serve_request(
                self,
                conn._host,
                params,
                body_done=self._body_ended and not self._body,
                fastcgi=True,
            )
            if not self._ended and not self._gone and not conn._broken:
                # The cycle ended without a complete response and without an abort
                # (the client went away first): end the request for the front-end.
                with contextlib.suppress(ClientDisconnected):
                    # (Unless the connection breaks while this waits its turn.)
                    await self._end()
        finally:
            conn._finished(self)

    # --- fed by the connection's read loop --------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._discard:
            return
        self._body.append(data)
        cost = len(data) + _CHUNK_COST
        self.buffered += cost
        self._conn._buffered += cost

    def feed_end(self) -> None:
        self._body_ended = True

    def aborted_by_peer(self) -> None:
        """ABORT_REQUEST: the application sees a disconnect; END_REQUEST goes out now."""
        if not self._gone:
            self._gone = True
            if not self._ended:
                self._ended = True
                # Written by the read loop after this batch of records.
                self._conn._out.append(self._conn._conn.end_request(self.request_id))

    def rejected(self) -> None:
        """The core rejected the request while it ran; the connection answers it."""
        self._gone = self._ended = self._body_ended = True
        self._body.clear()

    def peer_gone(self) -> None:
        # Not _body_ended: a body cut short must not look complete to the application.
        self._gone = True

    # --- the Wire -------------------------------------------------------------------

    async def read_body(self) -> tuple[bytes, bool]:
        conn = self._conn
        patience = conn._host.config.read_timeout
        if not self._body and not self._body_ended and not self._gone:
            with trio.move_on_after(patience) as scope:
                while not self._body and not self._body_ended and not self._gone:
                    await conn.wait_for_input()
            if scope.cancelled_caught:
                raise body_stalled(conn._host.metrics, patience)
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        if self._body:
            data = self._body.popleft()
            cost = len(data) + _CHUNK_COST
            self.buffered -= cost
            conn._buffered -= cost
            if conn._buffered + cost > _MAX_BUFFERED >= conn._buffered:
                conn._activity.unpark_all()  # below the limit again: reading resumes
            return data, bool(self._body) or not self._body_ended
        if self._gone and not self._body_ended:
            raise ClientDisconnected("client went away during the request body")
        if self._gone and self._ended:
            raise ClientDisconnected("the front-end aborted the request")
        return b"", False

    async def write(self, head: p.Response | None, body: Bytes, more: bool) -> None:
        if self._gone:
            raise ClientDisconnected("the client went away")
        fc = self._conn._conn
        rid = self.request_id
        self.started = True
        if len(body) > COALESCE_LIMIT:
            # A large body is framed on its own and written with the head and the
            # END_REQUEST in one sendmsg(), straight from the app's buffer.
            parts: list[Bytes] = []
            if head is not None:
                parts.append(fc.send_stdout(rid, cgi_head(head.status, head.headers)))
            parts += fc.send_stdout_parts(rid, body)
            if not more:
                parts.append(fc.end_request(rid))
                if self._conn._stopping:
                    parts.append(self._conn._after_last_end())
                self._ended = True
            await self._conn._write_many(parts)
            return
        if head is not None:
            data = cgi_head(head.status, head.headers)
            out = fc.send_stdout(rid, data + body if body else data)
        else:
            out = fc.send_stdout(rid, body) if body else b""
        if not more:
            out += fc.end_request(rid)
            if self._conn._stopping:
                out += self._conn._after_last_end()
            self._ended = True
        if out:
            await self._conn._write(out)

    async def write_file(
        self, head: p.Response | None, fd: int, offset: int, count: int, more: bool
    ) -> int:
        # Records wrap the file's bytes, so they pass through here in pieces.
        if head is not None:
            await self.write(head, b"", True)
        sent = 0
        while sent < count:
            # Read in this thread, as the SCGI path's fallback does: the
            # file is mostly in the page cache, and a thread hop per piece
            # would cost more than the read.
            piece = os.pread(fd, min(_FILE_PIECE, count - sent), offset + sent)
            if not piece:
                return sent
            await trio.lowlevel.checkpoint_if_cancelled()  # the writes check no more
            await self.write(None, piece, True)
            sent += len(piece)
        if not more:
            await self.write(None, b"", False)
        return sent

    async def wait_disconnect(self) -> None:
        conn = self._conn
        while not self._gone:
            await conn.wait_for_input()

    async def drain(self) -> None:
        # The response is complete: what is left of the body is of no use. The
        # read loop discards it; wait (bounded) until it has all come, so that
        # a connection closed after this request has no unread bytes (which
        # would make the front-end see a reset).
        self._discard = True
        conn = self._conn
        conn._buffered -= self.buffered
        self.buffered = 0
        self._body.clear()
        if conn._activity:
            conn._activity.unpark_all()
        if conn._keep_conn:
            return
        with trio.move_on_after(conn._host.config.drain_timeout) as scope:
            while not self._body_ended and not self._gone:
                await conn.wait_for_input()
        if scope.cancelled_caught and conn._host.metrics is not None:
            conn._host.metrics.timeouts["drain"] += 1

    def abort(self) -> None:
        # Started and not complete: an END_REQUEST would make it look whole. Only
        # a cut connection tells the front-end (it takes the other requests on
        # this connection with it: FastCGI has no other way), and the bare close
        # is not enough: see _tell_cut.
        conn = self._conn
        if not conn._broken:
            conn._cut = True  # the stream is whole up to here: a record can follow
        conn._broken = True
        conn._cancel_all()

    async def _end(self) -> None:
        self._ended = True
        conn = self._conn
        out = conn._conn.end_request(self.request_id)
        await conn._write(out + conn._after_last_end() if conn._stopping else out)
