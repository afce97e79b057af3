"""The trio server: listeners, lifespan, accept loops and graceful shutdown."""

from __future__ import annotations

import errno
import logging
import math
import random
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio
from trio.lowlevel import checkpoint, wait_readable

from ._apps.apploop import detect_app_loop, open_app_loop
from ._asgi.lifespan import Lifespan, LifespanFailure
from ._config import Config
from ._listeners import Listener, bind_all
from ._types import ASGIApp, counted
from ._wire.fastcgi import INLINE_LOOK, FastCGIConnection
from ._wire.scgi import SCGIConnection
from ._wire.sockio import SocketIO, Timeout
from ._wire.uwsgi import UWSGIConnection

if TYPE_CHECKING:
    from ._accesslog import AccessLogger
    from ._asgi.seam import Session
    from ._counters import WorkerMetrics

__all__ = ["LifespanFailure", "serve"]

log = logging.getLogger("trioscgi")

# accept() errors that mean "out of a resource for now": log, back off and
# try again rather than end the listener.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# At most one warning of a kind that peers can cause (a refused connection,
# a truncated body) per this many seconds.
_WARNING_INTERVAL = 10.0
# Connections accepted in a row before the accept loop yields.
_ACCEPT_BURST = 8
# Requests cut at shutdown logged one line each; past this, one count line.
_CUT_LINES = 10
# A uwsgi request's first byte: modifier1, 0 (nginx's default) or 30 (`uwsgi_modifier1 30`).
# The uwsgi core answers any other modifier; those never reach it under "auto" (SCGI's
# parser answers them with a 400 instead).
_UWSGI_FIRST = (b"\x00", b"\x1e")
# accept() errors about one connection only (it died in the backlog).
_TRANSIENT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})


class OccasionalWarning:
    """A warning logged at most once per interval, with a count of those held back.

    For what peers can repeat at will: whoever can connect must not decide
    how much we log.
    """

    __slots__ = ("_held", "_interval", "_quiet_until")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._held = 0
        self._quiet_until = -math.inf

    def __call__(self, message: str, *args: object) -> None:
        now = trio.current_time()
        if now < self._quiet_until:
            self._held += 1
            return
        self._quiet_until = now + self._interval
        if self._held:
            message += f" ({self._held} more like it since the last such line)"
            self._held = 0
        log.warning(message, *args)


