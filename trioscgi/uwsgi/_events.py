"""The events of a uwsgi connection: what the peer sent, and what we send.

Events are frozen and keyword-only. Those built by user code are validated
on construction; the parser builds its own through ``_make`` (or, on the hot
path, by setting the slots directly) without the checks, since it has
already proved what it found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from ..scgi import LocalProtocolError as _ScgiLocalProtocolError
from ..scgi._events import normalize_headers
from ._errors import LocalProtocolError

__all__ = [
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Event",
    "Request",
    "Response",
]

_E = TypeVar("_E", bound="Event")


class Event:
    """Base class of every event."""

    __slots__ = ()

    @classmethod
    def _make(cls: type[_E], **fields: Any) -> _E:
        # The parser's fast path: no validation, no keyword checks.
        self = object.__new__(cls)
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        return self


def _check_u16(value: object, what: str) -> None:
    if type(value) is not bytes or len(value) > 0xFFFF:
        raise LocalProtocolError(f"{what} must be bytes of at most 65535, got {value!r:.60}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Request(Event):
    """The request head: the packet header and its vars.

    Attributes:
        environ: ``(name, value)`` pairs in wire order. Duplicate names are
            kept (nginx before 1.23 repeats a header sent twice, as two
            ``HTTP_COOKIE``; later versions join them), except
            ``CONTENT_LENGTH``, which frames the body and may appear once.
        modifier1: 0, a WSGI/ASGI request; or 30, the same request from a
            front-end configured with ``uwsgi_modifier1 30``, uWSGI's old
            way of saying "strip SCRIPT_NAME from the front of PATH_INFO".
        modifier2: always 0.
    """

    environ: list[tuple[bytes, bytes]]
    modifier1: int = 0
    modifier2: int = 0

    def __post_init__(self) -> None:
        size = 0
        for pair in self.environ:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise LocalProtocolError(f"environ entries must be (bytes, bytes), got {pair!r}")
            _check_u16(pair[0], "an environ name")
            _check_u16(pair[1], "an environ value")
            if not pair[0]:
                raise LocalProtocolError(f"environ entry with an empty name: {pair!r}")
            size += 4 + len(pair[0]) + len(pair[1])
        if size > 0xFFFF:
            raise LocalProtocolError(f"environ of {size} bytes does not fit a uwsgi packet")
        if self.modifier1 not in REQUEST_MODIFIERS or self.modifier2 != 0:
            raise LocalProtocolError(
                f"not a request's modifiers: {self.modifier1!r}, {self.modifier2!r}"
            )

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        """The value of the first ``name`` in the environ, or ``default``."""
        for key, value in self.environ:
            if key == name:
                return value
        return default


# modifier1 values that carry a WSGI-style request: 0, and 30 (uWSGI's
# UWSGI_MODIFIER_MANAGE_PATH_INFO, the documented nginx recipe for an app
# under a prefix: `uwsgi_param SCRIPT_NAME /app; uwsgi_modifier1 30;`).
REQUEST_MODIFIERS = frozenset({0, 30})


@dataclass(frozen=True, slots=True, kw_only=True)
class Data(Event):
    """Part of a body: of the request when received, of the response when sent."""

    data: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.data, (bytes, bytearray, memoryview)):
            raise LocalProtocolError(f"Data needs bytes, got {type(self.data).__name__}")


@dataclass(frozen=True, slots=True, kw_only=True)
class EndOfMessage(Event):
    """The end of the request body (received) or of the response (sent)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed(Event):
    """The peer closed the connection after its whole request, or before any of it.

    Front-ends do not half-close after the body, so EOF here means the
    front-end gave up: nginx closes the upstream when its client aborts.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class Response(Event):
    """The response head, written as an HTTP/1.1 status line and headers.

    Attributes:
        status: the HTTP status code, 100 to 999.
        headers: ``(name, value)`` pairs, sent in order. ``str`` is
            accepted and encoded as latin-1; names must be tokens and
            values must not contain CR, LF or NUL (the same checks as the
            SCGI core's :class:`trioscgi.scgi.Response`, from one place).
    """

    status: int
    headers: list[tuple[bytes, bytes]]

    def __post_init__(self) -> None:
        if type(self.status) is not int or not 100 <= self.status <= 999:
            raise LocalProtocolError(f"invalid status code {self.status!r}")
        try:
            headers = normalize_headers(self.headers)
        except _ScgiLocalProtocolError as exc:
            raise LocalProtocolError(str(exc)) from None
        object.__setattr__(self, "headers", headers)
