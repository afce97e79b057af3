"""The checks of a response head, the same for every core that has a ``Response`` (SCGI, uwsgi)."""

from __future__ import annotations

import re
from typing import Any

from .errors import LocalProtocolError

__all__ = ["checked_headers", "normalize_headers"]

# RFC 9110 token: the characters a header name may contain.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def checked_headers(status: object, headers: Any) -> list[tuple[bytes, bytes]]:
    """A response's headers as :func:`normalize_headers` returns them, its status proved.

    Raises:
        LocalProtocolError: the status is not an int from 100 to 999, or a
            header is bad (see :func:`normalize_headers`).
    """
    if type(status) is not int or not 100 <= status <= 999:
        raise LocalProtocolError(f"invalid status code {status!r}")
    return normalize_headers(headers)


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