class Server:
    """One server: its listeners, its lifespan and its connections.

    ``serve()`` is the public face; the daemon's runner (``_daemon.run``) drives
    the same :meth:`run`, through public members only: :meth:`shutdown` and
    :meth:`force_shutdown` on its signals, :attr:`active_connections`,
    :attr:`listeners` and :attr:`metrics` for its gauges and socket-file checks.
    """

    def __init__(
        self, app: ASGIApp, config: Config, listeners: Sequence[Listener] | None = None
    ) -> None:
        config.validate()
        # The app as given; self.app is what connections call (the asyncio
        # face of it while run() holds its loop open, docs/asyncio.md).
        self.app = self._given_app = app
        self.app_loop = detect_app_loop(app, config.app_loop)
        self.config = config
        self.state: dict[str, Any] = {}
        self.access_logger: AccessLogger | None = None
        if config.access_log is not None:
            from ._accesslog import AccessLogger  # noqa: PLC0415 - only when enabled

            self.access_logger = AccessLogger(config.access_log_format)
        # metrics_bind: counted here, served by _daemon.run (or the supervisor).
        self.metrics: WorkerMetrics | None = None
        if config.metrics_bind is not None:
            from ._counters import WorkerMetrics  # noqa: PLC0415 - only when enabled

            self.metrics = WorkerMetrics()
        self._listeners: list[Listener] | None = list(listeners) if listeners is not None else None
        self._owns_listeners = listeners is None
        self._starting = trio.CancelScope()
        self._accepting = trio.CancelScope()
        self._everything = trio.CancelScope()
        self._connections: trio.Nursery | None = None
        self._active = 0
        self._below_limit = trio.Event()
        self._below_limit.set()
        self._served = 0
        self._max_requests = 0
        if config.max_requests > 0:
            self._max_requests = config.max_requests + random.randint(
                0, max(0, config.max_requests_jitter)
            )
        self.shutting_down = False
        # Called once when max_requests retires a worker (set by its runner).
        self.on_retiring: Callable[[], None] | None = None
        self.fastcgi_connections: set[FastCGIConnection] = set()
        # The sweep of the FastCGI connections: its scope, and the event it waits on
        # while there is no connection to sweep (None while it sweeps).
        self._sweep = trio.CancelScope()
        self._sweep_parked: trio.Event | None = None
        self.websocket_sessions: set[Session] = set()
        self._warn_refused = OccasionalWarning(_WARNING_INTERVAL)
        self.warn_request = OccasionalWarning(_WARNING_INTERVAL)
        self._cut = 0

    @property
    def active_connections(self) -> int:
        """Connections being served now (what ``max_connections`` caps)."""
        return self._active

    @property
    def listeners(self) -> Sequence[Listener]:
        """The listeners served: none before :meth:`run` binds them or once they close."""
        return self._listeners or ()

    # --- lifecycle --------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind, start the lifespan, serve until :meth:`shutdown`, then stop cleanly.

        Raises:
            LifespanFailure: startup failed or timed out.
            BindError: a bind failed.
        """
        config = self.config
        if self._listeners is None:
            self._listeners = bind_all(config)
        listeners = self._listeners
        failure: LifespanFailure | None = None
        try:
            with self._everything:
                # The app's event loop opens before the lifespan startup and
                # closes after its shutdown.
                async with (
                    open_app_loop(self._given_app, self.app_loop) as self.app,
                    trio.open_nursery() as lifespan_nursery,
                ):
                    lifespan = Lifespan(self.app, config, self.state)
                    try:
                        # A shutdown asked for during startup cancels the wait.
                        with self._starting:
                            await lifespan.startup(lifespan_nursery)
                    except LifespanFailure as exc:
                        # Raised after the nursery, so callers get the bare
                        # exception rather than an ExceptionGroup.
                        failure = exc
                    if failure is not None or self._starting.cancelled_caught:
                        with trio.CancelScope(shield=True):
                            await lifespan.shutdown()
                    else:
                        try:
                            await self._serve(listeners, task_status)
                        finally:
                            self._log_cut_total()
                            with trio.CancelScope(shield=True):
                                await lifespan.shutdown()
        finally:
            self._close_listeners()
        if failure is not None:
            raise failure

    async def _serve(
        self, listeners: list[Listener], task_status: trio.TaskStatus[list[str]]
    ) -> None:
        config = self.config
        async with trio.open_nursery() as connections:
            self._connections = connections
            if config.protocol != "scgi":
                # Beside the connections, not the accept loops: it serves them until the
                # last one ends, through a graceful shutdown too.
                connections.start_soon(self._sweep_fastcgi_connections)
            # A shutdown() before this point cancelled the scope already: a
            # scope cancelled before it is entered is cancelled once entered.
            with self._accepting:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept_loop, listener)
                    descriptions = [lst.description for lst in listeners]
                    log.info("listening on %s", ", ".join(descriptions))
                    task_status.started(descriptions)
            # Stopped accepting: close the listening sockets (and remove our
            # Unix socket files) so the front-end sees the stop at once, then
            # give in-flight requests graceful_timeout to finish.
            self._close_listeners()
            if not self._active:
                self._sweep.cancel()  # nothing left for it to serve
            if self._active:
                log.info(
                    "waiting up to %g s for %s to finish",
                    config.graceful_timeout,
                    counted(self._active, "connection"),
                )
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout

    def shutdown(self, *, retire: bool = False) -> None:
        """Begin a graceful shutdown: stop accepting, let requests finish.

        Args:
            retire: other processes go on serving the listeners (a reload, or
                ``max_requests`` in a worker): kept FastCGI connections stay open
                until the front-end has sent its last request on them.
        """
        if not self.shutting_down:
            self.shutting_down = True
            log.info("shutting down")
        self._starting.cancel()
        self._accepting.cancel()
        # Kept-alive FastCGI connections close right after a response, never while a
        # request may be on its way; idle ones at once on a full stop.
        for connection in list(self.fastcgi_connections):
            connection.stop_when_idle(hold=retire)
        # Open WebSockets get close 1001 (going away), then graceful_timeout as any request.
        for session in list(self.websocket_sessions):
            session.going_away()

    def request_cut(self, scope: dict[str, Any], started: float) -> None:
        """Log a request cut by the shutdown: the first few each, then a count."""
        if not self.shutting_down:
            return  # a cancellation of the request's own (a FastCGI abort)
        self._cut += 1
        if self._cut > _CUT_LINES:
            return
        now = trio.current_time()
        connections = self._connections
        if connections is not None and now >= connections.cancel_scope.deadline:
            why = f"at graceful_timeout ({self.config.graceful_timeout:g} s)"
        else:
            why = "by a forced shutdown"
        log.warning(
            "request cut %s: %s %s, running for %.1f s",
            why,
            scope.get("method", ""),
            scope.get("path", ""),
            now - started,
        )

    def _log_cut_total(self) -> None:
        if self._cut > _CUT_LINES:
            log.warning(
                "%d requests cut in all (%d more than listed above)",
                self._cut,
                self._cut - _CUT_LINES,
            )

    def force_shutdown(self) -> None:
        """Cancel everything now (a second signal); lifespan shutdown is skipped."""
        self.shutting_down = True
        self._accepting.cancel()
        self._everything.cancel()

    def _close_listeners(self) -> None:
        if self._owns_listeners and self._listeners:
            for listener in self._listeners:
                listener.close()
            self._listeners = []
        elif self._listeners:
            # Listeners handed in (by the supervisor) stay open for the next
            # worker generation; we only stop using them.
            self._listeners = []

    # --- accepting -------------------------------------------------------------

    async def _accept_loop(self, listener: Listener) -> None:
        sock = listener.sock
        connections = self._connections
        assert connections is not None
        start_soon = connections.start_soon
        handle = self._handle
        limit = self.config.max_connections
        backoff = 0.0
        burst = 0
        while True:
            while self._active >= limit:
                # At the limit, stop accepting: the kernel backlog and the
                # front-end's own queueing and retry then apply, rather than
                # spending work on a 503 the front-end would pass on. Every
                # listener's loop waits on the same event.
                if self._below_limit.is_set():
                    self._below_limit = trio.Event()
                    if self.metrics is not None:
                        self.metrics.refused["max_connections"] += 1
                await self._below_limit.wait()
            try:
                client, addr = sock.accept()
            except BlockingIOError:
                burst = 0
                await wait_readable(sock)
                continue
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    if backoff == 0.0:
                        # One line per episode, not per retry: under an fd
                        # exhaustion attack a line a second is a log flood.
                        log.warning(
                            "accept() on %s failed: %s; backing off until it works again",
                            listener.description,
                            exc,
                        )
                    backoff = min(max(backoff * 2, 0.05), 1.0)
                    await trio.sleep(backoff)
                    continue
                if exc.errno in _TRANSIENT_ERRNOS:
                    await checkpoint()
                    continue
                raise
            if backoff:
                backoff = 0.0
                log.info("accept() on %s works again", listener.description)
            if not listener.is_trusted(addr):
                client.close()
                self._log_refused(listener, addr)
                await checkpoint()
                continue
            client.setblocking(False)
            self._active += 1
            start_soon(handle, client)
            burst += 1
            if burst == _ACCEPT_BURST:
                # A schedule point every few connections keeps the loop fair
                # to the connection tasks and cancellable, while a backlog
                # is taken in one scheduler pass instead of one per socket.
                burst = 0
                await checkpoint()

    async def _sweep_fastcgi_connections(self) -> None:
        """Close kept-alive FastCGI connections idle for ``idle_timeout`` (``0``: never),
        and give a request busy in its connection's own task a reader beside it
        (``look_at_inline``).

        One task for the server instead of a deadline per connection: the
        per-request path then sets no timer at all. With no FastCGI connection it
        sleeps until a connection wakes it (``_handle``); it ends with the last
        connection once the server stops accepting.
        """
        idle_timeout = self.config.idle_timeout
        look = min(idle_timeout, INLINE_LOOK) if idle_timeout > 0 else INLINE_LOOK
        connections = self.fastcgi_connections
        with self._sweep:
            while True:
                if not connections:
                    self._sweep_parked = parked = trio.Event()
                    await parked.wait()
                    # A new connection needs nothing of us for a look: sleeping first
                    # makes it one wake-up per look, not per connection, when
                    # short-lived connections come one at a time.
                    await trio.sleep(look)
                    continue
                now = trio.current_time()
                wake = now + look
                # Retiring, a kept connection idle here stays until a request comes or
                # graceful_timeout (FastCGIConnection.stop_when_idle), not idle_timeout.
                closing = idle_timeout > 0 and not self.shutting_down
                for connection in list(connections):
                    connection.look_at_inline()
                    if closing:
                        idle = connection.idle_for(now)
                        if idle >= idle_timeout:
                            connection.close_idle()
                        elif idle > 0:
                            wake = min(wake, now + idle_timeout - idle)
                await trio.sleep_until(wake)

    def _log_refused(self, listener: Listener, addr: Any) -> None:
        if self.metrics is not None:
            self.metrics.refused["trusted_peers"] += 1
        self._warn_refused(
            "refused connection from %s on %s: not in trusted_peers",
            addr[0] if isinstance(addr, tuple) else addr,
            listener.description,
        )

    async def _handle(self, sock: socket.socket) -> None:
        try:
            protocol = self.config.protocol
            if protocol == "scgi":
                await SCGIConnection(sock, self).run()
            elif protocol == "fastcgi":
                await self._fastcgi(sock)
            elif protocol == "uwsgi":
                await UWSGIConnection(sock, self).run()
            else:
                await self._sniff(sock)
        except Exception:
            log.exception("unexpected error while serving a connection")
        finally:
            self._active -= 1
            self._below_limit.set()
            if self.shutting_down and not self._active:
                self._sweep.cancel()  # the last connection: the sweep's work is done

    async def _fastcgi(
        self, sock: socket.socket, initial: bytes = b"", deadline: float | None = None
    ) -> None:
        parked = self._sweep_parked
        if parked is not None:
            self._sweep_parked = None
            parked.set()  # the sweep sleeps: it has a connection to look at now
        await FastCGIConnection(sock, self).run(initial, deadline)

    async def _sniff(self, sock: socket.socket) -> None:
        """``protocol = "auto"``: the first byte tells FastCGI (version 1) and uwsgi
        (modifier1 0, or 30) from SCGI (a digit)."""
        # One header_timeout for the whole head, this first byte included.
        deadline = trio.current_time() + self.config.header_timeout
        try:
            data = await SocketIO(sock, 0.0).recv(0.0, deadline)
        except Timeout:
            log.info(
                "request not received within %g s (header_timeout)", self.config.header_timeout
            )
            if self.metrics is not None:
                self.metrics.timeouts["header"] += 1
            sock.close()
            return
        except OSError:
            data = b""
        except BaseException:
            sock.close()  # cancelled (a forced shutdown) before a wire layer owned it
            raise
        first = data[:1]
        if first == b"\x01":
            await self._fastcgi(sock, data, deadline)
        elif first in _UWSGI_FIRST:
            await UWSGIConnection(sock, self).run(data, deadline)
        elif data:
            # A digit, or garbage: the SCGI parser answers garbage with a 400
            # and a log line saying what it found.
            await SCGIConnection(sock, self).run(data, deadline)
        else:
            sock.close()  # connected and closed without a byte

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Start a task for a connection in the connection nursery (FastCGI's multiplexed
        requests and readers: the connection waits for them before it ends)."""
        assert self._connections is not None
        self._connections.start_soon(fn, *args)

    def request_served(self) -> None:
        """Count one request against ``max_requests``."""
        if self._max_requests:
            self._served += 1
            if self._served == self._max_requests:
                log.info(
                    "served %d requests (max_requests): stopping this process"
                    " so the supervisor can start a fresh one",
                    self._served,
                )
                retire = not self._owns_listeners
                self.shutdown(retire=retire)
                if retire and self.on_retiring is not None:
                    # The supervisor starts our replacement now, not at our exit:
                    # held FastCGI connections may keep this process for a while.
                    self.on_retiring()


