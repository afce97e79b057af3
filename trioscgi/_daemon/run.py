"""Run one server process: trio, signals, exit codes."""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Any

import trio

from .._asgi.lifespan import LifespanFailure
from .._config import Config
from .._listeners import PATH_CHECK_INTERVAL, BindError, Listener, path_problem_message
from .._server import CallOnStarted, Server
from .._types import EXIT_LIFESPAN, EXIT_OK, ASGIApp

log = logging.getLogger("trioscgi")

# Seconds between two heartbeats of a worker's event loop (worker_timeout).
HEARTBEAT_INTERVAL = 1.0
# A worker silent for this many intervals no longer counts as ready.
HEARTBEATS_MISSED = 3


def heartbeat_interval(worker_timeout: float) -> float:
    """A heartbeat a second, or four per ``worker_timeout`` when that is shorter."""
    if worker_timeout > 0:
        return min(HEARTBEAT_INTERVAL, worker_timeout / 4)
    return HEARTBEAT_INTERVAL


def pin_to_cpu(cpu: int | None) -> None:
    """Pin this process's main thread, and so every thread it starts, to ``cpu``.

    Python runs one thread at a time (the GIL), and on a VM waking a thread
    on another CPU is slow, which a WSGI request pays on its hand-off to a
    worker thread and back (the WSGI table in docs/benchmarks.md: 0.17 ms of
    CPU per hello request unpinned, 0.12 ms pinned). ``None``: no change.
    """
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def run(
    app: ASGIApp,
    config: Config,
    *,
    listeners: Sequence[Listener] | None = None,
    on_ready: Callable[[list[str]], None] | None = None,
    on_stopping: Callable[[], None] | None = None,
    on_retiring: Callable[[], None] | None = None,
    on_reopen_logs: Callable[[], None] | None = None,
    metrics_listener: socket.socket | None = None,
    metrics_report: socket.socket | None = None,
    heartbeat: int | None = None,
) -> int:
    """Serve ``app`` in this process until SIGINT or SIGTERM; return the exit code.

    The first SIGINT/SIGTERM begins a graceful shutdown, a second one cuts
    it short. SIGUSR1 calls ``on_reopen_logs`` (logrotate). With
    ``metrics_bind`` set, ``metrics_listener`` (bound) serves GET /metrics,
    or ``metrics_report`` (a worker's datagram socket) gets a snapshot a second.
    ``on_retiring`` is called when ``max_requests`` retires this worker (it
    stops accepting; its replacement may start at once). ``heartbeat`` (a
    worker's end of the supervisor's pipe, non-blocking) gets this process's
    pid as a line from the event loop, every :func:`heartbeat_interval`.

    Returns:
        0 after a clean stop, 3 when the lifespan startup failed.

    Raises:
        BindError: an address could not be bound.
    """
    try:
        trio.run(
            functools.partial(
                _main,
                app,
                config,
                listeners=listeners,
                on_ready=on_ready,
                on_stopping=on_stopping,
                on_retiring=on_retiring,
                on_reopen_logs=on_reopen_logs,
                metrics_listener=metrics_listener,
                metrics_report=metrics_report,
                heartbeat=heartbeat,
            )
        )
    except LifespanFailure as exc:
        log.critical("%s", exc)
        return EXIT_LIFESPAN
    return EXIT_OK


