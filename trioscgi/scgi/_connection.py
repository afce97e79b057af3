"""The SCGI connection state machine: bytes in, events out; events in, bytes out."""

from __future__ import annotations

from typing import Final

from .._cgi import cgi_head
from .._core.errors import RemoteProtocolError
from .._core.events import NEED_DATA, Event, _NeedData
from .._core.oneshot import (
    CLOSED,
    FRESH,
    RECV_BODY,
    RECV_HEADERS,
    OneShotConnection,
    check_body_limit,
    new_event,
)
from ._events import Request, Response

__all__ = ["NEED_DATA", "Connection"]


# Default limits. 64 KiB of SCGI headers is lighttpd's request-header limit
# and more than nginx forwards by default (4 x 8 KiB large_client_header_buffers).
DEFAULT_MAX_HEADER_SIZE: Final = 65536
# CONTENT_LENGTH may have at most this many digits: 10**18 bytes is beyond
# any real body, and it keeps int() on hostile input cheap.
_MAX_CONTENT_LENGTH_DIGITS: Final = 18
_DEFAULT_MAX_DIGITS: Final = len(str(DEFAULT_MAX_HEADER_SIZE))


# The parser's fast path for its own events: validated construction is for
# user code, and what the parser built is valid already (h11 skips the checks
# for its own events too). Set the slot directly.
_set_environ = Request.__dict__["environ"].__set__


# Netstring lengths already proved and converted, for the short path in
# next_event(): int() is a slow call next to a dict lookup, and a front-end
# sends the same few hundred lengths over and over. Only proved keys get in,
# so a hit proves its key again. Bounded, so that varied lengths can't grow
# them.
_LENGTHS: Final[dict[bytes, int]] = {}  # b"449" -> 449
_FIRSTS: Final[dict[bytes, int]] = {}  # b"449:CONTENT_LENGTH" -> 449
_CACHE_MAX: Final = 4096
_FIRST_NAME: Final = b":CONTENT_LENGTH"
_FIRST_NAME_LEN: Final = len(_FIRST_NAME)


def _proved_length(digits: bytes, key: bytes, cache: dict[bytes, int]) -> int:
    """The netstring length ``digits`` say, or 0 if they don't prove one.

    Digits only, no leading zero (nor "0": an empty block is an error), at
    most _DEFAULT_MAX_DIGITS of them. A proved length is cached under ``key``.
    """
    if not (0 < len(digits) <= _DEFAULT_MAX_DIGITS and digits.isdigit() and digits[0] != 0x30):
        return 0
    size = int(digits)
    if len(cache) < _CACHE_MAX:
        cache[key] = size
    return size


def _proved_first(first: bytes) -> int:
    """The netstring length in the buffer's first NUL-terminated string, or 0.

    It must be the length's digits, ':' and the first name, CONTENT_LENGTH.
    """
    if first[-_FIRST_NAME_LEN:] != _FIRST_NAME:
        return 0
    return _proved_length(first[:-_FIRST_NAME_LEN], first, _FIRSTS)


def _digits(limit: int) -> int:
    """How many digits a netstring length within ``limit`` may have."""
    return len(str(limit))


def response_head(event: Response) -> bytes:
    """The CGI header block of a response: ``Status: 200 OK``, the headers, a blank line.

    The same bytes start an SCGI response and a FastCGI STDOUT stream.
    """
    return cgi_head(event.status, event.headers)


# A new connection: waiting for the head, the rest as every one-shot connection.
_FRESH: Final = (RECV_HEADERS, *FRESH)


