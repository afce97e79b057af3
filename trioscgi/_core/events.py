"""What the cores' events share: the ``Event`` base, ``NEED_DATA``, SCGI's and uwsgi's body events.

Events are frozen and keyword-only. Those built by user code are validated
on construction; a parser builds its own through ``_make`` (or, on the hot
path, by setting the slots directly) without the checks, since it has
already proved what it found.

FastCGI's ``Data`` and ``EndOfMessage`` carry a request id, so that core has
its own; SCGI's and uwsgi's are the same classes (``trioscgi.scgi.Data is
trioscgi.uwsgi.Data``): one request per connection, nothing more to say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, TypeVar

from .enums import Named
from .errors import LocalProtocolError
from .headers import checked_headers

__all__ = [
    "NEED_DATA",
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "EnvironRequest",
    "Event",
    "ResponseBase",
]

_E = TypeVar("_E", bound="Event")


class _NeedData(Named):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = _NeedData.NEED_DATA
"""Returned by ``Connection.next_event()`` when more bytes are needed."""


class Event:
    """Base class of every event, of every core."""

    __slots__ = ()

    @classmethod
    def _make(cls: type[_E], **fields: Any) -> _E:
        # The parser's path: no validation, no keyword checks.
        self = object.__new__(cls)
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        return self


class EnvironRequest(Event):
    """The base of SCGI's and uwsgi's ``Request``: a head whose variables are ``environ``."""

    __slots__ = ()

    environ: list[tuple[bytes, bytes]]

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        """The value of the first ``name`` in the environ, or ``default``."""
        for key, value in self.environ:
            if key == name:
                return value
        return default


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
class ResponseBase(Event):
    """The base of SCGI's and uwsgi's ``Response``: a status and checked headers.

    Each core's subclass is named ``Response`` (the transition tables key on
    the name) and says how its protocol writes the head.

    Attributes:
        status: the HTTP status code, 100 to 999.
        headers: ``(name, value)`` pairs, sent in order. ``str`` is
            accepted and encoded as latin-1; names must be tokens and
            values must not contain CR, LF or NUL.
    """

    status: int
    headers: list[tuple[bytes, bytes]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", checked_headers(self.status, self.headers))
