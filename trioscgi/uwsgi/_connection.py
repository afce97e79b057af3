"""The uwsgi connection state machine: bytes in, events out; events in, bytes out."""

from __future__ import annotations

from collections.abc import Callable
from struct import Struct
from struct import error as StructError
from typing import Final

from .._cgi import cgi_head
from .._core.errors import RemoteProtocolError
from .._core.events import NEED_DATA, Event, ResponseBase, _NeedData
from .._core.oneshot import (
    FRESH,
    RECV_BODY,
    RECV_HEADER,
    OneShotConnection,
    check_body_limit,
    new_event,
)
from ._errors import UnsupportedModifier
from ._events import REQUEST_MODIFIERS, Request

__all__ = [
    "DEFAULT_MAX_VARS",
    "DEFAULT_MAX_VARS_SIZE",
    "HEADER_LEN",
    "NEED_DATA",
    "Connection",
    "response_head",
]


HEADER_LEN: Final = 4
"""The packet header: modifier1 (u8), datasize (u16 little-endian), modifier2 (u8)."""

# Default limits. The vars block's size is a u16, so 65535 bytes is all the
# format can say: nginx refuses to build a bigger one ("uwsgi request is too
# big") and Apache mod_proxy_uwsgi answers 500. uWSGI itself stops at its
# `buffer-size`, 4 KiB by default, a limit its users raise for long cookies;
# the format's own bound costs at most 64 KiB per connection.
DEFAULT_MAX_VARS_SIZE: Final = 0xFFFF
# How many vars one request may carry: nginx's stock uwsgi_params sends 15,
# each request header adds one. The count bounds the Python objects a block
# becomes (about 230 bytes a pair: 64 KiB of one-letter vars would be over
# 13,000 pairs, 3 MiB); 1,024 pairs is about 230 KiB. nginx forwards at most
# 4 x 8 KiB of headers by default (large_client_header_buffers), lighttpd
# 64 KiB, uWSGI 64 vars (its `max-vars`).
DEFAULT_MAX_VARS: Final = 1024
# CONTENT_LENGTH may have at most this many digits: 10**18 bytes is beyond
# any real body, and it keeps int() on hostile input cheap.
_MAX_CONTENT_LENGTH_DIGITS: Final = 18

# The parser's fast path for its own events (STYLE.md 3): set the slots directly.
_set_environ = Request.__dict__["environ"].__set__
_set_modifier1 = Request.__dict__["modifier1"].__set__
_set_modifier2 = Request.__dict__["modifier2"].__set__


def _reject_modifiers(modifier1: int, modifier2: int) -> UnsupportedModifier:
    # uWSGI uses the other modifiers for its other language plugins and for
    # its own management packets (pings, signals, cache, spooler...).
    return UnsupportedModifier(
        f"uwsgi packet with modifier1={modifier1}, modifier2={modifier2}: only"
        " WSGI/ASGI requests (modifier1 0 or 30, modifier2 0) are served",
        modifier1,
        modifier2,
    )


# Decoders for the vars, by size: _NAMES[n] reads an n-byte name and the value size
# after it, _VALUES[n] an n-byte value and the next name's size, each in one C call
# (struct's unpack_from) instead of two index operations, a shift and a slice in Python:
# about 3,800 instructions a var instead of 5,500 (callgrind, nginx's 16-var GET: 60k
# for the block instead of 88k).
# The key is a size, never content. Bounded: past 4096 sizes each, a new size gets its
# decoder made and not kept.
_Decoder = Callable[[bytes, int], tuple[bytes, int]]
_NAMES: Final[dict[int, _Decoder]] = {}
_VALUES: Final[dict[int, _Decoder]] = {}
_DECODERS_MAX: Final = 4096
_CONTENT_LENGTH: Final = b"CONTENT_LENGTH"
# The smallest var: two sizes and a one-byte name. A block of at most max_vars times
# this can't hold more than max_vars vars, so the fast parser needn't count them.
_MIN_VAR: Final = 5


