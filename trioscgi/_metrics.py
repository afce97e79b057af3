"""Prometheus metrics (``metrics_bind``): cheap counters per process, summed and exposed.

Each worker counts in plain integers (an increment per request, no lock, no
mmap) and sends a snapshot to the supervisor once a second as one datagram;
the supervisor adds the workers up and serves ``GET /metrics`` through
prometheus_client's own registry and encoders. A single-process server
serves its own counters. prometheus_client's multiprocess mode was not used:
it writes each increment to an mmap'd file under a lock, several
microseconds per metric per request, and leaves files to clean up after
every worker that dies.

With ``metrics_bind`` unset prometheus_client is not imported and nothing is
counted: the request path only tests ``host.metrics is None``.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import socket
from collections.abc import Callable, Container, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._addresses import parse_bind
from ._logging import log_write_errors

if TYPE_CHECKING:
    from ._config import Config

__all__ = [
    "BUCKETS",
    "MetricsHTTP",
    "Totals",
    "WorkerMetrics",
    "bind_metrics",
    "check_metrics",
    "close_metrics",
    "exposition",
]

log = logging.getLogger("trioscgi")

# prometheus_client's default buckets (seconds): what dashboards expect.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
PROTOCOLS = ("scgi", "fastcgi", "websocket", "uwsgi")
# Status classes; "none": no response went out (the front-end went away first).
CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
# Refusals by kind: the wire layers' rejections by status, and the accept loop's.
REFUSALS = {400: "bad_request", 413: "body_too_large", 431: "header_too_large"}
# FastCGI: overloaded (OVERLOADED or CANT_MPX_CONN: more requests at once on a connection
# than fastcgi_max_requests), unknown_role (AUTHORIZER, FILTER).
REFUSAL_KINDS = (
    *REFUSALS.values(),
    "trusted_peers",
    "max_connections",
    "overloaded",
    "unknown_role",
)
# Timeouts by kind: header_timeout, read_timeout, write_timeout, drain_timeout.
TIMEOUT_KINDS = ("header", "read", "write", "drain")
# Wires whose cut responses are counted (trioscgi_responses_cut_total{wire}).
CUT_WIRES = ("scgi", "fastcgi", "uwsgi")
# Where each wire's status classes start in WorkerMetrics.requests.
_OFFSETS = {wire: PROTOCOLS.index(wire) * len(CLASSES) for wire in CUT_WIRES}
# Seconds between snapshots a worker sends to the supervisor.
REPORT_INTERVAL = 1.0
# Seconds between two live STATUS= lines (metrics_bind set, under systemd):
# systemd keeps only the last, and an operator reads it now and then.
STATUS_INTERVAL = 10.0


def check_metrics(config: Config) -> None:
    """Raise ConfigError when ``metrics_bind`` is set and prometheus_client is missing."""
    if config.metrics_bind is None:
        return
    from ._config import ConfigError  # noqa: PLC0415

    try:
        import prometheus_client  # noqa: F401, PLC0415
    except ImportError:
        raise ConfigError(
            "metrics_bind needs the prometheus_client package: pip install 'trioscgi[metrics]'"
        ) from None


class WorkerMetrics:
    """One process's counters; plain attributes, incremented on the request path."""

    __slots__ = (
        "app_exceptions",
        "bytes_in",
        "bytes_out",
        "duration_counts",
        "duration_sum",
        "in_flight",
        "refused",
        "requests",
        "responses_cut",
        "timeouts",
        "websocket_closes",
        "websocket_open",
    )

    def __init__(self) -> None:
        self.requests = [0] * (len(PROTOCOLS) * len(CLASSES))
        self.in_flight = 0
        self.duration_counts = [0] * (len(BUCKETS) + 1)  # the last: above every bucket
        self.duration_sum = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.refused = dict.fromkeys(REFUSAL_KINDS, 0)
        self.timeouts = dict.fromkeys(TIMEOUT_KINDS, 0)
        self.app_exceptions = 0
        # Responses begun and not completed (the app raised or returned early), by wire.
        self.responses_cut = dict.fromkeys(CUT_WIRES, 0)
        self.websocket_open = 0
        self.websocket_closes: dict[str, int] = {}  # close code (as text) -> sessions

    def request_done(
        self, wire: str, status: int, scope: dict[str, Any], sent: int, elapsed: float
    ) -> None:
        """Count one finished request (HTTPCycle.run calls it)."""
        self.in_flight -= 1
        cls = status // 100 if 100 <= status < 600 else 0
        self.requests[_OFFSETS[wire] + cls] += 1
        self.duration_counts[bisect.bisect_left(BUCKETS, elapsed)] += 1
        self.duration_sum += elapsed
        self.bytes_out += sent
        # The body's length as the front-end announced it: front-ends send
        # CONTENT_LENGTH, and counting here costs nothing when metrics are off.
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit():
                    self.bytes_in += int(value)
                break

    def websocket_done(self, status: int, close_code: int | None) -> None:
        """Count one WebSocket session: its handshake's status and its close code."""
        self.websocket_open -= 1
        cls = status // 100 if 100 <= status < 600 else 0
        self.requests[2 * len(CLASSES) + cls] += 1
        if close_code is not None:
            code = str(close_code)
            self.websocket_closes[code] = self.websocket_closes.get(code, 0) + 1

    def rejected(self, status: int) -> None:
        """A request the wire layer answered itself (400, 408, 413, 431)."""
        if status == 408:
            self.timeouts["header"] += 1
        else:
            self.refused[REFUSALS.get(status, "bad_request")] += 1

    def snapshot(self, connections_open: int, kept_alive: int) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "requests": self.requests,
            "in_flight": self.in_flight,
            "duration_counts": self.duration_counts,
            "duration_sum": self.duration_sum,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "refused": self.refused,
            "timeouts": self.timeouts,
            "websocket_open": self.websocket_open,
            "websocket_closes": self.websocket_closes,
            "app_exceptions": self.app_exceptions,
            "responses_cut": self.responses_cut,
            "connections_open": connections_open,
            "kept_alive": kept_alive,
            "log_write_errors": log_write_errors(),
        }