class Connection(OneShotConnection):
    """One SCGI connection, seen from the server.

    Feed it what the socket reads with :meth:`receive_data`, take the
    request apart with :meth:`next_event`, and turn the response into bytes
    with :meth:`send`. It does no I/O of its own.

    Args:
        max_header_size: the largest SCGI header block accepted, in bytes;
            a longer one raises :class:`RemoteProtocolError` with hint 431
            as soon as the netstring length says so.
        max_body_size: the largest CONTENT_LENGTH accepted, or ``None`` for
            no limit; a larger one raises :class:`RemoteProtocolError` with
            hint 413 before any of the body is read.
    """

    __slots__ = ("max_header_size",)

    _response_head = staticmethod(response_head)

    def __init__(
        self,
        *,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
        max_body_size: int | None = None,
    ) -> None:
        if max_header_size != DEFAULT_MAX_HEADER_SIZE or max_body_size is not None:
            if max_header_size < 1:
                raise ValueError("max_header_size must be positive")
            check_body_limit(max_body_size)
        self.max_header_size = max_header_size
        self.max_body_size = max_body_size
        self._their_state, self._our_state, self._buf, self._eof, self._body_left = _FRESH

    def _next_head(self) -> Event | _NeedData:
        # The usual case first: the whole head in one read (a bytes buffer is
        # always a single read), proved valid here with as few operations as
        # possible and nothing that raises. Anything else (an error, a short
        # buffer, a limit, a 6-digit length, a duplicate name, another SCGI...)
        # goes to the general parser, which starts again from the first byte
        # and says what is wrong. (next_event() puts the state in ERROR on
        # RemoteProtocolError.)
        buf = self._buf
        if type(buf) is not bytes:
            return self._next_head_event()
        if buf[-2:] == b"\x00,":
            # Nothing after the head (every GET): split the buffer as it
            # is, the length stuck to the first name, and no copy at all.
            parts = buf.split(b"\x00")
            first = parts[0]
            size = _FIRSTS.get(first) or _proved_first(first)
            # first is the digits, ':' and CONTENT_LENGTH: the buffer is
            # those, the rest of the block and ','. (If it is longer, a
            # body that ends in NUL and ',' follows.)
            if not (
                size
                and len(buf) == len(first) - _FIRST_NAME_LEN + size + 2
                and size <= self.max_header_size
            ):
                return self._next_head_event()
            parts[0] = b"CONTENT_LENGTH"
            block = buf  # no NUL before the first name
            rest = b""
        else:
            # A body (or more) in the same read: the length, then the
            # block with its ',' (parts ends with b",", as above).
            digits, _, rest = buf.partition(b":")
            size = _LENGTHS.get(digits) or _proved_length(digits, digits, _LENGTHS)
            # rest: the block, its ',' and whatever follows. The block
            # ends with NUL. (Without a ':', or with a block cut short,
            # the slice is shorter.)
            if not (
                size and rest[size - 1 : size + 1] == b"\x00," and size <= self.max_header_size
            ):
                return self._next_head_event()
            block = rest[: size + 1]  # no copy when nothing follows
            parts = block.split(b"\x00")
            if parts[0] != b"CONTENT_LENGTH":
                return self._next_head_event()
            rest = rest[size + 1 :]
        # parts: the strings, then b",". CONTENT_LENGTH is first; its
        # value is digits ("0" for every GET).
        value = parts[1]
        if value == b"0":
            content_length = 0
        elif value.isdigit() and len(value) <= _MAX_CONTENT_LENGTH_DIGITS:
            content_length = int(value)
        else:
            return self._next_head_event()
        if not (
            # An even number of strings, then the ','.
            len(parts) & 1
            # No empty name (a truth test each).
            and all(parts[0::2])
            # No second CONTENT_LENGTH: partition() hands back the block
            # itself when the separator isn't there, and takes its one
            # argument faster than find() parses its three. (`in` is
            # slower still: bytes.__contains__ tries the needle as an
            # int first and pays for the TypeError.)
            and not block.partition(b"\x00CONTENT_LENGTH\x00")[1]
        ):
            return self._next_head_event()
        # SCGI=1 when present, proved as in _next_head_event.
        scgi = block.split(b"\x00SCGI\x00")
        if not ((len(scgi) == 2 and scgi[1][:2] == b"1\x00") or len(scgi) == 1):
            return self._next_head_event()
        max_body_size = self.max_body_size
        if max_body_size is not None and content_length > max_body_size:
            return self._next_head_event()
        self._buf = rest
        self._body_left = content_length
        self._their_state = RECV_BODY
        request = new_event(Request)
        pairs = iter(parts)
        # zip() drops the odd b"," at the end. Not strict=True: keyword
        # arguments cost a slow call path.
        _set_environ(request, [*zip(pairs, pairs)])  # noqa: B905
        return request

    def _next_head_event(self) -> Event | _NeedData:
        buf = self._buf
        # Unbounded find: memchr is cheaper than parsing bounds, and the
        # buffer holds at most the limit's digits while no ':' has come.
        colon = buf.find(b":")
        # No more digits than the limit has: it takes a sixth digit to go
        # past the default limit, so only a longer length needs the count.
        if colon < 1 or (colon > _DEFAULT_MAX_DIGITS and colon > _digits(self.max_header_size)):
            return self._no_length_yet(buf, colon)
        digits = buf[:colon]
        # isdigit() on bytes is ASCII-only: no sign, space, '_' or other
        # scripts' digits, all of which int() would take.
        if not digits.isdigit():
            raise RemoteProtocolError(
                f"netstring length is not digits: {bytes(digits)!r} at offset 0"
            )
        if colon > 1 and buf[0] == 0x30:  # '0'
            raise RemoteProtocolError(f"netstring length has a leading zero: {bytes(digits)!r}")
        size = int(digits)
        if size > self.max_header_size:
            raise RemoteProtocolError(
                f"header block of {size} bytes is over the limit of {self.max_header_size}",
                431,
            )
        end = colon + 1 + size
        if len(buf) <= end:
            if self._eof:
                raise RemoteProtocolError(
                    f"connection closed in the header netstring: got {len(buf) - colon - 1}"
                    f" of {size} bytes and its ','"
                )
            return NEED_DATA
        if buf[end] != 0x2C:  # ','
            raise RemoteProtocolError(
                f"netstring of {size} bytes ends in {bytes(buf[end : end + 1])!r}"
                f" at offset {end}, not ','"
            )
        # The last byte of the block must be NUL. (An empty block fails too:
        # buf[end - 1] is then the ':'.) One index, not a method call.
        if buf[end - 1]:
            raise RemoteProtocolError("header block does not end with NUL")
        block = buf[colon + 1 : end]
        if type(block) is not bytes:
            # Arrived in pieces: the environ is made of bytes, not bytearrays.
            block = bytes(block)
        parts = block.split(b"\x00")
        del parts[-1]
        if len(parts) & 1:
            raise RemoteProtocolError(f"header {parts[-1][:64]!r} has no value")
        # The spec: "The first request header must have the name
        # CONTENT_LENGTH" and its value is digits, "0" for no body.
        if parts[0] != b"CONTENT_LENGTH":
            raise RemoteProtocolError("CONTENT_LENGTH is not the first header")
        value = parts[1]
        if not value.isdigit() or len(value) > _MAX_CONTENT_LENGTH_DIGITS:
            raise RemoteProtocolError(f"CONTENT_LENGTH is not a length: {value[:32]!r}")
        names = parts[0::2]
        # all() is a truth test per name; `b"" in names` is a comparison each.
        if not all(names):
            raise RemoteProtocolError(
                f"header with an empty name, value {parts[names.index(b'') * 2 + 1][:32]!r}"
            )
        # The next two checks look at the raw block first (C searches) and
        # at the names only when it hints at a problem: the exact scans
        # cost more than the rest of the parse on a typical request.
        # A later CONTENT_LENGTH name is always "\0CONTENT_LENGTH\0". (find,
        # not `in`: bytes.__contains__ first tries the needle as an int and
        # pays for a TypeError.)
        if block.find(b"\x00CONTENT_LENGTH\x00") >= 0 and names.count(b"CONTENT_LENGTH") > 1:
            # Two lengths: which one frames the body is ambiguous (smuggling).
            raise RemoteProtocolError("CONTENT_LENGTH appears twice")
        # SCGI "must" be 1, but nginx sends none when scgi_params isn't
        # included: tolerate its absence, not another version.
        # CONTENT_LENGTH comes first, so an SCGI name is always preceded by
        # a NUL: every SCGI name is in an occurrence of "\0SCGI\0". One split
        # finds them all, from the left, without overlaps. If it finds one
        # and it is followed by "1\0", there is no other (an overlapping one,
        # "\0SCGI\0SCGI\0", would put "SCGI" after the first), so every SCGI
        # name (none, if that one was a value) has the value 1. Anything
        # else (a value "SCGI", several, another version) is settled by a
        # scan of the names.
        scgi = block.split(b"\x00SCGI\x00")
        if len(scgi) > 1 and (len(scgi) > 2 or scgi[1][:2] != b"1\x00"):
            for i, name in enumerate(names):
                if name == b"SCGI" and parts[2 * i + 1] != b"1":
                    raise RemoteProtocolError(f"SCGI version is not 1: {parts[2 * i + 1][:32]!r}")
        # "0" (every GET) is common enough to skip the int() call.
        content_length = 0 if value == b"0" else int(value)
        self._body_left = self._body_size(content_length)
        self._buf = buf[end + 1 :]
        self._their_state = RECV_BODY
        request = new_event(Request)
        pairs = iter(parts)
        # Not strict=True: the count is even (checked above) and keyword
        # arguments cost a slow call path.
        _set_environ(request, list(zip(pairs, pairs)))  # noqa: B905
        return request

    def _no_length_yet(self, buf: bytes | bytearray, colon: int) -> _NeedData | Event:
        # No ':' within the digits the limit allows (or ':' first): either an
        # error that the prefix alone proves, or a wait for more bytes.
        # (A ':' further on is no help: the length is too long or not digits.)
        if colon == 0:
            raise RemoteProtocolError("netstring length is empty (':' at offset 0)")
        max_digits = _digits(self.max_header_size)
        head = buf[: max_digits + 1]
        if not head.isdigit():
            if not head:
                if self._eof:
                    # Connected and closed without a byte: a health check or a
                    # front-end giving up early. Not an error worth a log line.
                    self._their_state = CLOSED
                    return self._closed_before_head()
                return NEED_DATA
            bad = next(i for i, b in enumerate(head) if not 0x30 <= b <= 0x39)
            raise RemoteProtocolError(
                f"netstring length is not digits then ':': {bytes(head)!r}"
                f" has {bytes(head[bad : bad + 1])!r} at offset {bad}"
            )
        if len(head) > 1 and head[0] == 0x30:
            raise RemoteProtocolError(f"netstring length has a leading zero: {bytes(head)!r}")
        # Digits so far only ever grow: once they exceed the limit (or there
        # are more of them than the limit has), no ':' can make it fit.
        # Don't buffer a gigabyte to find out.
        if len(head) > max_digits or int(head) > self.max_header_size:
            raise RemoteProtocolError(
                f"header block longer than {self.max_header_size} bytes"
                f" (netstring length starts {bytes(head)!r})",
                431,
            )
        if self._eof:
            raise RemoteProtocolError(
                f"connection closed in the netstring length after {len(buf)} bytes"
            )
        return NEED_DATA