# A decoder per recurring layout. nginx sends the same vars in the same order request
# after request, and most values keep their size (REMOTE_PORT's five digits, the Host,
# the User-Agent of a client that comes back): the layout, every name's and value's size
# in order, recurs. A layout seen twice in a row for its block length gets one Struct
# that reads the whole block in a single C call; the sizes come back among the fields,
# and their being the layout's is the proof that the block has that layout (the Struct
# covers the block exactly, so nothing can run past it). About 10k instructions for
# nginx's 16-var GET instead of 60k for the walk. By block length, bounded: past
# _LAYOUTS_MAX lengths a new one is walked and not remembered.
_Layout = tuple[Callable[[bytes], tuple[object, ...]], tuple[int, ...], int]
_LAYOUTS: Final[dict[int, _Layout]] = {}
_SEEN: Final[dict[int, tuple[int, ...]]] = {}
_LAYOUTS_MAX: Final = 1024


def _remember(end: int, pairs: list[tuple[bytes, bytes]]) -> None:
    """Note the layout of a block the walk proved valid; the second time, decode it in C."""
    sizes = tuple([len(part) for pair in pairs for part in pair])
    if _SEEN.get(end) != sizes:
        if end in _SEEN or len(_SEEN) < _LAYOUTS_MAX:
            _SEEN[end] = sizes
        return
    if end in _LAYOUTS or len(_LAYOUTS) < _LAYOUTS_MAX:
        it = iter(sizes)
        layout = "".join([f"H{n}sH{v}s" for n, v in zip(it, it, strict=True)])
        _LAYOUTS[end] = (Struct("<" + layout).unpack, sizes, len(pairs))


def _by_layout(
    block: bytes, layout: _Layout, max_vars: int
) -> tuple[list[tuple[bytes, bytes]], int] | None:
    """The block decoded by its length's layout, or None when it has another one (or
    needs the walk to say what is wrong with it)."""
    unpack, sizes, count = layout
    if count > max_vars:
        return None
    fields = unpack(block)
    # [name size, name, value size, value, ...]: the sizes are every other field.
    if fields[0::2] != sizes:
        return None
    names: tuple[bytes, ...] = fields[1::4]  # type: ignore[assignment]
    values: tuple[bytes, ...] = fields[3::4]  # type: ignore[assignment]
    pairs = list(zip(names, values, strict=True))
    found = names.count(_CONTENT_LENGTH)
    if not found:
        return pairs, 0
    if found > 1:
        return None
    content_length = values[names.index(_CONTENT_LENGTH)]
    if not content_length:
        return pairs, 0
    if content_length.isdigit() and len(content_length) <= _MAX_CONTENT_LENGTH_DIGITS:
        return pairs, int(content_length)
    return None


def _decoder(table: dict[int, _Decoder], size: int) -> _Decoder:
    decode = Struct(f"<{size}sH").unpack_from
    if len(table) < _DECODERS_MAX:
        table[size] = decode
    return decode