def encode_snapshot(snapshot: dict[str, Any]) -> bytes:
    return json.dumps(snapshot, separators=(",", ":")).encode()


# Snapshot keys that are gauges: a dead worker's stop counting.
_GAUGES = ("in_flight", "connections_open", "kept_alive", "websocket_open")


def _add(total: dict[str, Any], snap: dict[str, Any]) -> None:
    for key, value in snap.items():
        if key == "pid":
            continue
        if isinstance(value, list):
            old = total.setdefault(key, [0] * len(value))
            total[key] = [a + b for a, b in zip(old, value, strict=True)]
        elif isinstance(value, dict):
            old_d = total.setdefault(key, {})
            for k, v in value.items():
                old_d[k] = old_d.get(k, 0) + v
        else:
            total[key] = total.get(key, 0) + value


class Totals:
    """The supervisor's view: each live worker's last snapshot plus the dead ones' counts."""

    def __init__(self) -> None:
        self.live: dict[int, dict[str, Any]] = {}
        self.retired: dict[str, Any] = {}
        self.worker_starts = 0
        self.worker_deaths = 0
        self.reloads = 0
        self.lifespan_failures = 0
        self.workers_ready = 0

    def update(self, data: bytes, workers: Container[int]) -> None:
        """Take a worker's snapshot; one from a process not in ``workers`` is dropped.

        (A worker already reaped and retired must not count twice.)
        """
        try:
            snap = json.loads(data)
            pid = int(snap["pid"])
        except (ValueError, KeyError, TypeError):
            return
        if pid in workers:
            self.live[pid] = snap

    def worker_gone(self, pid: int) -> None:
        """A worker exited: keep its counters, drop its gauges."""
        snap = self.live.pop(pid, None)
        if snap is not None:
            _add(self.retired, {k: v for k, v in snap.items() if k not in _GAUGES})

    def total(self) -> dict[str, Any]:
        total: dict[str, Any] = {}
        _add(total, WorkerMetrics().snapshot(0, 0))  # every key, at zero
        _add(total, self.retired)
        for snap in self.live.values():
            _add(total, snap)
        return total


