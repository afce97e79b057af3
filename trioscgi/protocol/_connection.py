"""The SCGI connection state machine: bytes in, events out; events in, bytes out."""

from __future__ import annotations

import enum
from http import HTTPStatus
from typing import Final

from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Request,
    Response,
)
from ._state import (
    CLOSED,
    DONE,
    ERROR,
    OUR_TRANSITIONS,
    RECV_BODY,
    RECV_HEADERS,
    SEND_RESPONSE,
    State,
)

__all__ = ["NEED_DATA", "Connection"]


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = _NeedData.NEED_DATA
"""Returned by :meth:`Connection.next_event` when more bytes are needed."""

# Default limits. 64 KiB of SCGI headers is lighttpd's request-header limit
# and more than nginx forwards by default (4 x 8 KiB large_client_header_buffers).
DEFAULT_MAX_HEADER_SIZE: Final = 65536
# CONTENT_LENGTH may have at most this many digits: 10**18 bytes is beyond
# any real body, and it keeps int() on hostile input cheap.
_MAX_CONTENT_LENGTH_DIGITS: Final = 18

_REASONS: Final = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
# nginx before 1.25.3 writes a malformed status line for a Status: with no
# reason phrase, so unknown codes get their class's name.
_CLASS_REASONS: Final = {
    1: b"Informational",
    2: b"Success",
    3: b"Redirection",
    4: b"Client Error",
    5: b"Server Error",
}


