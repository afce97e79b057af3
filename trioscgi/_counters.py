"""The per-process counters the request path bumps (``metrics_bind``): a leaf.

Each worker counts in plain integers (an increment per request, no lock, no mmap);
:class:`WorkerMetrics` holds them and takes their snapshot. Everything else about
metrics (adding the workers up, the Prometheus exposition, the ``/metrics`` endpoint,
the STATUS= line) is the daemon's, in ``_daemon/metrics`` and ``_daemon/metrics_http``:
the hot path imports only this module, which imports nothing of trioscgi.

With ``metrics_bind`` unset nothing is counted: the request path only tests
``host.metrics is None``.
"""

from __future__ import annotations

import bisect
import os
from typing import Any

__all__ = ["BUCKETS", "WorkerMetrics", "log_write_error", "log_write_errors"]

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


# Log writes (or reopens) that failed in this process (trioscgi_log_write_errors_total):
# counted by the log handler, read by the snapshot.
_log_write_errors = 0


def log_write_error() -> None:
    """Count one failed log write (the daemon's log handler calls it)."""
    global _log_write_errors
    _log_write_errors += 1


def log_write_errors() -> int:
    """How many log writes (or reopens) failed in this process so far."""
    return _log_write_errors


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
            "log_write_errors": _log_write_errors,
        }