def families(total: dict[str, Any], totals: Totals | None) -> Iterator[Any]:
    """The metric families for one scrape, from a summed snapshot."""
    from prometheus_client.core import (  # noqa: PLC0415
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    requests = CounterMetricFamily(
        "trioscgi_requests",
        "Requests the application answered, by wire protocol and status class",
        labels=["protocol", "status_class"],
    )
    for i, protocol in enumerate(PROTOCOLS):
        for j, cls in enumerate(CLASSES):
            requests.add_metric([protocol, cls], total["requests"][i * len(CLASSES) + j])
    yield requests
    yield GaugeMetricFamily(
        "trioscgi_requests_in_flight", "Requests being served now", value=total["in_flight"]
    )
    cumulative, buckets = 0, []
    for bound, count in zip((*BUCKETS, float("inf")), total["duration_counts"], strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    yield HistogramMetricFamily(
        "trioscgi_request_duration_seconds",
        "Time from the request's head to the end of the response",
        buckets=buckets,
        sum_value=total["duration_sum"],
    )
    yield CounterMetricFamily(
        "trioscgi_request_body_bytes",
        "Request body bytes, as announced by CONTENT_LENGTH",
        value=total["bytes_in"],
    )
    yield CounterMetricFamily(
        "trioscgi_response_body_bytes", "Response body bytes sent", value=total["bytes_out"]
    )
    yield GaugeMetricFamily(
        "trioscgi_connections_open",
        "Front-end connections open now",
        value=total["connections_open"],
    )
    yield GaugeMetricFamily(
        "trioscgi_connections_kept_alive",
        "FastCGI connections kept open by FCGI_KEEP_CONN now",
        value=total["kept_alive"],
    )
    refused = CounterMetricFamily(
        "trioscgi_refused",
        "Connections or requests refused before the application, by reason",
        labels=["reason"],
    )
    for kind in REFUSAL_KINDS:
        refused.add_metric([kind], total["refused"].get(kind, 0))
    yield refused
    timeouts = CounterMetricFamily(
        "trioscgi_timeouts",
        "Connections or requests ended by a timeout, by kind",
        labels=["kind"],
    )
    for kind in TIMEOUT_KINDS:
        timeouts.add_metric([kind], total["timeouts"].get(kind, 0))
    yield timeouts
    yield GaugeMetricFamily(
        "trioscgi_websocket_sessions_open",
        "WebSocket sessions open now (handshakes included)",
        value=total["websocket_open"],
    )
    closes = CounterMetricFamily(
        "trioscgi_websocket_closes",
        "WebSocket sessions ended, by close code (1006: cut without a close frame)",
        labels=["code"],
    )
    for code, count in sorted(total["websocket_closes"].items()):
        closes.add_metric([code], count)
    yield closes
    yield CounterMetricFamily(
        "trioscgi_app_exceptions",
        "Exceptions raised by the application",
        value=total["app_exceptions"],
    )
    yield GaugeMetricFamily(
        "trioscgi_listener_path_missing",
        "Unix socket files of ours deleted or replaced (SIGHUP creates them again)",
        value=total.get("listener_path_missing", 0),
    )
    yield CounterMetricFamily(
        "trioscgi_log_write_errors",
        "Log lines (or reopens) that failed to write: a full disk, a lost mount",
        value=total["log_write_errors"],
    )
    cut = CounterMetricFamily(
        "trioscgi_responses_cut",
        "Responses begun and cut short (the application raised or returned early), by wire",
        labels=["wire"],
    )
    for wire in CUT_WIRES:
        cut.add_metric([wire], total.get("responses_cut", {}).get(wire, 0))
    yield cut
    if totals is not None:
        yield CounterMetricFamily(
            "trioscgi_worker_starts", "Worker processes started", value=totals.worker_starts
        )
        yield CounterMetricFamily(
            "trioscgi_worker_deaths",
            "Worker processes that exited unexpectedly",
            value=totals.worker_deaths,
        )
        yield CounterMetricFamily(
            "trioscgi_reloads", "Reloads begun (SIGHUP or --reload)", value=totals.reloads
        )
        yield CounterMetricFamily(
            "trioscgi_lifespan_failures",
            "Workers whose lifespan startup failed",
            value=totals.lifespan_failures,
        )
        yield GaugeMetricFamily(
            "trioscgi_workers_ready", "Worker processes serving", value=totals.workers_ready
        )


class _Collector:
    def __init__(self, source: Callable[[], Iterable[Any]]) -> None:
        self.source = source

    def collect(self) -> Iterable[Any]:
        return self.source()


def exposition(source: Callable[[], Iterable[Any]], accept: str) -> tuple[bytes, str]:
    """Encode the families ``source()`` yields as the scraper asked (``Accept``)."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415
    from prometheus_client.exposition import choose_encoder  # noqa: PLC0415

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(source))
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


# --- the HTTP side: GET /metrics, one request per connection ------------------

MAX_HEAD = 8192
CLIENT_TIMEOUT = 10.0


class MetricsHTTP:
    """Turns a request head into a response; the I/O is the caller's (trio or select)."""

    def __init__(self, source: Callable[[], Iterable[Any]]) -> None:
        self.source = source

    def respond(self, head: bytes) -> bytes:
        lines = head.split(b"\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _plain(400, b"bad request\n")
        method, target = parts[0], parts[1]
        if target.split(b"?")[0] != b"/metrics":
            return _plain(404, b"try /metrics\n")
        if method not in (b"GET", b"HEAD"):
            return _plain(405, b"GET /metrics\n", b"Allow: GET, HEAD\r\n")
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"accept":
                accept = value.strip().decode("latin-1")
        body, content_type = exposition(self.source, accept)
        extra = f"Content-Type: {content_type}\r\n".encode()
        return _plain(200, b"" if method == b"HEAD" else body, extra, length=len(body))


def _plain(status: int, body: bytes, extra: bytes = b"", length: int | None = None) -> bytes:
    from http import HTTPStatus  # noqa: PLC0415

    if not extra.startswith(b"Content-Type"):
        extra = b"Content-Type: text/plain; charset=utf-8\r\n" + extra
    n = len(body) if length is None else length
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()
        + extra
        + f"Content-Length: {n}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


def bind_metrics(address: str) -> socket.socket:
    """Bind and listen on ``metrics_bind``; a stale unix socket file is replaced.

    Raises:
        OSError: the address can't be bound.
    """
    spec = parse_bind(address)
    if spec.kind == "unix":
        assert spec.path is not None
        path = spec.path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if not path.startswith("@"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        sock.bind("\0" + path[1:] if path.startswith("@") else path)
    else:
        assert spec.host is not None and spec.port is not None
        family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((spec.host, spec.port))
    sock.listen(64)
    sock.set_inheritable(False)
    if spec.kind == "unix":
        log.info("metrics on unix:%s (GET /metrics)", spec.path)
    else:
        host, port = sock.getsockname()[:2]
        log.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, port)
    return sock


def close_metrics(sock: socket.socket) -> None:
    """Close the metrics listener and remove its unix socket file (not an abstract one)."""
    path = sock.getsockname() if sock.family == socket.AF_UNIX else None
    sock.close()
    if isinstance(path, str) and path and not path.startswith("\0"):
        try:
            os.unlink(path)
        except OSError:
            pass


# --- in a trio process ----------------------------------------------------------


async def serve_http(sock: socket.socket, http: MetricsHTTP) -> None:
    """Serve ``GET /metrics`` on ``sock`` (a single-process server), until cancelled."""
    import trio  # noqa: PLC0415

    listener = trio.socket.from_stdlib_socket(sock)
    async with trio.open_nursery() as nursery:
        while True:
            client, _ = await listener.accept()
            nursery.start_soon(_serve_one, client, http)


async def _serve_one(client: Any, http: MetricsHTTP) -> None:
    import trio  # noqa: PLC0415

    with client:
        head = b""
        with trio.move_on_after(CLIENT_TIMEOUT):
            while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
                try:
                    data = await client.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                head += data
            response = http.respond(head.partition(b"\r\n\r\n")[0])
            try:
                while response:
                    response = response[await client.send(response) :]
            except OSError:
                return


def status_line(total: dict[str, Any], before: tuple[float, int] | None, now: float) -> str:
    """The live ``STATUS=`` text: requests per second since ``before``, in flight, served."""
    served = sum(total["requests"])
    rate = ""
    if before is not None:
        then, count = before
        rate = f"{max(0, served - count) / max(now - then, 1e-9):.1f} req/s, "
    return f"{rate}{total['in_flight']} in flight, {served} requests served"


async def status_loop(metrics: WorkerMetrics, interval: float) -> None:
    """A single-process server under systemd: a live STATUS= line every ``interval``."""
    import trio  # noqa: PLC0415

    from ._notify import notify  # noqa: PLC0415

    before: tuple[float, int] | None = None
    while True:
        await trio.sleep(interval)
        now = trio.current_time()
        total = metrics.snapshot(0, 0)
        notify("STATUS=" + status_line(total, before, now))
        before = (now, sum(total["requests"]))


async def report_loop(
    metrics: WorkerMetrics, gauges: Callable[[], tuple[int, int]], sock: socket.socket
) -> None:
    """In a worker: send a snapshot to the supervisor every REPORT_INTERVAL, until cancelled.

    A last one goes out when cancelled, so a worker that stops cleanly loses no count.
    """
    import trio  # noqa: PLC0415

    def send() -> None:
        try:
            sock.send(encode_snapshot(metrics.snapshot(*gauges())), socket.MSG_DONTWAIT)
        except OSError as exc:  # the supervisor busy (EAGAIN) or gone: the next one
            log.debug("metrics snapshot not sent: %s", exc)

    try:
        while True:
            send()
            await trio.sleep(REPORT_INTERVAL)
    finally:
        send()
