"""The events of an SCGI connection: what the peer sent, and what we send.

Events are frozen and keyword-only. Those built by user code are validated
on construction; the parser builds its own through ``_make`` without the
checks, since it has already proved what it found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeVar

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

# RFC 9110 token: the characters a header name may contain.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Request(Event):
    """The request head: the SCGI header block.

    Attributes:
        environ: ``(name, value)`` pairs in wire order. Duplicate names are
            kept: nginx before 1.23 repeats a header sent twice (two
            ``HTTP_COOKIE``), later versions join them.
    """

    environ: list[tuple[bytes, bytes]]

    def __post_init__(self) -> None:
        for pair in self.environ:
            if (
                not isinstance(pair, tuple)
                or len(pair) != 2
                or not isinstance(pair[0], bytes)
                or not isinstance(pair[1], bytes)
            ):
                raise LocalProtocolError(f"environ entries must be (bytes, bytes), got {pair!r}")
            if not pair[0] or 0 in pair[0] or 0 in pair[1]:
                raise LocalProtocolError(f"invalid environ entry {pair!r}")

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
class Response(Event):
    """The response head, written as a CGI-style header block.

    Attributes:
        status: the HTTP status code, 100 to 999.
        headers: ``(name, value)`` pairs, sent in order. ``str`` is
            accepted and encoded as latin-1; names must be tokens and
            values must not contain CR, LF or NUL.
    """

    status: int
    headers: list[tuple[bytes, bytes]]

    def __post_init__(self) -> None:
        if type(self.status) is not int or not 100 <= self.status <= 999:
            raise LocalProtocolError(f"invalid status code {self.status!r}")
        object.__setattr__(self, "headers", normalize_headers(self.headers))


def _to_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise LocalProtocolError(f"header {what} {value!r} is not latin-1") from None
    raise LocalProtocolError(f"header {what} must be bytes or str, got {type(value).__name__}")


# Header names already proved to be tokens. Applications send the same few
# names over and over; the cache is bounded so hostile names can't grow it.
_GOOD_NAMES: set[bytes] = set()
_GOOD_NAMES_MAX = 1024


def normalize_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    """Check response headers and return them as a list of byte pairs.

    Raises:
        LocalProtocolError: a name is not a token, a value holds CR, LF or
            NUL, or an entry is not a pair of bytes/str.
    """
    out: list[tuple[bytes, bytes]] = []
    append = out.append
    good_names = _GOOD_NAMES
    try:
        items = iter(headers)
    except TypeError:
        raise LocalProtocolError("headers must be an iterable of (name, value) pairs") from None
    for item in items:
        try:
            name, value = item
        except (TypeError, ValueError):
            raise LocalProtocolError(f"header {item!r} is not a (name, value) pair") from None
        if type(name) is not bytes:
            name = _to_bytes(name, "name")
        if type(value) is not bytes:
            value = _to_bytes(value, "value")
        if name not in good_names:
            if _TOKEN.fullmatch(name) is None:
                raise LocalProtocolError(f"invalid header name {name!r}")
            if len(good_names) < _GOOD_NAMES_MAX:
                good_names.add(name)
        # CR, LF and NUL would let a value start a new header (response
        # splitting) or end the header block early. Three C-level scans
        # beat one regex call on short values. The needles are ints: a
        # bytes needle first fails a conversion to int (a TypeError made
        # and cleared, ~1,800 instructions), an int goes straight to memchr.
        if 13 in value or 10 in value or 0 in value:
            raise LocalProtocolError(f"header value of {name!r} contains CR, LF or NUL")
        append((name, value))
    return out