class CallOnStarted:
    """A ``task_status`` for :meth:`Server.run` that calls a function.

    For running the server in the caller's own task, where ``nursery.start``
    would turn "stopped before it started" into an error.
    """

    def __init__(self, callback: Callable[[list[str]], None]) -> None:
        self._callback = callback

    def started(self, value: list[str] | None = None) -> None:
        self._callback(value or [])


async def serve(
    app: ASGIApp,
    config: Config,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    listeners: Sequence[Listener] | None = None,
) -> None:
    """Serve an ASGI application over SCGI or FastCGI (per ``protocol``) until cancelled.

    Use it inside any trio program::

        config = trioscgi.Config(bind=["unix:/run/app.sock"])
        bound = await nursery.start(trioscgi.serve, app, config)

    ``task_status.started()`` is called with the bound addresses once the
    lifespan startup is complete and every listener is listening.
    Cancelling ``serve()`` shuts down gracefully: it stops accepting, gives
    requests in flight ``config.graceful_timeout`` seconds, then runs the
    lifespan shutdown (bounded by ``config.shutdown_timeout``) before
    returning.

    Args:
        app: the ASGI 3 application.
        config: the settings; see :class:`trioscgi.Config`.
        task_status: given by ``nursery.start``.
        listeners: already-bound listeners to serve on instead of
            ``config.bind`` (the worker processes' case); they are not
            closed on return.

    Raises:
        LifespanFailure: the application's startup failed or timed out.
        BindError: an address in ``config.bind`` could not be bound.
    """
    server = Server(app, config, listeners)
    # The server runs shielded, so that cancelling serve() becomes a graceful
    # shutdown instead of cutting every request off; this task watches for
    # the cancellation and asks the server to stop.
    progress = trio.Event()
    done = trio.Event()
    bound: list[str] | None = None
    failure: BaseException | None = None

    def on_started(value: list[str]) -> None:
        nonlocal bound
        bound = value
        progress.set()

    async def run_shielded() -> None:
        nonlocal failure
        with trio.CancelScope(shield=True):
            try:
                await server.run(task_status=CallOnStarted(on_started))
            except BaseException as exc:
                # Re-raised outside the nursery: callers get LifespanFailure
                # or BindError bare, not inside an ExceptionGroup.
                failure = exc
            finally:
                progress.set()
                done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_shielded)
        try:
            await progress.wait()
            if bound is not None:
                task_status.started(bound)
                await done.wait()
        finally:
            if not done.is_set():
                server.shutdown()
                with trio.CancelScope(shield=True):
                    await done.wait()
    if failure is not None:
        raise failure