def _parse_vars(block: bytes, max_vars: int) -> tuple[list[tuple[bytes, bytes]], int]:
    """The (name, value) pairs of a vars block, and the body length CONTENT_LENGTH gives.

    The usual block, proved valid with as few operations as possible; anything else (an
    error, a block that may hold too many vars) goes to :func:`_parse_vars_checked`,
    which starts again and says what is wrong.
    """
    end = len(block)
    layout = _LAYOUTS.get(end)
    if layout is not None:
        decoded = _by_layout(block, layout, max_vars)
        if decoded is not None:
            return decoded
    if end > max_vars * _MIN_VAR or end < _MIN_VAR:
        return _parse_vars_checked(block, max_vars)
    # Two zero bytes after the block: the last value's decoder reads them as the next
    # name's size.
    buf = block + b"\0\0"
    stop = end + 2
    names = _NAMES.get
    values = _VALUES.get
    pairs: list[tuple[bytes, bytes]] = []
    append = pairs.append
    content_length: bytes | None = None
    size = buf[0] | buf[1] << 8
    pos = 2
    try:
        while pos < stop:
            if not size:
                return _parse_vars_checked(block, max_vars)  # an empty name
            name, value_size = (names(size) or _decoder(_NAMES, size))(buf, pos)
            if size == 14 and name == _CONTENT_LENGTH:
                if content_length is not None:
                    return _parse_vars_checked(block, max_vars)
                content_length = buf[pos + 16 : pos + 16 + value_size]
            pos += size + 2
            value, size = (values(value_size) or _decoder(_VALUES, value_size))(buf, pos)
            pos += value_size + 2
            append((name, value))
    except StructError:
        return _parse_vars_checked(block, max_vars)
    # Every read ends where `pos` does, and none can end past `buf`: out of the loop, `pos`
    # is `stop`, so the last value ended with the block and the size read after it was
    # the padding. (A size that runs past the block ran the next read past `buf`.)
    if not content_length:
        _remember(end, pairs)
        return pairs, 0
    if not (content_length.isdigit() and len(content_length) <= _MAX_CONTENT_LENGTH_DIGITS):
        return _parse_vars_checked(block, max_vars)
    _remember(end, pairs)
    return pairs, int(content_length)


def _parse_vars_checked(block: bytes, max_vars: int) -> tuple[list[tuple[bytes, bytes]], int]:
    """The (name, value) pairs of a vars block, and the body length CONTENT_LENGTH gives.

    Raises:
        RemoteProtocolError: a size runs past the block, a name is empty or
            there are more than ``max_vars`` pairs (431), CONTENT_LENGTH is
            there twice or is not digits.
    """
    pairs: list[tuple[bytes, bytes]] = []
    append = pairs.append
    end = len(block)
    pos = 0
    content_length: bytes | None = None
    while pos < end:
        # Two bytes of name size, the name, two of value size, the value.
        # Index errors can't happen: each size is read only once its two
        # bytes are proved inside the block.
        if pos + 2 > end:
            raise RemoteProtocolError(f"vars block ends inside a name size at offset {pos}")
        name_end = pos + 2 + (block[pos] | block[pos + 1] << 8)
        if name_end == pos + 2:
            raise RemoteProtocolError(f"var with an empty name at offset {pos}")
        if name_end + 2 > end:
            raise RemoteProtocolError(
                f"var name at offset {pos} runs past the vars block ({end} bytes)"
            )
        value_end = name_end + 2 + (block[name_end] | block[name_end + 1] << 8)
        if value_end > end:
            raise RemoteProtocolError(
                f"value of {block[pos + 2 : name_end][:32]!r} runs past the vars block"
                f" ({end} bytes)"
            )
        name = block[pos + 2 : name_end]
        value = block[name_end + 2 : value_end]
        if name == b"CONTENT_LENGTH":
            if content_length is not None:
                # Two lengths: which one frames the body is ambiguous (smuggling).
                raise RemoteProtocolError("CONTENT_LENGTH appears twice")
            content_length = value
        append((name, value))
        pos = value_end
        if len(pairs) > max_vars:
            raise RemoteProtocolError(f"more than {max_vars} vars in the request", 431)
    if not content_length:
        # Absent, or empty: nginx's $content_length is empty on a request
        # without a body, and the stock uwsgi_params passes it anyway.
        return pairs, 0
    if not (content_length.isdigit() and len(content_length) <= _MAX_CONTENT_LENGTH_DIGITS):
        raise RemoteProtocolError(f"invalid CONTENT_LENGTH {content_length[:32]!r}")
    return pairs, int(content_length)


# An HTTP/1.1 status line, not CGI's `Status:`: Apache mod_proxy_uwsgi
# fails the request (502 from Apache 2.4.71) unless the first line matches
# "HTTP/#.# ###*" (or "HTTP/# ###*"), and nginx's uwsgi module parses an HTTP status line first,
# falling back to a `Status:` header only when there is none. A reason phrase
# always: Apache keeps it as the status line, nginx forwards it. Otherwise
# the head is CGI's, byte for byte: the CGI head with its first word
# swapped, one short copy rather than a second encoder.
_STATUS_WORD_LEN: Final = len(b"Status:")


