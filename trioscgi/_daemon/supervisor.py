"""Run ``workers`` server processes on sockets bound once; restart, reload and stop them.

The supervisor itself runs no trio: a blocking ``select()`` loop over a
signal wake-up pipe and a readiness pipe the workers write to.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .._config import Config, parse_cpu_list
from .._counters import log_write_errors
from .._listeners import (
    PATH_CHECK_INTERVAL,
    BindError,
    Listener,
    bind_all,
    path_problem_message,
    rebind,
)
from .._types import EXIT_LIFESPAN, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, counted
from .logging import reopen_logs, reopen_now, reopen_on_sigusr1
from .metrics import STATUS_INTERVAL
from .notify import notify, watchdog_interval
from .run import HEARTBEATS_MISSED, heartbeat_interval, pin_to_cpu, run

__all__ = ["run_supervisor"]

log = logging.getLogger("trioscgi")


# Crash handling: a worker that dies unexpectedly is replaced after
# 0.1 s, 0.2 s, 0.4 s ... (capped at BACKOFF_MAX) depending on how many
# crashes happened within CRASH_WINDOW; CRASH_LIMIT crashes within that window
# is a crash loop, which ends the daemon: restarting forever would hide a
# broken deployment behind a service that looks "active".
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
CRASH_WINDOW = 10.0
CRASH_LIMIT = 5

# After the graceful and shutdown timeouts, a little slack for the worker's
# own exit before SIGKILL.
KILL_SLACK = 2.0
# A second SIGTERM/SIGINT: workers are told to stop at once; those that still
# run after this long are killed.
IMMEDIATE_GRACE = 2.0

# GET /metrics clients served at once by the supervisor, and how long each gets.
_MAX_METRICS_CLIENTS = 16
_METRICS_CLIENT_TIMEOUT = 10.0

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1)


@dataclasses.dataclass
class _MetricsClient:
    sock: socket.socket
    deadline: float
    head: bytes = b""
    done: bool = False


@dataclasses.dataclass
class _Worker:
    pid: int
    generation: int
    started: float
    ready: bool = False
    stopping: bool = False
    kill_at: float | None = None  # SIGKILL if still running then
    cpu: int | None = None  # the CPU it is pinned to (cpu_affinity)
    last_beat: float | None = None  # its last heartbeat (or when it became ready)


class _Supervisor:
    def __init__(
        self,
        config: Config,
        listeners: list[Listener],
        load_app: Callable[[Config], Any],
        reload_config: Callable[[], Config] | None,
        metrics_listener: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.listeners = listeners
        self.load_app = load_app
        self.reload_config = reload_config
        self.workers: dict[int, _Worker] = {}
        self.generation = 0
        self.ready_once = False  # the first generation has been ready
        self.reloading: int | None = None  # generation being started by SIGHUP
        self.stopping = False
        self.previous: Config | None = None  # the config before a reload in progress
        self.crashes: list[float] = []
        self.pending_spawns: list[float] = []  # times at which to start a replacement
        self.exit_code = EXIT_OK
        # Socket files found gone or replaced (description -> "gone"/"replaced"),
        # each reported once; SIGHUP binds them again.
        self.path_problems: dict[str, str] = {}
        self.rebound = False  # the reload in progress bound a socket file again
        self.watch_paths = any(lst.unix_path is not None for lst in listeners)
        self.next_path_check = 0.0
        self.watchdog = watchdog_interval()
        self.next_ping = 0.0
        self.withholding = False  # WATCHDOG=1 withheld: every worker is silent
        # Signals arrive as bytes on this pipe (signal.set_wakeup_fd).
        self.wake_r, self.wake_w = os.pipe()
        # Workers write "<pid>\n" here once listening (lines < PIPE_BUF: atomic).
        self.ready_r, self.ready_w = os.pipe()
        # Workers watch the read end: EOF means the supervisor is gone.
        self.alive_r, self.alive_w = os.pipe()
        # Each worker's event loop writes "<pid>\n" here every heartbeat
        # interval (worker_timeout); non-blocking at both ends: a worker
        # never waits for us.
        self.beat_r, self.beat_w = os.pipe()
        for fd in (self.wake_r, self.wake_w, self.ready_r, self.beat_r, self.beat_w):
            os.set_blocking(fd, False)
        self.ready_buf = b""
        self.beat_buf = b""
        # --reload: the watcher process and the pipe it writes changed paths to.
        self.watcher: int | None = None
        self.changes_r: int | None = None
        self.changes_buf = b""
        self.reload_again = False  # a change came during a reload in progress
        # metrics_bind: workers send snapshots as datagrams on report_w; we
        # add them up (Totals) and serve GET /metrics on metrics_listener.
        self.metrics_listener = metrics_listener
        self.totals: Any = None
        self.report_r: socket.socket | None = None
        self.report_w: socket.socket | None = None
        self.metric_clients: dict[int, _MetricsClient] = {}
        self.next_status = 0.0
        self.last_requests: tuple[float, int] | None = None
        if metrics_listener is not None:
            from .metrics import Totals  # noqa: PLC0415
            from .metrics_http import MetricsHTTP  # noqa: PLC0415

            self.totals = Totals()
            self.metrics_http = MetricsHTTP(self._metric_families)
            metrics_listener.setblocking(False)
            self.report_r, self.report_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.report_r.setblocking(False)
            # Room for a few snapshots per worker between two of our reads.
            self.report_r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        old_handlers = {s: signal.signal(s, _no_op) for s in _SIGNALS}
        old_wakeup = signal.set_wakeup_fd(self.wake_w)
        try:
            if self.config.reload:
                # A .pyc records its source's mtime in whole seconds: an edit
                # within the second of the last import could load stale code.
                sys.dont_write_bytecode = True
                self._start_watcher()
            self._spawn_generation(self.config)
            notify(f"STATUS=starting {counted(self.config.workers, 'worker')}")
            while (
                self.workers
                or (self.pending_spawns and not self.stopping)
                or (self.watcher is not None and not self.stopping)
            ):
                self._step()
            return self.exit_code
        finally:
            self._stop_watcher()
            for client in self.metric_clients.values():
                client.sock.close()
            for end in (self.report_r, self.report_w):
                if end is not None:
                    end.close()
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            for fd in (self.wake_r, self.wake_w, self.ready_r, self.ready_w):
                os.close(fd)
            os.close(self.beat_r)
            os.close(self.beat_w)
            os.close(self.alive_r)
            os.close(self.alive_w)

    def _step(self) -> None:
        now = time.monotonic()
        deadlines = [*self.pending_spawns] if not self.stopping else []
        deadlines += [w.kill_at for w in self.workers.values() if w.kill_at is not None]
        if self.watchdog is not None:
            deadlines.append(self.next_ping)
        if self.watch_paths and not self.stopping:
            deadlines.append(self.next_path_check)
        timeout_s = self.config.worker_timeout
        if timeout_s > 0:
            deadlines += [w.last_beat + timeout_s for w in self._watched() if w.last_beat]
        fds: list[Any] = [self.wake_r, self.ready_r, self.beat_r]
        if self.changes_r is not None:
            fds.append(self.changes_r)
        if self.metrics_listener is not None:
            fds += [self.metrics_listener, self.report_r, *self.metric_clients]
            deadlines += [c.deadline for c in self.metric_clients.values()]
            if self.ready_once and not self.stopping:
                deadlines.append(self.next_status)
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        readable, _, _ = select.select(fds, [], [], timeout)
        if self.metrics_listener is not None:
            self._on_metrics(readable)
        if self.wake_r in readable:
            self._on_signals()
        if self.ready_r in readable:
            self._on_ready_lines()
        if self.beat_r in readable:
            self._on_beats()
        if self.changes_r is not None and self.changes_r in readable:
            self._on_changes()
        self._reap()
        now = time.monotonic()
        if self.watch_paths and not self.stopping and now >= self.next_path_check:
            self.next_path_check = now + PATH_CHECK_INTERVAL
            self._check_paths()
        if self.watchdog is not None and now >= self.next_ping:
            self.next_ping = now + self.watchdog
            self._ping_watchdog(now)
        if timeout_s > 0:
            self._kill_silent(now, timeout_s)
        for w in self.workers.values():
            if w.kill_at is not None and now >= w.kill_at:
                log.warning("worker %d did not stop in time: killing it", w.pid)
                w.kill_at = None
                _kill(w.pid, signal.SIGKILL)
        due = [t for t in self.pending_spawns if t <= now]
        if due and not self.stopping:
            self.pending_spawns = [t for t in self.pending_spawns if t > now]
            for _ in due:
                self._spawn(self.config, self.generation)

    # ------------------------------------------------------------------ signals

    def _on_signals(self) -> None:
        try:
            data = os.read(self.wake_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._stop(f"{signal.Signals(signum).name} received")
            elif signum == signal.SIGHUP:
                self._reload()
            elif signum == signal.SIGUSR1:
                # At once, not at our next line: a log deleted to free its
                # space is freed only when we close it too.
                reopen_now()
                self._signal_all(signal.SIGUSR1)
            # SIGCHLD: _reap() runs after every wake-up anyway.

    def _stop(self, why: str) -> None:
        if not self.stopping:
            self.stopping = True
            self.pending_spawns.clear()
            log.info("%s: stopping %s gracefully", why, counted(len(self.workers), "worker"))
            notify("STOPPING=1", "STATUS=stopping: workers finish requests in flight")
            for w in self.workers.values():
                self._stop_worker(w)
        else:
            log.warning("%s again: stopping workers now", why)
            # Each worker's run() treats a second SIGTERM as "stop now".
            now = time.monotonic()
            for w in self.workers.values():
                _kill(w.pid, signal.SIGTERM)
                soon = now + IMMEDIATE_GRACE
                w.kill_at = soon if w.kill_at is None else min(w.kill_at, soon)

    def _stop_worker(self, w: _Worker, signum: int = signal.SIGTERM) -> None:
        """SIGTERM (graceful; SIGUSR2: retired by a reload), and SIGKILL once its
        timeouts have certainly passed."""
        if w.stopping:
            return
        w.stopping = True
        c = self.config
        w.kill_at = time.monotonic() + c.graceful_timeout + c.shutdown_timeout + KILL_SLACK
        _kill(w.pid, signum)

    def _reload(self, why: str = "SIGHUP") -> None:
        if self.stopping:
            return
        if self.reloading is not None:
            log.warning("SIGHUP received while a reload is in progress: ignored")
            return
        new = self.config
        if self.reload_config is not None:
            try:
                new = self.reload_config()
            except Exception as exc:
                log.error("%s: can't reload the configuration, keeping the old one: %s", why, exc)
                if not any(lst.path_problem() for lst in self.listeners):
                    return
                new = self.config  # still bind the lost socket files again
            if list(new.bind) != list(self.config.bind):
                log.warning(
                    "%s: 'bind' changed; listening sockets are kept as they are "
                    "(restart the service to change them)",
                    why,
                )
                new = new.replace(bind=self.config.bind)
        log.info(
            "%s: starting %s",
            why if why != "SIGHUP" else "SIGHUP received",
            counted(new.workers, "new worker"),
        )
        notify(
            "RELOADING=1",
            f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
            "STATUS=reloading: starting new workers",
        )
        self.pending_spawns.clear()
        self.rebound = self._rebind_lost_paths(new)
        self.previous, self.config = self.config, new
        self.generation += 1
        self.reloading = self.generation
        if self.totals is not None:
            self.totals.reloads += 1
        self._spawn_generation(new)

    def _check_paths(self) -> None:
        """Say once, loudly, when a socket file of ours is deleted or replaced."""
        for lst in self.listeners:
            problem = lst.path_problem()
            if problem is None or self.path_problems.get(lst.description) == problem:
                continue
            self.path_problems[lst.description] = problem
            remedy = (
                "send SIGHUP (systemctl reload) to create it again; the new workers serve on it"
            )
            log.error("%s", path_problem_message(lst, problem, remedy))
            notify(f"STATUS={lst.description}: socket file {problem}; SIGHUP creates it again")

    def _rebind_lost_paths(self, config: Config) -> bool:
        """Before a new generation starts: a new socket for each file gone or replaced.

        The old workers keep the old socket until they stop (nothing new can
        reach it); the new ones get only the new one. Returns whether any was bound.
        """
        rebound = False
        for i, lst in enumerate(self.listeners):
            if lst.path_problem() is None:
                continue
            try:
                new = rebind(lst, config)
            except BindError as exc:
                log.error("%s; the workers keep serving the old socket", exc)
                continue
            lst.unix_path = None  # the file at the path is the new socket's now
            lst.close()
            # In place: run_supervisor() closes this same list at exit.
            self.listeners[i] = new
            self.path_problems.pop(lst.description, None)
            log.info("%s: socket file created again", new.description)
            rebound = True
        return rebound

    def _lost_paths(self) -> int:
        """Listeners whose socket file is gone or replaced (the metric)."""
        return sum(1 for lst in self.listeners if lst.path_problem() is not None)

    # ------------------------------------------------------------------ heartbeats

    def _watched(self) -> list[_Worker]:
        """Workers whose silence counts: ready and serving (not yet stopping).

        Importing the app and the lifespan startup come before ready; a
        stopping worker has its own deadline (kill_at).
        """
        return [
            w
            for w in self.workers.values()
            if w.last_beat is not None and w.ready and not w.stopping
        ]

    def _on_beats(self) -> None:
        try:
            self.beat_buf += os.read(self.beat_r, 65536)
        except BlockingIOError:
            return
        *lines, self.beat_buf = self.beat_buf.split(b"\n")
        now = time.monotonic()
        for line in set(lines):
            w = self.workers.get(int(line)) if line.isdigit() else None
            if w is not None and w.last_beat is not None:
                w.last_beat = now

    def _kill_silent(self, now: float, timeout: float) -> None:
        for w in self._watched():
            assert w.last_beat is not None
            silent = now - w.last_beat
            if silent < timeout:
                continue
            log.error(
                "worker %d sent no heartbeat for %.1f s (worker_timeout %g s): its event"
                " loop is blocked or the process is stopped; killing it (SIGKILL) and"
                " starting a replacement",
                w.pid,
                silent,
                timeout,
            )
            w.last_beat = None  # once
            _kill(w.pid, signal.SIGKILL)

    def _ping_watchdog(self, now: float) -> None:
        """WATCHDOG=1, unless every ready worker is silent: then nothing serves,
        and systemd's WatchdogSec is the last resort (worker_timeout = 0, or
        longer than WatchdogSec). Not while workers start or are replaced:
        only workers that were ready and fell silent count."""
        watched = self._watched()
        hung = bool(watched) and not any(self._serving(w, now) for w in watched)
        if hung and not self.withholding:
            log.error(
                "every worker is silent (%s): not pinging the systemd watchdog until one recovers",
                ", ".join(str(w.pid) for w in watched),
            )
        elif self.withholding and not hung:
            log.info("a worker is heard from again: pinging the systemd watchdog")
        self.withholding = hung
        if not hung:
            notify("WATCHDOG=1")

    def _serving(self, w: _Worker, now: float) -> bool:
        """Ready, not stopping, and its event loop heard from lately."""
        if not w.ready or w.stopping or w.last_beat is None:
            return False
        stale = HEARTBEATS_MISSED * heartbeat_interval(self.config.worker_timeout)
        return now - w.last_beat <= stale

    # ------------------------------------------------------------------ --reload

    def _start_watcher(self) -> None:
        from .reload import watch_forever  # noqa: PLC0415

        changes_r, changes_w = os.pipe()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(changes_r)
            os.close(changes_w)
            raise
        if pid == 0:  # pragma: no cover - runs in the child
            code = EXIT_RUNTIME
            try:
                os.setpgid(0, 0)
                signal.set_wakeup_fd(-1)
                for s in _SIGNALS:
                    signal.signal(s, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                for fd in (self.wake_r, self.wake_w, self.ready_r, self.ready_w, changes_r):
                    os.close(fd)
                os.close(self.beat_r)
                os.close(self.beat_w)
                watch_forever(self.config, changes_w)
                code = EXIT_OK
            except BaseException:
                log.exception("the --reload watcher failed")
            finally:
                logging.shutdown()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(changes_w)
        os.set_blocking(changes_r, False)
        self.watcher, self.changes_r = pid, changes_r

    def _stop_watcher(self) -> None:
        if self.changes_r is not None:
            os.close(self.changes_r)
            self.changes_r = None
        if self.watcher is not None:
            _kill(self.watcher, signal.SIGTERM)
            try:
                os.waitpid(self.watcher, 0)
            except ChildProcessError:
                pass
            self.watcher = None

    def _on_changes(self) -> None:
        assert self.changes_r is not None
        try:
            data = os.read(self.changes_r, 4096)
        except BlockingIOError:
            return
        if not data:  # the watcher died: no more reloads, keep serving
            log.error("--reload: the file watcher stopped; restart trioscgi to reload again")
            os.close(self.changes_r)
            self.changes_r = None
            return
        *lines, self.changes_buf = (self.changes_buf + data).split(b"\n")
        if b"" in lines:  # the watcher's first line: it is watching now
            from .reload import reload_dirs  # noqa: PLC0415

            log.info("--reload: watching %s", ", ".join(reload_dirs(self.config)))
            lines = [line for line in lines if line]
        if not lines or self.stopping:
            return
        log.info("--reload: %s changed", lines[-1].decode("utf-8", "replace"))
        # One generation starting at a time: a change meanwhile is picked up
        # once it is ready or has failed.
        if self.reloading is not None or (not self.ready_once and self.workers):
            self.reload_again = True
            return
        self._reload("--reload")

    def _reload_if_changed_meanwhile(self) -> None:
        if self.reload_again:
            self.reload_again = False
            self._reload("--reload")

    # ------------------------------------------------------------------ metrics

    def _on_metrics(self, readable: list[Any]) -> None:
        assert self.metrics_listener is not None and self.report_r is not None
        if self.report_r in readable:
            self._read_reports()
        if self.metrics_listener in readable:
            try:
                sock, _ = self.metrics_listener.accept()
            except OSError:
                pass
            else:
                if len(self.metric_clients) >= _MAX_METRICS_CLIENTS:
                    sock.close()
                else:
                    sock.setblocking(False)
                    client = _MetricsClient(sock, time.monotonic() + _METRICS_CLIENT_TIMEOUT)
                    self.metric_clients[sock.fileno()] = client
        now = time.monotonic()
        for fd, client in list(self.metric_clients.items()):
            if fd in readable:
                self._metrics_client_readable(client)
            if client.done or now >= client.deadline:
                del self.metric_clients[fd]
                client.sock.close()
        if self.ready_once and not self.stopping and now >= self.next_status:
            self.next_status = now + STATUS_INTERVAL
            self._live_status(now)

    def _read_reports(self) -> None:
        assert self.report_r is not None
        for _ in range(1000):  # bounded: the loop has other work
            try:
                self.totals.update(self.report_r.recv(65536), self.workers)
            except BlockingIOError:
                break

    def _metrics_client_readable(self, client: _MetricsClient) -> None:
        try:
            data = client.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            client.done = True
            return
        client.head += data
        if not data or len(client.head) > 8192:
            client.done = True
            return
        if b"\r\n\r\n" not in client.head:
            return
        response = self.metrics_http.respond(client.head.partition(b"\r\n\r\n")[0])
        client.done = True
        # A few kilobytes to a fresh socket: they fit its send buffer, and a
        # scraper that reads nothing can't stall the supervisor.
        try:
            client.sock.send(response)
        except OSError:
            pass

    def _metric_families(self) -> Any:
        from .metrics import families  # noqa: PLC0415

        totals = self.totals
        now = time.monotonic()
        totals.workers_ready = sum(1 for w in self.workers.values() if self._serving(w, now))
        total = totals.total()
        total["log_write_errors"] += log_write_errors()  # the supervisor's own
        total["listener_path_missing"] = self._lost_paths()
        return families(total, totals)

    def _live_status(self, now: float) -> None:
        from .metrics import status_line  # noqa: PLC0415

        total = self.totals.total()
        ready = sum(1 for w in self.workers.values() if self._serving(w, now))
        status = status_line(total, self.last_requests, now)
        notify(f"STATUS={counted(ready, 'worker')} ready, {status}")
        self.last_requests = (now, sum(total["requests"]))

    def _signal_all(self, signum: int) -> None:
        for w in self.workers.values():
            _kill(w.pid, signum)

    # ------------------------------------------------------------------ workers

    def _spawn_generation(self, config: Config) -> None:
        for _ in range(config.workers):
            self._spawn(config, self.generation)

    def _spawn(self, config: Config, generation: int) -> None:
        # Until the child has reset them, it shares our handlers and our
        # wake-up pipe: a SIGTERM sent to a just-forked worker would be
        # written to that pipe and read by us as our own SIGTERM. So the
        # signals stay blocked across fork() until the child is clean.
        cpu = self._next_cpu(config)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            # EAGAIN/ENOMEM: out of processes or memory. Try again later
            # rather than take the running workers down with us.
            log.error("can't start a worker: %s; retrying in %g s", exc, BACKOFF_MAX)
            self.pending_spawns.append(time.monotonic() + BACKOFF_MAX)
            return
        if pid == 0:  # pragma: no cover - runs in the child, reported by exit code
            self._child(config, mask, cpu)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.workers[pid] = _Worker(pid, generation, time.monotonic(), cpu=cpu)
        if self.totals is not None:
            self.totals.worker_starts += 1
        log.debug("started worker %d (generation %d)", pid, generation)

    def _next_cpu(self, config: Config) -> int | None:
        # cpu_affinity: the listed CPU with the fewest live workers, so that
        # replacements and reloads keep the workers spread.
        cpus = parse_cpu_list(config.cpu_affinity)
        if not cpus:
            return None
        load = {cpu: 0 for cpu in cpus}
        for worker in self.workers.values():
            if worker.cpu in load and not worker.stopping:
                load[worker.cpu] += 1
        return min(cpus, key=lambda cpu: load[cpu])

    def _child(self, config: Config, mask: set[int | signal.Signals], cpu: int | None) -> None:
        code = EXIT_RUNTIME
        try:
            pin_to_cpu(cpu)
            # Ctrl-C in a terminal signals the whole process group; the
            # supervisor forwards it, so workers would see it twice (= stop
            # now). Their own group lets the supervisor alone decide.
            os.setpgid(0, 0)
            signal.set_wakeup_fd(-1)
            for s in _SIGNALS:
                signal.signal(s, signal.SIG_DFL)
            # Not SIG_DFL for SIGUSR1: it would kill a worker still loading
            # the app when logrotate signals (the supervisor forwards it).
            reopen_on_sigusr1()
            # A SIGTERM that came meanwhile now ends this not-yet-serving worker.
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            for fd in (self.wake_r, self.wake_w, self.ready_r, self.alive_w, self.beat_r):
                os.close(fd)
            for sock in (self.metrics_listener, self.report_r):
                if sock is not None:
                    sock.close()
            for client in self.metric_clients.values():
                client.sock.close()
            # Only the supervisor talks to systemd (NotifyAccess=main works).
            for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(k, None)
            threading.Thread(target=_exit_with_parent, args=(self.alive_r,), daemon=True).start()
            try:
                app = self.load_app(config)
            except Exception as exc:
                details = getattr(exc, "details", None)
                log.critical(
                    "worker %d: can't load the application: %s%s",
                    os.getpid(),
                    exc,
                    f"\n{details}" if details else "",
                    exc_info=details is None,
                )
                code = EXIT_USAGE
                return
            ready_w = self.ready_w

            def on_ready(bound: list[str]) -> None:
                os.write(ready_w, b"%d\n" % os.getpid())

            def on_retiring() -> None:
                os.write(ready_w, b"retiring %d\n" % os.getpid())

            # The supervisor owns the socket files: a worker must never unlink them.
            mine = [dataclasses.replace(lst, unix_path=None) for lst in self.listeners]
            code = run(
                app,
                config,
                listeners=mine,
                on_ready=on_ready,
                on_retiring=on_retiring,
                on_reopen_logs=reopen_logs,
                metrics_report=self.report_w,
                heartbeat=self.beat_w,
            )
        except BaseException:
            # run() itself returns 3 for a lifespan failure; anything else
            # that escapes is a crash of this worker.
            log.exception("worker %d failed", os.getpid())
            code = EXIT_RUNTIME
        finally:
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            os._exit(code)

    def _on_ready_lines(self) -> None:
        try:
            self.ready_buf += os.read(self.ready_r, 4096)
        except BlockingIOError:
            return
        *lines, self.ready_buf = self.ready_buf.split(b"\n")
        for line in lines:
            retiring = line.startswith(b"retiring ")
            pid = line[len(b"retiring ") :] if retiring else line
            w = self.workers.get(int(pid)) if pid.isdigit() else None
            if w is None:
                continue
            if retiring:
                self._on_retiring(w)
            else:
                w.ready = True
                w.last_beat = time.monotonic()
        self._check_generation_ready()

    def _on_retiring(self, w: _Worker) -> None:
        """max_requests: the worker stopped accepting; replace it now, not at its exit.

        It may hold kept FastCGI connections until the front-end is done with
        them (up to graceful_timeout), and nothing else may accept meanwhile.
        """
        if w.stopping or self.stopping or w.generation != self.generation:
            return
        w.stopping = True
        c = self.config
        w.kill_at = time.monotonic() + c.graceful_timeout + c.shutdown_timeout + KILL_SLACK
        log.info("worker %d retiring (max_requests); starting a replacement", w.pid)
        self._spawn(self.config, self.generation)

    def _check_generation_ready(self) -> None:
        gen = self.generation
        current = [w for w in self.workers.values() if w.generation == gen and not w.stopping]
        if not current or not all(w.ready for w in current):
            return
        if len(current) < self.config.workers and not self.ready_once:
            return
        status = (
            f"STATUS={counted(len(current), 'worker')} serving on "
            f"{', '.join(lst.description for lst in self.listeners)}"
        )
        if not self.ready_once:
            self.ready_once = True
            # --reload: a first start that failed, fixed by a change.
            self.reloading = self.previous = None
            log.info("%s ready", counted(len(current), "worker"))
            notify("READY=1", status)
            self._reload_if_changed_meanwhile()
        elif self.reloading == gen:
            self.reloading = None
            old = [w for w in self.workers.values() if w.generation != gen and not w.stopping]
            log.info("reload: new workers ready; stopping %s", counted(len(old), "old worker"))
            for w in old:
                # SIGUSR2, not SIGTERM: the new workers serve the sockets, so the old
                # ones keep their FastCGI kept connections until nginx is done with them.
                self._stop_worker(w, signal.SIGUSR2)
            self.previous = None
            notify("READY=1", status)
            self._reload_if_changed_meanwhile()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.totals is not None:
                # Its last snapshot went out before it exited: read it while
                # it still counts as a worker, then keep its counters.
                self._read_reports()
                self.totals.worker_gone(pid)
            w = self.workers.pop(pid, None)
            if w is None:
                if pid == self.watcher:
                    log.error("--reload: the file watcher exited (status %d)", status)
                    self.watcher = None
                    if not self.workers and not self.stopping:
                        # Nothing serves and nothing will restart it.
                        self.exit_code = EXIT_RUNTIME
                continue
            self._on_exit(w, os.waitstatus_to_exitcode(status))
        # (the loop only ends through its returns)

    def _on_exit(self, w: _Worker, code: int) -> None:
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        if self.totals is not None:
            if code == EXIT_LIFESPAN:
                self.totals.lifespan_failures += 1
            elif not (w.stopping or self.stopping or code == 0):
                self.totals.worker_deaths += 1
        if w.stopping or self.stopping:
            log.debug("worker %d stopped (%s)", w.pid, how)
            return
        if not w.ready and not self.ready_once and self.config.reload:
            # --reload: the app doesn't import or start; wait for the next
            # change (the sockets stay bound meanwhile).
            log.error("worker %d failed to start (%s): waiting for a change", w.pid, how)
            notify("STATUS=the app failed to start: waiting for a change")
            self.reloading = self.previous = None
            self._reload_if_changed_meanwhile()
            return
        if not w.ready and not self.ready_once:
            # The first start failed: no use retrying a broken app or a failing
            # lifespan startup. 3 stays 3 (lifespan), 2 (app load) stays 2.
            log.critical("worker %d failed to start (%s): stopping", w.pid, how)
            self.exit_code = code if code in (EXIT_USAGE, EXIT_LIFESPAN) else EXIT_RUNTIME
            self._stop("startup failure")
            return
        if not w.ready and self.reloading == w.generation:
            log.error(
                "reload failed: new worker %d exited before it was ready (%s); "
                "the old workers keep serving",
                w.pid,
                how,
            )
            for other in self.workers.values():
                if other.generation == w.generation:
                    self._stop_worker(other)
            if self.rebound:
                log.error(
                    "the old workers still listen on the socket whose file was gone: the"
                    " front-end can't reach them until a SIGHUP whose new workers start"
                )
            self.reloading = None
            assert self.previous is not None
            self.config, self.previous = self.previous, None
            self.generation -= 1
            # Old workers that died meanwhile were not replaced: top up.
            alive = [o for o in self.workers.values() if o.generation == self.generation]
            for _ in range(self.config.workers - len(alive)):
                self._spawn(self.config, self.generation)
            notify("READY=1", "STATUS=reload failed; the old workers keep serving")
            if self.config.reload:
                log.error("--reload: the old app keeps serving until the next change")
            self._reload_if_changed_meanwhile()
            return
        if w.generation != self.generation:
            # An old worker (during a reload) that died: its replacement is
            # the new generation.
            log.warning("old worker %d exited (%s)", w.pid, how)
            return
        if code == 0:
            # max_requests recycling: a clean exit, replace at once.
            log.info("worker %d exited cleanly; starting a replacement", w.pid)
            self._spawn(self.config, self.generation)
            return
        now = time.monotonic()
        self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW] + [now]
        if len(self.crashes) >= CRASH_LIMIT:
            log.critical(
                "worker %d died (%s): %d crashes within %g s, giving up",
                w.pid,
                how,
                len(self.crashes),
                CRASH_WINDOW,
            )
            self.exit_code = EXIT_RUNTIME
            self._stop("crash loop")
            return
        delay = min(BACKOFF_FIRST * 2 ** (len(self.crashes) - 1), BACKOFF_MAX)
        log.error("worker %d died (%s); replacing it in %g s", w.pid, how, delay)
        self.pending_spawns.append(now + delay)


def _no_op(signum: int, frame: object) -> None:
    """A Python-level handler, so that set_wakeup_fd() receives the signal."""


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _exit_with_parent(fd: int) -> None:  # pragma: no cover - runs in the child
    """In a worker: when the supervisor dies (EOF on its pipe), stop gracefully."""
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        return
    os.kill(os.getpid(), signal.SIGTERM)


def run_supervisor(
    config: Config,
    *,
    load_app: Callable[[Config], Any],
    reload_config: Callable[[], Config] | None = None,
) -> int:
    """Serve with ``config.workers`` processes until SIGTERM/SIGINT; return the exit code.

    The sockets are bound here, once, and shared by every worker, so a
    restart never closes them. Each worker loads the app itself (SIGHUP then
    picks up new code) and runs ``trioscgi._daemon.run.run``.

    Signals: SIGTERM/SIGINT stop the workers gracefully (a second one: at
    once); SIGHUP reloads the config and replaces the workers, old ones
    stopping only once the new ones are ready; SIGUSR1 reopens log files.

    Returns:
        0 after a clean stop; 1 on a bind failure or a crash loop; 2 or 3 when
        the first workers could not load the app or failed lifespan startup.
    """
    try:
        listeners = bind_all(config)
    except BindError as exc:
        log.critical("cannot listen: %s", exc)
        return EXIT_RUNTIME
    metrics_listener = None
    try:
        if config.metrics_bind is not None:
            from .metrics_http import bind_metrics  # noqa: PLC0415

            try:
                metrics_listener = bind_metrics(config.metrics_bind)
            except OSError as exc:
                log.critical("cannot listen: metrics_bind %s: %s", config.metrics_bind, exc)
                return EXIT_RUNTIME
        supervisor = _Supervisor(config, listeners, load_app, reload_config, metrics_listener)
        return supervisor.run()
    finally:
        if metrics_listener is not None:
            from .metrics_http import close_metrics  # noqa: PLC0415

            close_metrics(metrics_listener)
        for listener in listeners:
            listener.close()
