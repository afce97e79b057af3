"""Prometheus metrics (``metrics_bind``): the workers' counters summed, exposed and served.

Each worker counts in plain integers (``_counters``, the leaf the hot path imports: an
increment per request, no lock, no mmap) and sends a snapshot to the supervisor once a
second as one datagram; the supervisor adds the workers up and serves ``GET /metrics``
(``metrics_http``) through prometheus_client's own registry and encoders. A single-process server
serves its own counters. prometheus_client's multiprocess mode was not used:
it writes each increment to an mmap'd file under a lock, several
microseconds per metric per request, and leaves files to clean up after
every worker that dies.

With ``metrics_bind`` unset prometheus_client is not imported and nothing is
counted: the request path only tests ``host.metrics is None``.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Container, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .._counters import (
    BUCKETS,
    CLASSES,
    CUT_WIRES,
    PROTOCOLS,
    REFUSAL_KINDS,
    TIMEOUT_KINDS,
    WorkerMetrics,
)

if TYPE_CHECKING:
    from .._config import Config

__all__ = [
    "STATUS_INTERVAL",
    "Totals",
    "check_metrics",
    "encode_snapshot",
    "exposition",
    "families",
    "report_loop",
    "status_line",
    "status_loop",
]

log = logging.getLogger("trioscgi")

# Seconds between snapshots a worker sends to the supervisor.
REPORT_INTERVAL = 1.0
# Seconds between two live STATUS= lines (metrics_bind set, under systemd):
# systemd keeps only the last, and an operator reads it now and then.
STATUS_INTERVAL = 10.0


def check_metrics(config: Config) -> None:
    """Raise ConfigError when ``metrics_bind`` is set and prometheus_client is missing."""
    if config.metrics_bind is None:
        return
    from .._config import ConfigError  # noqa: PLC0415

    try:
        import prometheus_client  # noqa: F401, PLC0415
    except ImportError:
        raise ConfigError(
            "metrics_bind needs the prometheus_client package: pip install 'trioscgi[metrics]'"
        ) from None


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

    from .notify import notify  # noqa: PLC0415

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
