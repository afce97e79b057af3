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
exit), and nginx's default (no ``fastcgi_keep_conn``) pays it per request: 95.8k
instructions for ``async with trio.open_nursery(): pass`` under callgrind (the difference
between 1,000 and 3,000 of them in a loop, issue 21), against 347k for a whole request on
a new connection (docs/benchmarks.md). What stands in costs nothing for a connection that
starts no task (nginx, Apache, lighttpd), and a cancel scope in a set (5.4k counted the
same way) for each task it starts. The few tasks a connection needs (a multiplexed
request, a reader beside a busy one) start in the server's connection nursery, each under
a cancel scope the connection keeps, and the connection's task waits for them (a
``trio.Event``, shielded) before it closes the socket: their lifetime stays inside the
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

from .. import fastcgi as f
from .. import scgi as p
from .._asgi.dispatch import serve_request
from .._asgi.seam import CycleHost, error_bytes
from .._cgi import cgi_head
from .._turns import ReadTurn, WriteTurn
from .sendfile import read_piece
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
# Linux >= 4.14: a read that fails with EAGAIN rather than wait for the disk.
_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


def _read_cached(fd: int, size: int, offset: int) -> Bytes | None:
    """Up to ``size`` bytes of ``fd`` at ``offset`` if the page cache holds them (at least
    the first), read in this thread; ``None`` if that would wait for the disk, or ``fd``
    is no file this can read (a pipe, or no ``RWF_NOWAIT``).

    A thread hop costs about 100 to 270 µs per piece on the bench machine (loaded, 4 KiB
    to 256 KiB pieces), a read from the cache 1 to 60 µs: hot files, the usual case, are
    read here, and only a read that would block goes to a thread.
    """
    if _NOWAIT is None:
        return None
    buffer = bytearray(size)
    try:
        n = os.preadv(fd, (buffer,), offset, _NOWAIT)
    except OSError:  # EAGAIN: not cached; ESPIPE: a pipe; EOPNOTSUPP: this file system
        return None
    return memoryview(buffer)[:n] if n < size else buffer


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
    ``_read_turn``); it dispatches every record to its request and wakes the others.
    Whole records go out one writer at a time (``_write_turn``). So a request runs in the
    connection's own task when it is alone on the connection (no task per request:
    nginx, Apache and lighttpd never multiplex), and in a task of its own beside others
    when the front-end multiplexes.
    """

    __slots__ = (
        "_buffered",
        "_closing",
        "_cut",
        "_eof",
        "_head_deadline",
        "_head_pending",
        "_head_timed_out",
        "_helper",
        "_idle_since",
        "_inline",
        "_looked_at",
        "_multiplexed",
        "_new",
        "_out",
        "_read_turn",
        "_refused",
        "_requests",
        "_reset_idle",
        "_served",
        "_stopping",
        "_tasks",
        "_tasks_done",
        "_wait_first",
        "_write_turn",
        "broken",
        "core",
        "host",
        "keep_conn",
    )

    def __init__(self, sock: socket.socket, host: FastCGIHost) -> None:
        config = host.config
        super().__init__(sock, config.write_timeout)
        self.host = host
        self.core = f.Connection(
            max_params_size=config.max_header_size,
            max_body_size=config.max_body_size,
            max_requests=config.fastcgi_max_requests,
            multiplex=config.fastcgi_max_requests > 1,
            max_conns=config.max_connections,
        )
        self._requests: dict[int, _RequestWire] = {}
        self._new: list[tuple[_RequestWire, list[tuple[bytes, bytes]]]] = []
        self._buffered = 0
        self.keep_conn = True
        self._served = 0
        self.broken = False
        self._eof = False
        self._stopping = False
        self._multiplexed = False
        self._inline = False
        self._idle_since: float | None = None
        self._head_deadline = math.inf
        # A later request's head begun on an idle kept connection (ids in their
        # PARAMS, no event yet): it too must come whole within header_timeout.
        self._head_pending = False
        self._head_timed_out = False
        self._wait_first = False
        self._refused = 0  # the core's refusals told so far
        self._helper = False  # a task reads beside a busy inline request
        self._looked_at = -1  # the inline request the sweep saw last (by _served)
        self._out: list[bytes] = []
        self._read_turn = ReadTurn()  # whoever needs input reads for all (_pump)
        self._write_turn = WriteTurn()  # whole records, one writer at a time
        self._closing = False  # _cancel_all: end the connection now
        self._cut = False  # a response was cut short: the front-end must see it (abort)
        self._reset_idle = False  # closed while idle and kept: with a reset (run)
        # The cancel scopes of the tasks started for this connection (_start).
        self._tasks: set[trio.CancelScope] = set()
        self._tasks_done: trio.Event | None = None  # set when the last task ends (joining)

    async def run(self, initial: bytes = b"", deadline: float | None = None) -> None:
        """Serve requests until the front-end closes, keep-conn ends or the server stops
        (``initial``, ``deadline``: as for :meth:`OneShotConnection.run`)."""
        host = self.host
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
                    self.core.receive_data(initial)
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
            self.close(reset=self.broken or self._reset_idle)
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
            if self._eof or self.broken or self._closing:
                return
            if (self._stopping or not self.keep_conn) and self._served and not self._requests:
                if self.keep_conn and self._late_request():
                    # The front-end had already sent its next request: serve it too.
                    await self._process(False)
                    continue
                return
            if self._read_turn.reading or self._buffered > _MAX_BUFFERED:
                # A request reads for now, or applications have not taken what we
                # hold (then we stop reading: FastCGI's only flow control).
                await self._read_turn.wait()
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
        self.core.receive_data(data)
        return True

    async def _pump(self) -> None:
        """Read once from the socket, hand each record to its request, answer what the core
        answers itself, and wake everyone waiting on this connection."""
        turn = self._read_turn
        turn.take()
        try:
            if self._wait_first:
                # Kept alive after a response: the next request can't be there yet
                # (front-ends send one at a time per connection), so wait before
                # reading rather than try a read that fails.
                self._wait_first = False
                data = await self.recv_when_readable()
            elif self._requests or (self._served and not self._head_pending):
                data = await self.recv_unbounded()
            else:
                # The first request's head, or a later one begun: within header_timeout.
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
            # However the read ended (the reader's own deadline too): the others wake,
            # and one of them reads next if it still needs input.
            turn.done()
        self.core.receive_data(data)
        await self._process(not data)
        if not self._requests and self._served:
            self._note_head()

    def _note_head(self) -> None:
        """Idle between requests: whether ids have begun their head (ids in PARAMS).

        The idle sweep leaves such a connection alone (it is not idle: a head is
        on its way), so the head's own deadline bounds it, as the first one's.
        """
        pending = self.core.active_requests > 0
        if pending and not self._head_pending:
            self._head_deadline = trio.current_time() + self.host.config.header_timeout
        self._head_pending = pending

    async def _process(self, eof: bool) -> None:
        core = self.core
        try:
            event = core.next_event()
            while event is not f.NEED_DATA:
                if type(event) is f.ConnectionClosed:
                    self._eof = True
                    break
                self._dispatch(event)
                event = core.next_event()
        except f.RemoteProtocolError as exc:
            if eof:
                log.info("FastCGI front-end closed the connection mid-request: %s", exc)
                self._eof = True
            else:
                log.info("bad FastCGI input: %s; closing the connection", exc)
                self.broken = True
        if self.broken:
            self._cancel_all()  # the stream can't go on: end every request now
        elif self._eof:
            self._all_gone()
        if core.refused != self._refused:
            self._tell_refusals()
        self._read_turn.news()
        pending = core.data_to_send()
        if self._out:
            pending += b"".join(self._out)
            self._out.clear()
        if pending and not self.broken:
            try:
                # The connection's answers (management records, a neighbour's
                # END_REQUEST or 413), not the reader's: whichever task happened to
                # read writes them, and its own deadline (a read_timeout) must not cut
                # them mid-record, which would cut every request on the connection.
                # Bounded all the same: write_timeout, and _cancel_all wakes it.
                with trio.CancelScope(shield=True):
                    await self.write_records(pending)
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
        if not self._inline or self._helper or self._read_turn.reading or self._closing:
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
                if self._read_turn.reading or self._buffered > _MAX_BUFFERED:
                    await self._read_turn.wait()
                else:
                    await self._pump()
        finally:
            self._helper = False

    def _tell_refusals(self) -> None:
        # BEGIN_REQUESTs the core refused by itself: the front-end's configuration and
        # ours disagree. A warning, at most one a while (a peer can send thousands).
        core = self.core
        count = core.refused - self._refused
        self._refused = core.refused
        status = core.last_refusal
        host = self.host
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
        if self._read_turn.reading or self._eof or self.broken or self._buffered > _MAX_BUFFERED:
            await self._read_turn.wait()
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
            if self._read_turn.reading:
                trio.lowlevel.notify_closing(self.sock)
            self._read_turn.news()

    # --- for its requests (_RequestWire) ---------------------------------------------

    def end_records(self, request_id: int) -> bytes:
        """The END_REQUEST that ends a response, and what follows it when we are stopping."""
        out = self.core.end_request(request_id)
        return out + self._after_last_end() if self._stopping else out

    def answer_later(self, records: bytes) -> None:
        """Records the read loop writes after the batch it is dispatching."""
        self._out.append(records)

    def release_body(self, cost: int) -> None:
        """A request took or dropped body bytes it held (``cost``, as ``feed`` counted
        them); below ``_MAX_BUFFERED`` again, reading resumes."""
        self._buffered -= cost
        if self._buffered + cost > _MAX_BUFFERED >= self._buffered:
            self._read_turn.news()

    def cut_short(self) -> None:
        """A response cut short: end the connection, the front-end's only way to know."""
        if not self.broken:
            self._cut = True  # the stream is whole up to here: a record can follow
        self.broken = True
        self._cancel_all()

    def _after_last_end(self) -> bytes:
        """Stopping: what follows an END_REQUEST. _LAST_RECORD when it ends the last
        request of a kept connection (which then closes), nothing while others run on it
        (a multiplexing front-end still reads their records)."""
        return _LAST_RECORD if self.keep_conn and len(self._requests) <= 1 else b""

    def idle_for(self, now: float) -> float:
        """How long the connection has waited with no request (0 while one runs)."""
        if self._requests or self._idle_since is None or self._head_pending:
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
                self._buffered += request.feed(data.data)
        elif kind is f.Request:
            event = cast(f.Request, event)
            self._head_pending = False
            self.keep_conn = event.keep_conn
            request = _RequestWire(self, event.request_id)
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
            self.keep_conn = event.keep_conn
            rid = event.request_id
            if self.host.metrics is not None:
                self.host.metrics.rejected(event.status_hint)
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
                self.broken = True
                return
            else:
                # Running but not answering yet: the 413 answers it, and the app
                # sees a disconnect (its writes fail, receive() says so).
                running.rejected()
            log.info("bad request: %s; answered %d", event.reason, event.status_hint)
            self._out.append(self.core.send_stdout(rid, error_bytes(event.status_hint)))
            self._out.append(self.core.end_request(rid))

    # --- shared by the requests -----------------------------------------------------

    async def write_records(self, data: Bytes) -> None:
        """Write whole records: one writer at a time, so records never interleave."""
        await self.write_record_parts((data,))

    async def write_record_parts(self, parts: Sequence[Bytes]) -> None:
        turn = self._write_turn
        if not turn.take_now():
            await turn.wait()  # cancelled while waiting: nothing of ours went out
        try:
            if self.broken or self._closing:
                # (Each writer waiting learns it in turn: the turn passes on below.)
                raise ClientDisconnected("the FastCGI connection is closed")
            try:
                # Who writes has just checked for cancellation (the cycle's send(), the
                # file loop) or must write regardless (what the read loop answers).
                if len(parts) == 1:
                    await self.sendall(parts[0], checked=True)
                else:
                    await self.send_many(parts, checked=True)
            except BaseException:
                # Part of a record may have gone out: the stream can't go on.
                self.broken = True
                raise
        finally:
            turn.release()

    def finished(self, request: _RequestWire) -> None:
        if self._requests.get(request.request_id) is request:
            del self._requests[request.request_id]
        self._buffered -= request.buffered
        request.buffered = 0
        self._served += 1
        if not self._requests:
            if self.broken or self._stopping or not self.keep_conn:
                if not self._inline or self._helper:
                    # A task may be reading: end it. (Inline with no reader beside, this
                    # is the connection's task: its loop ends by itself, and a cancel,
                    # which costs more than the rest of the close, is not needed.)
                    self._cancel_all()
            else:
                # Idle: the server's sweep closes it after idle_timeout.
                self._idle_since = trio.current_time()
                self._wait_first = True
        self._read_turn.news()
        if self.broken:
            self._cancel_all()

    def _ended(self) -> bool:
        return self._eof or self.broken or self._closing

    def _start(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run ``fn(*args)`` in a task of its own, which the connection outlives."""
        scope = trio.CancelScope()
        if self._closing:
            scope.cancel()  # it starts cancelled, as in a nursery being cancelled
        self._tasks.add(scope)
        self.host.spawn(self._task, scope, fn, args)

    async def _task(
        self, scope: trio.CancelScope, fn: Callable[..., Awaitable[None]], args: tuple[object, ...]
    ) -> None:
        try:
            with scope:
                await fn(*args)
        except Exception:
            # A bug of ours: in a nursery it would have ended the connection.
            log.exception("unexpected error while serving a FastCGI connection")
            self.broken = True
            self._cancel_all()
        finally:
            self._tasks.discard(scope)
            if not self._tasks and self._tasks_done is not None:
                self._tasks_done.set()

    async def _join_tasks(self) -> None:
        # What a nursery's end does: wait for our tasks. They see the end (the requests
        # were told the peer is gone) or were cancelled; the wait itself is shielded,
        # as a nursery's is, so the socket is never closed under one of them.
        # (No task starts once the connection's task is out of _serve: a request
        # dispatched now is never run, so one wait is enough.)
        self._tasks_done = trio.Event()
        with trio.CancelScope(shield=True):
            await self._tasks_done.wait()

    def _all_gone(self) -> None:
        """The stream is over for every request: those waiting for body bytes or a
        disconnect learn it, and whoever is parked wakes to see it."""
        for request in list(self._requests.values()):
            request.peer_gone()
        self._read_turn.news()

    def _cancel_all(self) -> None:
        """End the connection now: its tasks are cancelled, its own task stops reading."""
        self._closing = True
        self._all_gone()  # their stream is cut: waiting for it is over
        for scope in self._tasks:
            scope.cancel()
        if self._read_turn.reading or self._write_turn.held:
            # Whoever waits on the socket wakes (trio.ClosedResourceError, a
            # ClientDisconnected to a writer, which hands the turn to the next, who
            # sees _closing); the socket is closed once the connection's task is out
            # of _serve.
            trio.lowlevel.notify_closing(self.sock)


class _RequestWire:
    """One request of a FastCGI connection; the :class:`~trioscgi._asgi.seam.Wire` of its cycle.

    Not the core's request (``trioscgi.fastcgi``'s state of an id): the wire's side of
    one. It holds its body for the application and frames its response with the core
    (``connection.core``); everything else goes through its connection's small interface:
    ``write_records``/``write_record_parts``, ``end_records``, ``answer_later``,
    ``wait_for_input``, ``release_body``, ``cut_short``, ``finished``, and the ``host``,
    ``broken`` and ``keep_conn`` it reads.
    """

    __slots__ = (
        "_body",
        "_body_ended",
        "_connection",
        "_discard",
        "_ended",
        "_gone",
        "buffered",
        "request_id",
        "started",
    )

    def __init__(self, connection: FastCGIConnection, request_id: int) -> None:
        self._connection = connection
        self.request_id = request_id
        self._body: collections.deque[bytes] = collections.deque()
        self._body_ended = False
        self._gone = False
        self._ended = False  # END_REQUEST sent
        self._discard = False
        self.buffered = 0
        self.started = False  # the response head went out

    async def run(self, params: list[tuple[bytes, bytes]]) -> None:
        conn = self._connection
        try:
            await serve_request(
                self,
                conn.host,
                params,
                body_done=self._body_ended and not self._body,
                protocol="fastcgi",
            )
            if not self._ended and not self._gone and not conn.broken:
                # The cycle ended without a complete response and without an abort
                # (the client went away first): end the request for the front-end.
                with contextlib.suppress(ClientDisconnected):
                    # (Unless the connection breaks while this waits its turn.)
                    await self._end()
        finally:
            conn.finished(self)

    # --- fed by the connection's read loop --------------------------------------------

    def feed(self, data: bytes) -> int:
        """Hold ``data`` for the application; what it costs (the connection counts it)."""
        if self._discard:
            return 0
        self._body.append(data)
        cost = len(data) + _CHUNK_COST
        self.buffered += cost
        return cost

    def feed_end(self) -> None:
        self._body_ended = True

    def aborted_by_peer(self) -> None:
        """ABORT_REQUEST: the application sees a disconnect; END_REQUEST goes out now."""
        if not self._gone:
            self._gone = True
            if not self._ended:
                self._ended = True
                # Written by the read loop after this batch of records.
                self._connection.answer_later(self._connection.core.end_request(self.request_id))

    def rejected(self) -> None:
        """The core rejected the request while it ran; the connection answers it."""
        self._gone = self._ended = self._body_ended = True
        self._body.clear()

    def peer_gone(self) -> None:
        # Not _body_ended: a body cut short must not look complete to the application.
        self._gone = True

    # --- the Wire -------------------------------------------------------------------

    async def read_body(self) -> tuple[bytes, bool]:
        conn = self._connection
        patience = conn.host.config.read_timeout
        if not self._body and not self._body_ended and not self._gone:
            with trio.move_on_after(patience) as scope:
                while not self._body and not self._body_ended and not self._gone:
                    await conn.wait_for_input()
            if scope.cancelled_caught:
                raise body_stalled(conn.host.metrics, patience)
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        if self._body:
            data = self._body.popleft()
            cost = len(data) + _CHUNK_COST
            self.buffered -= cost
            conn.release_body(cost)
            return data, bool(self._body) or not self._body_ended
        if self._gone and not self._body_ended:
            raise ClientDisconnected("client went away during the request body")
        if self._gone and self._ended:
            raise ClientDisconnected("the front-end aborted the request")
        return b"", False

    async def write(self, head: p.Response | None, body: Bytes, more: bool) -> None:
        if self._gone:
            raise ClientDisconnected("the client went away")
        conn = self._connection
        fc = conn.core
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
                parts.append(conn.end_records(rid))
                self._ended = True
            await conn.write_record_parts(parts)
            return
        if head is not None:
            data = cgi_head(head.status, head.headers)
            out = fc.send_stdout(rid, data + body if body else data)
        else:
            out = fc.send_stdout(rid, body) if body else b""
        if not more:
            out += conn.end_records(rid)
            self._ended = True
        if out:
            await conn.write_records(out)

    async def write_file(
        self, head: p.Response | None, fd: int, offset: int, count: int, more: bool
    ) -> int:
        # Records wrap the file's bytes, so they pass through here in pieces.
        if head is not None:
            await self.write(head, b"", True)
        sent = 0
        while sent < count:
            size = min(_FILE_PIECE, count - sent)
            piece = _read_cached(fd, size, offset + sent)
            if piece is None:
                # Not all in the page cache (a cold disk), or not a file (a pipe): a
                # read that may block, in a thread, so the worker's other requests go
                # on meanwhile. Not abandoned on cancellation: the caller closes fd
                # once this returns, and a thread still reading a reused fd number
                # would take another file's (or socket's) bytes.
                piece = await trio.to_thread.run_sync(read_piece, fd, offset + sent, size)
            if not piece:
                return sent
            await trio.lowlevel.checkpoint_if_cancelled()  # the writes check no more
            await self.write(None, piece, True)
            sent += len(piece)
        if not more:
            await self.write(None, b"", False)
        return sent

    async def wait_disconnect(self) -> None:
        conn = self._connection
        while not self._gone:
            await conn.wait_for_input()

    async def drain(self) -> None:
        # The response is complete: what is left of the body is of no use. The
        # read loop discards it; wait (bounded) until it has all come, so that
        # a connection closed after this request has no unread bytes (which
        # would make the front-end see a reset).
        self._discard = True
        conn = self._connection
        conn.release_body(self.buffered)
        self.buffered = 0
        self._body.clear()
        if conn.keep_conn:
            return
        with trio.move_on_after(conn.host.config.drain_timeout) as scope:
            while not self._body_ended and not self._gone:
                await conn.wait_for_input()
        if scope.cancelled_caught and conn.host.metrics is not None:
            conn.host.metrics.timeouts["drain"] += 1

    def abort(self) -> None:
        # Started and not complete: an END_REQUEST would make it look whole. Only
        # a cut connection tells the front-end (it takes the other requests on
        # this connection with it: FastCGI has no other way), and the bare close
        # is not enough: see _tell_cut.
        self._connection.cut_short()

    async def _end(self) -> None:
        self._ended = True
        conn = self._connection
        await conn.write_records(conn.end_records(self.request_id))