def _reason(status: int) -> bytes:
    reason = _REASONS.get(status)
    if reason is None:
        reason = _CLASS_REASONS.get(status // 100, b"Unknown")
    return reason


_STATUS_LINES: Final = {
    code: b"Status: %d %s\r\n" % (code, _reason(code)) for code in range(100, 600)
}


class Connection:
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

    __slots__ = (
        "_body_left",
        "_buf",
        "_eof",
        "_max_digits",
        "_our_state",
        "_their_state",
        "max_body_size",
        "max_header_size",
    )

    def __init__(
        self,
        *,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
        max_body_size: int | None = None,
    ) -> None:
        if max_header_size < 1:
            raise ValueError("max_header_size must be positive")
        if max_body_size is not None and max_body_size < 0:
            raise ValueError("max_body_size must not be negative")
        self.max_header_size = max_header_size
        self.max_body_size = max_body_size
        # The netstring length can't be longer than the limit's own digits.
        self._max_digits = len(str(max_header_size))
        self._their_state = RECV_HEADERS
        self._our_state = SEND_RESPONSE
        self._buf: bytes | bytearray = b""
        self._eof = False
        self._body_left = 0

    # --- state -----------------------------------------------------------------

    @property
    def their_state(self) -> State:
        """The state of the peer's side: the request."""
        return self._their_state

    @property
    def our_state(self) -> State:
        """The state of our side: the response."""
        return self._our_state

    @property
    def states(self) -> dict[str, State]:
        """Both states, as ``{"their": ..., "our": ...}``."""
        return {"their": self._their_state, "our": self._our_state}

    @property
    def body_remaining(self) -> int:
        """Request body bytes announced by CONTENT_LENGTH and not yet received."""
        return self._body_left

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """Bytes received but not consumed, and whether EOF was seen."""
        return bytes(self._buf), self._eof

    # --- receiving -------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the socket; ``b""`` means the peer closed (EOF)."""
        if data:
            if self._eof:
                raise LocalProtocolError("received data after EOF")
            buf = self._buf
            if not buf:
                self._buf = data
            elif isinstance(buf, bytearray):
                buf += data
            else:
                self._buf = bytearray(buf) + data
        else:
            self._eof = True

    def next_event(self) -> Event | _NeedData:
        """The next event of the request, or :data:`NEED_DATA`.

        Raises:
            RemoteProtocolError: the peer sent something invalid. The
                connection's peer side is then in ``ERROR`` for good.
        """
        state = self._their_state
        try:
            if state is RECV_BODY:
                return self._next_body_event()
            if state is RECV_HEADERS:
                return self._next_head_event()
            if state is DONE:
                if self._eof:
                    self._their_state = CLOSED
                    return ConnectionClosed._make()
                return NEED_DATA
            if state is ERROR:
                raise RemoteProtocolError("can't receive after a protocol error")
            raise LocalProtocolError(f"no more events in state {state!r}")
        except RemoteProtocolError:
            self._their_state = ERROR
            raise

    def _next_head_event(self) -> Event | _NeedData:
        buf = self._buf
        colon = buf.find(b":", 0, self._max_digits + 1)
        if colon < 0:
            if len(buf) > self._max_digits:
                if buf[: self._max_digits + 1].isdigit():
                    raise RemoteProtocolError(
                        f"header block longer than {self.max_header_size} bytes", 431
                    )
                raise RemoteProtocolError(
                    f"netstring length is not digits then ':': {bytes(buf[:16])!r}"
                )
            if buf and not buf.isdigit():
                raise RemoteProtocolError(f"netstring length is not digits: {bytes(buf)!r}")
            if self._eof:
                if not buf:
                    # Connected and closed without a byte: a health check or a
                    # front-end giving up early. Not an error worth a log line.
                    self._their_state = CLOSED
                    return ConnectionClosed._make()
                raise RemoteProtocolError(
                    f"connection closed in the netstring length after {len(buf)} bytes"
                )
            return NEED_DATA
        digits = buf[:colon]
        # isdigit() on bytes is ASCII-only: no sign, space, '_' or other
        # scripts' digits, all of which int() would take.
        if not digits.isdigit():
            raise RemoteProtocolError(f"netstring length is not digits: {bytes(digits)!r}")
        if len(digits) > 1 and digits[0] == 0x30:
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
                    f"connection closed after {len(buf) - colon - 1} of {size} header bytes"
                )
            return NEED_DATA
        if buf[end] != 0x2C:  # ','
            raise RemoteProtocolError(
                f"netstring of {size} bytes ends in {bytes(buf[end : end + 1])!r}, not ','"
            )
        environ = _parse_headers(bytes(buf[colon + 1 : end]))
        content_length = _check_environ(environ)
        if self.max_body_size is not None and content_length > self.max_body_size:
            raise RemoteProtocolError(
                f"body of {content_length} bytes is over the limit of {self.max_body_size}",
                413,
            )
        self._buf = buf[end + 1 :]
        self._body_left = content_length
        self._their_state = RECV_BODY
        return Request._make(environ=environ)

    def _next_body_event(self) -> Event | _NeedData:
        left = self._body_left
        if left == 0:
            self._their_state = DONE
            return EndOfMessage._make()
        buf = self._buf
        if buf:
            if len(buf) <= left:
                data = buf if isinstance(buf, bytes) else bytes(buf)
                self._buf = b""
            else:
                data = bytes(buf[:left])
                self._buf = buf[left:]
            self._body_left = left - len(data)
            return Data._make(data=data)
        if self._eof:
            raise RemoteProtocolError(f"connection closed with {left} bytes of body missing")
        return NEED_DATA

    # --- sending ---------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """The bytes that put ``event`` on the wire.

        ``Response`` becomes a CGI header block (``Status: 200 OK``, the
        headers, a blank line), ``Data`` passes through, ``EndOfMessage``
        is empty: the response ends when the connection closes.

        Raises:
            LocalProtocolError: the event is not allowed in our state.
        """
        state = self._our_state
        try:
            new_state = OUR_TRANSITIONS[state, type(event).__name__]
        except KeyError:
            if state is not ERROR:
                self._our_state = ERROR
            raise LocalProtocolError(
                f"can't send {type(event).__name__} in state {state!r}"
            ) from None
        self._our_state = new_state
        if type(event) is Data:
            data = event.data
            return data if type(data) is bytes else bytes(data)
        if type(event) is Response:
            return _response_head(event.status, event.headers)
        return b""

    def send_failed(self) -> None:
        """Note that sending failed: our side goes to ``ERROR``."""
        self._our_state = ERROR


def _parse_headers(block: bytes) -> list[tuple[bytes, bytes]]:
    if not block.endswith(b"\x00"):
        raise RemoteProtocolError("header block does not end with NUL")
    parts = block.split(b"\x00")
    del parts[-1]
    if len(parts) % 2:
        raise RemoteProtocolError(f"header {parts[-1][:64]!r} has no value")
    names = parts[0::2]
    if b"" in names:
        raise RemoteProtocolError("header with an empty name")
    return list(zip(names, parts[1::2], strict=True))


def _check_environ(environ: list[tuple[bytes, bytes]]) -> int:
    """Check the rules SCGI puts on the headers; return CONTENT_LENGTH."""
    if not environ or environ[0][0] != b"CONTENT_LENGTH":
        raise RemoteProtocolError("CONTENT_LENGTH is not the first header")
    value = environ[0][1]
    if not value.isdigit() or len(value) > _MAX_CONTENT_LENGTH_DIGITS:
        raise RemoteProtocolError(f"CONTENT_LENGTH is not a length: {value[:32]!r}")
    for name, other in environ[1:]:
        if name == b"SCGI":
            if other != b"1":
                raise RemoteProtocolError(f"SCGI version is not 1: {other[:32]!r}")
        elif name == b"CONTENT_LENGTH":
            # Two lengths: which one frames the body is ambiguous (smuggling).
            raise RemoteProtocolError("CONTENT_LENGTH appears twice")
    return int(value)


def _response_head(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"Status: %d %s\r\n" % (status, _reason(status))
    if not headers:
        return line + b"\r\n"
    return line + b"".join([b"%s: %s\r\n" % pair for pair in headers]) + b"\r\n"