async def _main(
    app: ASGIApp,
    config: Config,
    *,
    listeners: Sequence[Listener] | None,
    on_ready: Callable[[list[str]], None] | None,
    on_stopping: Callable[[], None] | None,
    on_reopen_logs: Callable[[], None] | None,
    on_retiring: Callable[[], None] | None = None,
    metrics_listener: socket.socket | None = None,
    metrics_report: socket.socket | None = None,
    heartbeat: int | None = None,
) -> None:
    server = Server(app, config, listeners)
    server.on_retiring = on_retiring
    failure: Exception | None = None
    # SIGHUP is caught so that it can't kill a single-process server (its
    # default action): the graceful restart it asks for needs the supervisor.
    # SIGUSR2: the supervisor retires this worker on a reload (a graceful shutdown while
    # new workers serve the same sockets: kept FastCGI connections are held, see
    # FastCGIConnection.stop_when_idle).
    signals = [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR2]
    with trio.open_signal_receiver(*signals) as received:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in received:
                    if signum == signal.SIGUSR1:
                        if on_reopen_logs is not None:
                            on_reopen_logs()
                        continue
                    if signum == signal.SIGHUP:
                        log.warning(
                            "SIGHUP ignored: a graceful restart needs workers >= 2"
                            " (the supervisor); restart the service instead"
                        )
                        continue
                    if not server.shutting_down:
                        log.info(
                            "%s received: graceful shutdown%s",
                            signal.Signals(signum).name,
                            " (retired by a reload)" if signum == signal.SIGUSR2 else "",
                        )
                        if on_stopping is not None:
                            on_stopping()
                        server.shutdown(retire=signum == signal.SIGUSR2)
                    else:
                        log.warning("%s received again: stopping now", signal.Signals(signum).name)
                        server.force_shutdown()

            nursery.start_soon(watch_signals)
            if listeners is None:  # ours to bind; a supervisor watches its own
                nursery.start_soon(_watch_paths, server)
            if heartbeat is not None:
                nursery.start_soon(_beat, heartbeat, heartbeat_interval(config.worker_timeout))
            if server.metrics is not None:
                _start_metrics(nursery, server, metrics_listener, metrics_report)
            # Run in this task, not through nursery.start: a SIGTERM during a
            # slow startup makes server.run return without started(), which
            # is a clean stop, not an error.
            try:
                await server.run(task_status=CallOnStarted(on_ready or _ignore))
            except (LifespanFailure, BindError) as exc:
                # Re-raised outside the nursery so run() sees it unwrapped.
                failure = exc
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


def _start_metrics(
    nursery: trio.Nursery,
    server: Server,
    listener: socket.socket | None,
    report: socket.socket | None,
) -> None:
    from . import metrics as _metrics  # noqa: PLC0415
    from . import metrics_http  # noqa: PLC0415

    metrics = server.metrics
    assert metrics is not None

    def gauges() -> tuple[int, int]:
        return server._active, len(server.fastcgi_connections)

    if report is not None:
        nursery.start_soon(_metrics.report_loop, metrics, gauges, report)
    elif listener is not None:

        def source() -> Any:
            total = metrics.snapshot(*gauges())
            total["listener_path_missing"] = sum(
                1 for lst in server._listeners or () if lst.path_problem() is not None
            )
            return _metrics.families(total, None)

        nursery.start_soon(metrics_http.serve_http, listener, metrics_http.MetricsHTTP(source))
        if os.environ.get("NOTIFY_SOCKET"):
            nursery.start_soon(_metrics.status_loop, metrics, _metrics.STATUS_INTERVAL)


async def _beat(fd: int, interval: float) -> None:
    """Tell the supervisor that this event loop runs (``worker_timeout``).

    A task of the loop itself, not a thread: a thread would go on beating
    while the loop is blocked.
    """
    line = b"%d\n" % os.getpid()  # < PIPE_BUF: one atomic write among the workers'
    while True:
        try:
            os.write(fd, line)
        except OSError:
            pass  # the pipe full (the supervisor is busy) or gone: the next one
        await trio.sleep(interval)


async def _watch_paths(server: Server) -> None:
    """Say once, loudly, when a socket file this process created is deleted or replaced.

    (With workers, the supervisor owns the files and watches them.)
    """
    reported: dict[str, str] = {}
    while True:
        await trio.sleep(PATH_CHECK_INTERVAL)
        for lst in server._listeners or ():
            problem = lst.path_problem()
            if problem is None or reported.get(lst.description) == problem:
                continue
            reported[lst.description] = problem
            remedy = "restart the service to create it again (with workers >= 2, SIGHUP does)"
            log.error("%s", path_problem_message(lst, problem, remedy))


def _ignore(bound: list[str]) -> None:
    pass
