"""The events of a FastCGI connection: what the web server sent, request by request.

Events are frozen and keyword-only, and every one but
:class:`ConnectionClosed` carries the request id it belongs to. Those built
by user code are validated on construction; the parser builds its own
through ``_make`` (or, on the hot path, by setting the slots directly)
without the checks, since it has already proved what it found.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._core.errors import LocalProtocolError
from .._core.events import Event

__all__ = [
    "Abort",
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Event",
    "Rejected",
    "Request",
]


def _check_request_id(request_id: object) -> None:
    # Request ids are two bytes on the wire; 0 is the management id, never
    # a request's.
    if type(request_id) is not int or not 0 < request_id <= 0xFFFF:
        raise LocalProtocolError(f"request_id must be an int from 1 to 65535, got {request_id!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Request(Event):
    """A request's head: its BEGIN_REQUEST and its whole PARAMS stream.

    Emitted when the PARAMS stream ends (its empty record). The body, if
    any, follows as :class:`Data` events for the same id.

    Attributes:
        request_id: the id the web server gave it, 1 to 65535.
        params: the name-value pairs in wire order, duplicates kept (the
            spec sends them "in no specified order" and forbids nothing).
        keep_conn: BEGIN_REQUEST carried FCGI_KEEP_CONN: the web server
            keeps the connection open after this request. Without it, the
            application closes it after END_REQUEST.
    """

    request_id: int
    params: list[tuple[bytes, bytes]]
    keep_conn: bool

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        for pair in self.params:
            if (
                not isinstance(pair, tuple)
                or len(pair) != 2
                or not isinstance(pair[0], bytes)
                or not isinstance(pair[1], bytes)
            ):
                raise LocalProtocolError(f"params entries must be (bytes, bytes), got {pair!r}")
        if type(self.keep_conn) is not bool:
            raise LocalProtocolError(f"keep_conn must be a bool, got {self.keep_conn!r}")

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        """The value of the first ``name`` in the params, or ``default``."""
        for key, value in self.params:
            if key == name:
                return value
        return default


@dataclass(frozen=True, slots=True, kw_only=True)
class Data(Event):
    """Part of a request body: the content of one non-empty STDIN record."""

    request_id: int
    data: bytes

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        if not isinstance(self.data, bytes):
            raise LocalProtocolError(f"Data needs bytes, got {type(self.data).__name__}")


@dataclass(frozen=True, slots=True, kw_only=True)
class EndOfMessage(Event):
    """The end of a request body: the empty STDIN record."""

    request_id: int

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class Abort(Event):
    """ABORT_REQUEST for a request the server knows (its Request or Rejected was emitted).

    The web server's client went away (HAProxy sends it; nginx, Apache and
    lighttpd close the connection instead). The server should stop the
    request and call ``end_request()`` promptly: the spec asks for
    END_REQUEST "as soon as possible". The core drops the id's records
    from here on.
    """

    request_id: int

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected(Event):
    """One request broke a per-request limit; the connection goes on.

    The core drops the id's records from here on. The server answers the
    request itself, an error response with ``send_stdout()`` then
    ``end_request()``, which frees the id.

    It comes before the :class:`Request` (PARAMS over the limit, or a
    CONTENT_LENGTH over it) or after it, while the request runs: STDIN over
    ``max_body_size`` when no CONTENT_LENGTH announced as much (a chunked
    upload through nginx ``fastcgi_request_buffering off``). Then the
    request's handler has to be stopped, and answered only if its response
    has not started.

    Attributes:
        request_id: the request's id.
        status_hint: the HTTP status to answer with: 431 (PARAMS over
            ``max_params_size``) or 413 (body, or its CONTENT_LENGTH, over
            ``max_body_size``).
        reason: what broke, for the log.
        keep_conn: as :attr:`Request.keep_conn`. A request rejected in its
            PARAMS stream has no Request event, so the flag comes here.
    """

    request_id: int
    status_hint: int
    reason: str
    keep_conn: bool = False

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        if type(self.status_hint) is not int or not 400 <= self.status_hint <= 599:
            raise LocalProtocolError(f"status_hint must be 400 to 599, got {self.status_hint!r}")
        if not isinstance(self.reason, str):
            raise LocalProtocolError(f"reason must be a str, got {self.reason!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed(Event):
    """The web server closed the connection at a record boundary, with nothing half-received.

    Requests still being answered (``active_requests``) have lost their
    client: nginx closes the connection when its client aborts.
    """