def response_head(event: ResponseBase) -> bytes:
    """The head of a response as uwsgi front-ends read it: status line, headers, blank line.

    ``event`` is a :class:`Response` (or the SCGI core's, whose checks are
    the same): its headers are not checked again here.
    """
    return b"HTTP/1.1" + cgi_head(event.status, event.headers)[_STATUS_WORD_LEN:]


# A new connection: waiting for the head, the rest as every one-shot connection.
_FRESH: Final = (RECV_HEADER, *FRESH)


class Connection(OneShotConnection):
    """One uwsgi connection, seen from the server.

    Feed it what the socket reads with :meth:`receive_data`, take the
    request apart with :meth:`next_event`, and turn the response into bytes
    with :meth:`send`. It does no I/O of its own.

    The request is one packet: a 4-byte header (``modifier1``, the vars
    block's size as a little-endian u16, ``modifier2``), the vars (each a
    little-endian u16 size and a name, a u16 size and a value), then the
    body, ``CONTENT_LENGTH`` bytes (none when it is absent or empty).
    A packet that is not a request makes :meth:`next_event` raise
    :class:`UnsupportedModifier`, a :class:`RemoteProtocolError`.

    Args:
        max_vars_size: the largest vars block accepted, in bytes (at most
            65535, what the format can say); a larger one raises
            :class:`RemoteProtocolError` with hint 431 as soon as the header
            says so, before any of it is buffered.
        max_vars: the most vars one request may carry; more raises
            :class:`RemoteProtocolError` with hint 431.
        max_body_size: the largest CONTENT_LENGTH accepted, or ``None`` for
            no limit; a larger one raises :class:`RemoteProtocolError` with
            hint 413 before any of the body is read.
    """

    __slots__ = ("max_vars", "max_vars_size")

    _response_head = staticmethod(response_head)

    def __init__(
        self,
        *,
        max_vars_size: int = DEFAULT_MAX_VARS_SIZE,
        max_vars: int = DEFAULT_MAX_VARS,
        max_body_size: int | None = None,
    ) -> None:
        if not 0 <= max_vars_size <= 0xFFFF:
            raise ValueError("max_vars_size must be from 0 to 65535")
        if max_vars < 0:
            raise ValueError("max_vars must not be negative")
        if max_body_size is not None:  # no call for the default
            check_body_limit(max_body_size)
        self.max_vars_size = max_vars_size
        self.max_vars = max_vars
        self.max_body_size = max_body_size
        self._their_state, self._our_state, self._buf, self._eof, self._body_left = _FRESH

    def _next_head(self) -> Event | _NeedData:
        buf = self._buf
        have = len(buf)
        if have < HEADER_LEN:
            if self._eof:
                if not have:
                    return self._closed_before_head()
                raise RemoteProtocolError(
                    f"connection closed in the packet header after {have} bytes"
                )
            return NEED_DATA
        modifier1 = buf[0]
        size = buf[1] | buf[2] << 8
        modifier2 = buf[3]
        if modifier1 not in REQUEST_MODIFIERS or modifier2:
            raise _reject_modifiers(modifier1, modifier2)
        if size > self.max_vars_size:
            raise RemoteProtocolError(
                f"vars block of {size} bytes is over the limit of {self.max_vars_size}", 431
            )
        end = HEADER_LEN + size
        if have < end:
            if self._eof:
                raise RemoteProtocolError(
                    f"connection closed in the vars block after {have - HEADER_LEN}"
                    f" of its {size} bytes"
                )
            return NEED_DATA
        block = bytes(buf[HEADER_LEN:end])
        environ, content_length = _parse_vars(block, self.max_vars)
        self._body_left = self._body_size(content_length)
        self._buf = buf[end:] if have > end else b""
        self._their_state = RECV_BODY
        request = new_event(Request)
        _set_environ(request, environ)
        _set_modifier1(request, modifier1)
        _set_modifier2(request, modifier2)
        return request
