"""Tests for trioscgi.scgi (formerly trioscgi.protocol): the sans-I/O SCGI core.

Every request reader is fed the input whole, byte by byte, in 3-byte pieces
and with trailing data; every transition the parser or ``send`` makes is
checked against the tables in ``_state.py``.
"""

from __future__ import annotations

import http
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trioscgi.scgi import (
    CLOSED,
    DEFAULT_MAX_HEADER_SIZE,
    DONE,
    ERROR,
    NEED_DATA,
    RECV_BODY,
    RECV_HEADERS,
    SEND_BODY,
    SEND_RESPONSE,
    Connection,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    Request,
    Response,
)
from trioscgi.scgi._state import OUR_TRANSITIONS, THEIR_TRANSITIONS

CAPTURES = Path(__file__).parent / "data" / "captures"

# --- helpers -----------------------------------------------------------------


def netstring_headers(environ: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The SCGI header netstring for ``environ``, as a front-end writes it."""
    block = b"".join(name + b"\0" + value + b"\0" for name, value in environ)
    return b"%d:%s," % (len(block), block)


def request_bytes(body: bytes = b"", *extra: tuple[bytes, bytes], scgi: bool = True) -> bytes:
    """A valid request: CONTENT_LENGTH first, SCGI=1, a few CGI variables, the body."""
    environ = [(b"CONTENT_LENGTH", b"%d" % len(body))]
    if scgi:
        environ.append((b"SCGI", b"1"))
    environ += [(b"REQUEST_METHOD", b"POST" if body else b"GET"), (b"REQUEST_URI", b"/x?y=1")]
    environ += extra
    return netstring_headers(environ) + body


def whole(wire: bytes) -> list[bytes]:
    return [wire]


def bytewise(wire: bytes) -> list[bytes]:
    return [wire[i : i + 1] for i in range(len(wire))]


def threes(wire: bytes) -> list[bytes]:
    return [wire[i : i + 3] for i in range(0, len(wire), 3)]


SPLITS: dict[str, Callable[[bytes], list[bytes]]] = {
    "whole": whole,
    "bytewise": bytewise,
    "threes": threes,
}


@pytest.fixture(params=sorted(SPLITS))
def split(request: pytest.FixtureRequest) -> Callable[[bytes], list[bytes]]:
    return SPLITS[request.param]


def next_event_checked(conn: Connection) -> Event | object:
    """``conn.next_event()``, asserting the transition is in THEIR_TRANSITIONS."""
    before = conn.their_state
    try:
        event = conn.next_event()
    except RemoteProtocolError:
        assert conn.their_state is ERROR
        raise
    if event is NEED_DATA:
        assert conn.their_state is before
    else:
        key = (before, type(event).__name__)
        assert key in THEIR_TRANSITIONS, key
        assert conn.their_state is THEIR_TRANSITIONS[key], key
    return event


def drain(conn: Connection, out: list[Event]) -> None:
    """Take events until NEED_DATA or ConnectionClosed, merging adjacent Data."""
    for _ in range(10_000):  # bounded: one event per call at most
        event = next_event_checked(conn)
        if event is NEED_DATA:
            return
        assert isinstance(event, Event)
        if type(event) is Data and out and type(out[-1]) is Data:
            out[-1] = Data(data=out[-1].data + event.data)
        else:
            out.append(event)
        if type(event) is ConnectionClosed:
            return
    raise AssertionError("next_event never returned NEED_DATA")


def feed(
    chunks: Iterable[bytes], *, eof: bool = True, conn: Connection | None = None
) -> tuple[list[Event], Connection]:
    """Feed ``chunks`` (then EOF) and collect every event, Data merged."""
    if conn is None:
        conn = Connection()
    out: list[Event] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        drain(conn, out)
    if eof:
        conn.receive_data(b"")
        drain(conn, out)
    return out, conn


def parse(wire: bytes, split: Callable[[bytes], list[bytes]], **kwargs: object) -> list[Event]:
    events, _ = feed(split(wire), **kwargs)  # type: ignore[arg-type]
    return events


def remote_error(
    wire: bytes,
    split: Callable[[bytes], list[bytes]] = whole,
    *,
    eof: bool = True,
    **conn_args: int,
) -> RemoteProtocolError:
    """Feed ``wire`` and return the RemoteProtocolError it must raise."""
    conn = Connection(**conn_args)
    with pytest.raises(RemoteProtocolError) as info:
        feed(split(wire), eof=eof, conn=conn)
    assert conn.their_state is ERROR
    # Sticky: the connection never gets out of ERROR.
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.their_state is ERROR
    return info.value


def expected(environ: list[tuple[bytes, bytes]], body: bytes) -> list[Event]:
    out: list[Event] = [Request(environ=environ)]
    if body:
        out.append(Data(data=body))
    return [*out, EndOfMessage(), ConnectionClosed()]


GET_ENV = [
    (b"CONTENT_LENGTH", b"0"),
    (b"SCGI", b"1"),
    (b"REQUEST_METHOD", b"GET"),
    (b"REQUEST_URI", b"/x?y=1"),
]

# --- valid requests ------------------------------------------------------------


def test_get(split: Callable[[bytes], list[bytes]]) -> None:
    assert parse(request_bytes(), split) == expected(GET_ENV, b"")


def test_post_with_body(split: Callable[[bytes], list[bytes]]) -> None:
    body = b"a=1&b=\x00\xff,:" * 7
    events = parse(request_bytes(body), split)
    assert events[0] == Request(
        environ=[
            (b"CONTENT_LENGTH", b"%d" % len(body)),
            (b"SCGI", b"1"),
            (b"REQUEST_METHOD", b"POST"),
            (b"REQUEST_URI", b"/x?y=1"),
        ]
    )
    assert events[1:] == [Data(data=body), EndOfMessage(), ConnectionClosed()]


def test_environ_types_and_order() -> None:
    extra = [(b"HTTP_B", b"2"), (b"HTTP_A", b"1"), (b"EMPTY", b"")]
    (request, *_), _ = feed([request_bytes(b"", *extra)])
    assert isinstance(request, Request)
    assert request.environ == [*GET_ENV, *extra]
    assert all(type(n) is bytes and type(v) is bytes for n, v in request.environ)
    assert request.get(b"HTTP_A") == b"1"
    assert request.get(b"MISSING") is None
    assert request.get(b"MISSING", b"d") == b"d"


def test_environ_is_bytes_when_split() -> None:
    # Pieces are joined in a bytearray; the environ must still hold bytes.
    (request, *_), _ = feed(bytewise(request_bytes(b"", (b"HTTP_X", b"y"))))
    assert isinstance(request, Request)
    assert all(type(n) is bytes and type(v) is bytes for n, v in request.environ)


def test_duplicates_kept_in_order(split: Callable[[bytes], list[bytes]]) -> None:
    # nginx < 1.23 repeats a header sent twice instead of joining it.
    extra = [(b"HTTP_COOKIE", b"a=1"), (b"HTTP_X", b"1"), (b"HTTP_COOKIE", b"b=2")]
    events = parse(request_bytes(b"", *extra), split)
    assert events[0] == Request(environ=[*GET_ENV, *extra])


def test_scgi_absent_is_tolerated(split: Callable[[bytes], list[bytes]]) -> None:
    # nginx sends no SCGI variable when scgi_params is not included.
    events = parse(request_bytes(b"hi", scgi=False), split)
    assert events[0] == Request(
        environ=[
            (b"CONTENT_LENGTH", b"2"),
            (b"REQUEST_METHOD", b"POST"),
            (b"REQUEST_URI", b"/x?y=1"),
        ]
    )
    assert events[1:] == [Data(data=b"hi"), EndOfMessage(), ConnectionClosed()]


@pytest.mark.parametrize("where", ["second", "last", "twice"])
def test_scgi_anywhere(where: str) -> None:
    environ = [(b"CONTENT_LENGTH", b"0"), (b"A", b"1"), (b"B", b"2")]
    if where == "second":
        environ.insert(1, (b"SCGI", b"1"))
    elif where == "last":
        environ.append((b"SCGI", b"1"))  # lighttpd
    else:
        environ[1:1] = [(b"SCGI", b"1"), (b"X", b"SCGI"), (b"SCGI", b"1")]
    events, _ = feed([netstring_headers(environ)])
    assert events[0] == Request(environ=environ)


def test_names_appearing_as_values_are_values() -> None:
    # "CONTENT_LENGTH" and "SCGI" as *values* are not headers.
    environ = [(b"CONTENT_LENGTH", b"0"), (b"X", b"CONTENT_LENGTH"), (b"Y", b"SCGI")]
    events, _ = feed([netstring_headers(environ)])
    assert events[0] == Request(environ=environ)
    environ = [(b"CONTENT_LENGTH", b"0"), (b"SCGI", b"1"), (b"Z", b"SCGI"), (b"W", b"2")]
    events, _ = feed([netstring_headers(environ)])
    assert events[0] == Request(environ=environ)


@pytest.mark.parametrize(
    "extra",
    [
        [(b"HTTP_CONTENT_LENGTH", b"5")],  # nginx passes it next to CONTENT_LENGTH
        [(b"XSCGI", b"2")],
        [(b"X", b"SCGI"), (b"Y", b"2")],
        [(b"SCGIX", b"2"), (b"X", b"ASCGI")],
        [(b"X", b"CONTENT_LENGTH"), (b"CONTENT_LENGTHX", b"1")],
    ],
)
def test_lookalike_names_and_values(extra: list[tuple[bytes, bytes]]) -> None:
    wire = request_bytes(b"", *extra)
    for split in SPLITS.values():
        assert parse(wire, split)[0] == Request(environ=[*GET_ENV, *extra])


def test_empty_values_and_binary_values() -> None:
    extra = [(b"CONTENT_TYPE", b""), (b"HTTP_X", b"\xff\x01:,"), (b"HTTP_Y", b"")]
    events, _ = feed([request_bytes(b"", *extra)])
    assert events[0] == Request(environ=[*GET_ENV, *extra])


def test_content_length_leading_zeros_are_digits() -> None:
    # Only the netstring length forbids leading zeros; "007" is 7.
    wire = netstring_headers([(b"CONTENT_LENGTH", b"007")]) + b"1234567"
    events, _ = feed([wire])
    assert events[1:] == [Data(data=b"1234567"), EndOfMessage(), ConnectionClosed()]


def test_smallest_request() -> None:
    wire = b"17:CONTENT_LENGTH\x000\x00,"
    assert feed([wire])[0] == expected([(b"CONTENT_LENGTH", b"0")], b"")


# --- EOF, trailing data, framing ---------------------------------------------------


def test_eof_before_any_byte_is_connection_closed() -> None:
    # A health check, or a front-end that connected and gave up (Apache does
    # this for a chunked request it answers 411 itself).
    events, conn = feed([])
    assert events == [ConnectionClosed()]
    assert conn.their_state is CLOSED
    # Asking again is harmless, as in h11.
    assert conn.next_event() == ConnectionClosed()
    assert conn.their_state is CLOSED


def test_framing_never_waits_for_eof(split: Callable[[bytes], list[bytes]]) -> None:
    # Front-ends don't half-close: the body ends at CONTENT_LENGTH.
    body = b"x" * 100
    events, conn = feed(split(request_bytes(body)), eof=False)
    assert [type(e) for e in events] == [Request, Data, EndOfMessage]
    assert events[1] == Data(data=body)
    assert conn.their_state is DONE
    assert conn.next_event() is NEED_DATA
    assert conn.body_remaining == 0


def test_eof_after_body_is_connection_closed(split: Callable[[bytes], list[bytes]]) -> None:
    events, conn = feed(split(request_bytes(b"abc")))
    assert events[-2:] == [EndOfMessage(), ConnectionClosed()]
    assert conn.their_state is CLOSED


def test_trailing_data_is_left_alone(split: Callable[[bytes], list[bytes]]) -> None:
    # SCGI has one request per connection; bytes after the body are not a
    # second request. They stay in trailing_data for whoever cares.
    body = b"body"
    events, conn = feed(split(request_bytes(body) + b"TRAILING,3:abc,"), eof=False)
    assert [type(e) for e in events] == [Request, Data, EndOfMessage]
    assert events[1] == Data(data=body)
    assert conn.trailing_data == (b"TRAILING,3:abc,", False)
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.trailing_data == (b"TRAILING,3:abc,", True)


def test_trailing_data_with_empty_body(split: Callable[[bytes], list[bytes]]) -> None:
    events, conn = feed(split(request_bytes() + b"\x00junk"), eof=True)
    assert events == expected(GET_ENV, b"")
    assert conn.trailing_data == (b"\x00junk", True)


def test_truncated_body(split: Callable[[bytes], list[bytes]]) -> None:
    wire = request_bytes(b"0123456789")[:-3]
    exc = remote_error(wire, split)
    assert "3 bytes of body missing" in str(exc)
    assert exc.error_status_hint == 400


def test_truncated_body_gives_data_first() -> None:
    conn = Connection()
    conn.receive_data(request_bytes(b"0123456789")[:-3])
    assert type(conn.next_event()) is Request
    assert conn.next_event() == Data(data=b"0123456")
    assert conn.body_remaining == 3
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_data_after_eof_is_our_error() -> None:
    conn = Connection()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")


def test_data_events_coalesce_what_is_buffered() -> None:
    conn = Connection()
    conn.receive_data(request_bytes(b"A" * 10)[:-10])
    assert type(conn.next_event()) is Request
    assert conn.next_event() is NEED_DATA
    for piece in (b"AAA", b"AAA", b"AA"):
        conn.receive_data(piece)
    # One event for everything buffered, not one per read.
    assert conn.next_event() == Data(data=b"AAAAAAAA")
    conn.receive_data(b"AA" + b"extra")
    assert conn.next_event() == Data(data=b"AA")
    assert conn.next_event() == EndOfMessage()
    assert conn.trailing_data == (b"extra", False)


def test_body_in_same_read_as_head_is_one_data() -> None:
    body = b"z" * 5000
    events, _ = feed([request_bytes(body)])
    assert events == expected(events[0].environ, body)  # type: ignore[attr-defined]


def test_body_data_is_bytes_not_a_view_of_our_buffer() -> None:
    buf = bytearray(request_bytes(b"hello"))
    conn = Connection()
    conn.receive_data(buf)  # type: ignore[arg-type]
    buf[:] = b"X" * len(buf)  # the caller reuses its buffer
    assert type(conn.next_event()) is Request
    event = conn.next_event()
    assert event == Data(data=b"hello")
    assert type(event.data) is bytes


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (1, "in the netstring length"),  # "7"
        (3, "in the header netstring"),  # "71:"
        (20, "in the header netstring"),  # part of the block
        (-1, "in the header netstring"),  # all but the ','
    ],
)
def test_eof_at_each_stage_of_the_head(cut: int, message: str) -> None:
    wire = request_bytes()
    head = wire[:cut] if cut > 0 else wire[: len(wire) + cut]
    for split in SPLITS.values():
        assert message in str(remote_error(head, split))


def test_need_data_until_complete() -> None:
    conn = Connection()
    wire = request_bytes()
    for byte in bytewise(wire)[:-1]:
        conn.receive_data(byte)
        assert conn.next_event() is NEED_DATA
        assert conn.their_state is RECV_HEADERS
    conn.receive_data(wire[-1:])
    assert type(conn.next_event()) is Request


# --- netstring errors --------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"x3:abc,", "not digits"),
        (b"-5:abcde,", "not digits"),
        (b"+5:abcde,", "not digits"),
        (b" 5:abcde,", "not digits"),
        (b"5 :abcde,", "not digits"),
        (b"1_0:abcdefghij,", "not digits"),
        (b"\xd9\xa5:abcde,", "not digits"),  # Arabic-Indic five: int() takes it, we don't
        (b"05:abcde,", "leading zero"),
        (b"00:,", "leading zero"),
        (b":abc,", "empty"),
        (b"GET / HTTP/1.1\r\n\r\n", "not digits"),
        (b"17:CONTENT_LENGTH\x000\x00;", "not ','"),
        (b"17:CONTENT_LENGTH\x000\x00\x00", "not ','"),
        (b"16:CONTENT_LENGTH\x000\x00,", "not ','"),  # length one short
    ],
)
def test_netstring_errors(wire: bytes, message: str, split: Callable[[bytes], list[bytes]]) -> None:
    exc = remote_error(wire, split)
    assert message in str(exc)
    assert exc.error_status_hint == 400


def test_netstring_error_is_found_without_eof(split: Callable[[bytes], list[bytes]]) -> None:
    # A bad prefix is an error as soon as it is seen, not at EOF.
    remote_error(b"1x", split, eof=False)
    remote_error(b"05", split, eof=False)


@pytest.mark.parametrize(
    "prefix",
    [
        b"123456",  # more digits than 65536 has: can't fit whatever follows
        b"99999",  # already over the limit, ':' or not
        b"65537",
        b"65537:",
        b"100000000000000000000000:",
    ],
)
def test_too_long_header_is_431_from_the_prefix(
    prefix: bytes, split: Callable[[bytes], list[bytes]]
) -> None:
    # No EOF, no block: the prefix alone proves it (don't buffer 1 GB).
    exc = remote_error(prefix, split, eof=False)
    assert exc.error_status_hint == 431


def test_header_size_limit_is_inclusive() -> None:
    block = b"CONTENT_LENGTH\x000\x00" + b"X\x00" + b"y" * 80 + b"\x00"
    size = len(block)
    wire = b"%d:%s," % (size, block)
    events, _ = feed([wire], conn=Connection(max_header_size=size))
    assert type(events[0]) is Request
    exc = remote_error(wire, max_header_size=size - 1)
    assert exc.error_status_hint == 431
    # With a small limit the digits are checked as they come, too.
    exc = remote_error(b"%d" % size, bytewise, eof=False, max_header_size=size - 1)
    assert exc.error_status_hint == 431


def test_default_header_limit() -> None:
    assert DEFAULT_MAX_HEADER_SIZE == 65536
    assert Connection().max_header_size == 65536
    value = b"v" * (65536 - len(b"CONTENT_LENGTH\x000\x00X\x00\x00"))
    wire = netstring_headers([(b"CONTENT_LENGTH", b"0"), (b"X", value)])
    assert wire.startswith(b"65536:")
    assert type(feed([wire])[0][0]) is Request
    wire = netstring_headers([(b"CONTENT_LENGTH", b"0"), (b"X", value + b"v")])
    assert remote_error(wire).error_status_hint == 431


def test_constructor_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        Connection(max_header_size=0)
    with pytest.raises(ValueError):
        Connection(max_body_size=-1)


# --- header block errors ------------------------------------------------------------


def raw_block(block: bytes) -> bytes:
    return b"%d:%s," % (len(block), block)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"", "does not end with NUL"),
        (b"CONTENT_LENGTH\x000", "does not end with NUL"),
        (b"CONTENT_LENGTH\x000\x00SCGI\x00", "has no value"),
        (b"CONTENT_LENGTH\x00", "has no value"),
        (b"\x00", "has no value"),
        (b"CONTENT_LENGTH\x000\x00\x00x\x00", "empty name"),
        (b"CONTENT_LENGTH\x000\x00A\x00\x00\x00\x00", "empty name"),
        (b"\x00\x00", "CONTENT_LENGTH is not the first"),
        (b"SCGI\x001\x00", "CONTENT_LENGTH is not the first"),
        (b"SCGI\x001\x00CONTENT_LENGTH\x000\x00", "CONTENT_LENGTH is not the first"),
        (b"content_length\x000\x00", "CONTENT_LENGTH is not the first"),
        (b"CONTENT_LENGTH\x00\x00", "not a length"),
        (b"CONTENT_LENGTH\x00abc\x00", "not a length"),
        (b"CONTENT_LENGTH\x00+5\x00", "not a length"),
        (b"CONTENT_LENGTH\x00-5\x00", "not a length"),
        (b"CONTENT_LENGTH\x00 5\x00", "not a length"),
        (b"CONTENT_LENGTH\x005 \x00", "not a length"),
        (b"CONTENT_LENGTH\x001_0\x00", "not a length"),
        (b"CONTENT_LENGTH\x000x10\x00", "not a length"),
        (b"CONTENT_LENGTH\x00\xd9\xa5\x00", "not a length"),
        (b"CONTENT_LENGTH\x00" + b"9" * 19 + b"\x00", "not a length"),
        (b"CONTENT_LENGTH\x000\x00CONTENT_LENGTH\x000\x00", "twice"),
        (b"CONTENT_LENGTH\x005\x00X\x00\x00CONTENT_LENGTH\x000\x00", "twice"),
        (b"CONTENT_LENGTH\x000\x00SCGI\x000\x00", "SCGI version"),
        (b"CONTENT_LENGTH\x000\x00SCGI\x002\x00", "SCGI version"),
        (b"CONTENT_LENGTH\x000\x00SCGI\x00\x00", "SCGI version"),
        (b"CONTENT_LENGTH\x000\x00SCGI\x001\x00SCGI\x002\x00", "SCGI version"),
        (b"CONTENT_LENGTH\x000\x00SCGI\x002\x00SCGI\x001\x00", "SCGI version"),
        # "SCGI" as a value right before an SCGI name, and SCGI=SCGI.
        (b"CONTENT_LENGTH\x000\x00X\x00SCGI\x00SCGI\x002\x00", "SCGI version"),
        (b"CONTENT_LENGTH\x000\x00SCGI\x00SCGI\x00A\x00B\x00SCGI\x001\x00", "SCGI version"),
        (b"CONTENT_LENGTH\x000\x00SCGI\x00SCGI\x00SCGI\x001\x00", "SCGI version"),
    ],
)
def test_header_block_errors(
    block: bytes, message: str, split: Callable[[bytes], list[bytes]]
) -> None:
    exc = remote_error(raw_block(block) + b"body!", split)
    assert message in str(exc)
    assert exc.error_status_hint == 400


def test_long_content_length_accepted_up_to_18_digits() -> None:
    conn = Connection()
    conn.receive_data(raw_block(b"CONTENT_LENGTH\x00" + b"9" * 18 + b"\x00"))
    assert type(conn.next_event()) is Request
    assert conn.body_remaining == 10**18 - 1


# --- body size limit ------------------------------------------------------------------


def test_body_over_limit_is_413_before_any_body() -> None:
    head = netstring_headers([(b"CONTENT_LENGTH", b"1001"), (b"SCGI", b"1")])
    conn = Connection(max_body_size=1000)
    conn.receive_data(head)  # not one byte of body sent
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.error_status_hint == 413
    assert conn.their_state is ERROR
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_body_at_limit_is_fine(split: Callable[[bytes], list[bytes]]) -> None:
    body = b"b" * 1000
    events, _ = feed(split(request_bytes(body)), conn=Connection(max_body_size=1000))
    assert events[1] == Data(data=body)
    events, _ = feed(split(request_bytes()), conn=Connection(max_body_size=0))
    assert type(events[1]) is EndOfMessage


def test_default_has_no_body_limit() -> None:
    assert Connection().max_body_size is None
    conn = Connection()
    conn.receive_data(netstring_headers([(b"CONTENT_LENGTH", b"%d" % 10**15)]))
    assert type(conn.next_event()) is Request
    assert conn.body_remaining == 10**15


# --- the whole-read fast path ---------------------------------------------------------
# A head that arrives whole in the first read (a bytes buffer) is proved valid
# by a short path in next_event(); anything it doesn't prove goes to the
# general parser. Fed whole, every test above takes the short path; fed byte by
# byte, the general one. These pin down what the short path must not skip.


def test_fast_path_cached_length_still_checks_the_limit() -> None:
    wire = request_bytes()
    size = int(wire.partition(b":")[0])
    assert type(feed([wire])[0][0]) is Request  # the length is now known
    assert type(feed([wire])[0][0]) is Request  # and taken from the cache
    exc = remote_error(wire, max_header_size=size - 1)
    assert exc.error_status_hint == 431
    events, _ = feed([wire], conn=Connection(max_header_size=size))
    assert type(events[0]) is Request


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (b"SCGI\x002\x00", "SCGI version"),
        (b"\x00ABCDE\x00", "empty name"),
        (b"ABCDEF\x00", "has no value"),
        (b"CONTENT_LENGTH\x001\x00", "twice"),
        (b"X\x00SCGI\x00SCGI\x002\x00", "SCGI version"),
    ],
)
@pytest.mark.parametrize("after", [b"", b"body!"])  # the buffer split whole, or partitioned
def test_fast_path_cached_length_does_not_skip_block_checks(
    bad: bytes, message: str, after: bytes
) -> None:
    # A valid block of the same length first, so that the length is cached.
    good = b"CONTENT_LENGTH\x000\x00" + b"H" * (len(bad) - 3) + b"\x00v\x00"
    bad = b"CONTENT_LENGTH\x000\x00" + bad
    assert len(bad) == len(good)
    for wire in (raw_block(good), raw_block(good) + b"body!"):
        assert type(feed([wire])[0][0]) is Request
    exc = remote_error(raw_block(bad) + after)
    assert message in str(exc)


def test_fast_path_body_ending_like_a_head() -> None:
    # A body that ends in NUL and ',' in the same read as the head: the buffer
    # looks like a bare head, but its length says otherwise.
    body = b"x\x00,"
    events, _ = feed([request_bytes(body)])
    assert events[1:] == [Data(data=body), EndOfMessage(), ConnectionClosed()]


@pytest.mark.parametrize(
    "wire",
    [
        b"17\x00CONTENT_LENGTH\x000\x00,",  # no ':' at all
        b"17CONTENT_LENGTH\x000\x00,",
        b"017:CONTENT_LENGTH\x000\x00,",  # a leading zero
        b"16:CONTENT_LENGTH\x000\x00,",  # one short
        b"18:CONTENT_LENGTH\x000\x00,",  # one long
        b"17:CONTENT_LENGTH\x000\x00\x00,",  # a NUL too many
        b"21:X:CONTENT_LENGTH\x000\x00,",
        b"17:CONTENT_LENGTH\x00a\x00,",
    ],
)
def test_fast_path_bare_head_lookalikes(wire: bytes) -> None:
    feed([b"17:CONTENT_LENGTH\x000\x00,"])  # the good one, cached
    assert remote_error(wire).error_status_hint == 400


def test_fast_path_body_and_trailing_data_in_the_same_read() -> None:
    wire = request_bytes(b"hello") + b"NEXT"
    events, conn = feed([wire])
    assert events[1:] == [Data(data=b"hello"), EndOfMessage(), ConnectionClosed()]
    assert conn.trailing_data == (b"NEXT", True)
    conn = Connection()
    conn.receive_data(wire)
    assert type(conn.next_event()) is Request
    assert conn.body_remaining == 5
    assert conn.trailing_data == (b"helloNEXT", False)


def test_six_digit_length_within_a_larger_limit() -> None:
    # The short path stops at five digits; the general parser takes the rest.
    environ = [(b"CONTENT_LENGTH", b"0"), (b"X", b"v" * 100_000)]
    wire = netstring_headers(environ)
    assert wire.startswith(b"100020:")
    for split in (whole, threes):
        events, _ = feed(split(wire), conn=Connection(max_header_size=200_000))
        assert events == expected(environ, b"")
    assert remote_error(wire).error_status_hint == 431


# --- states --------------------------------------------------------------------------


def test_states_walk_through() -> None:
    conn = Connection()
    assert conn.states == {"their": RECV_HEADERS, "our": SEND_RESPONSE}
    conn.receive_data(request_bytes(b"ab"))
    next_event_checked(conn)
    assert conn.their_state is RECV_BODY
    assert conn.body_remaining == 2
    next_event_checked(conn)
    assert conn.body_remaining == 0
    next_event_checked(conn)
    # Both sides at once from here: mypy would keep conn.their_state narrowed to
    # the RECV_BODY asserted above.
    assert conn.states == {"their": DONE, "our": SEND_RESPONSE}
    conn.receive_data(b"")
    next_event_checked(conn)
    assert conn.states == {"their": CLOSED, "our": SEND_RESPONSE}
    next_event_checked(conn)  # CLOSED -> CLOSED, also in the table
    assert conn.our_state is SEND_RESPONSE


def test_error_state_is_sticky_even_with_good_data_after() -> None:
    conn = Connection()
    conn.receive_data(b"x")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    conn.receive_data(request_bytes())
    for _ in range(3):
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        assert conn.their_state is ERROR


def test_sides_are_independent_after_a_remote_error() -> None:
    # A broken request can still be answered (400/413/431).
    conn = Connection()
    conn.receive_data(b"-1:")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert conn.our_state is SEND_RESPONSE
    head = conn.send(Response(status=info.value.error_status_hint, headers=[]))
    assert head == b"Status: 400 Bad Request\r\n\r\n"
    assert conn.send(EndOfMessage()) == b""
    # Both sides (mypy would keep conn.our_state narrowed to the SEND_RESPONSE above).
    assert conn.states == {"their": ERROR, "our": DONE}


def test_error_classes() -> None:
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    with pytest.raises(TypeError):
        ProtocolError("direct")
    assert RemoteProtocolError("x").error_status_hint == 400
    assert RemoteProtocolError("x", 431).error_status_hint == 431
    assert LocalProtocolError("x").error_status_hint == 400


# --- response writing ---------------------------------------------------------------


def send_all(events: list[Event]) -> tuple[bytes, Connection]:
    conn = Connection()
    out = b""
    for event in events:
        before = conn.our_state
        out += conn.send(event)
        assert OUR_TRANSITIONS[before, type(event).__name__] is conn.our_state
    return out, conn


def test_response_bytes() -> None:
    out, conn = send_all(
        [
            Response(status=200, headers=[(b"Content-Type", b"text/plain"), (b"X-A", b"")]),
            Data(data=b"hello "),
            # Deliberately bytes-likes: sent Data passes them through (docs/protocol.md).
            Data(data=bytearray(b"world")),  # type: ignore[arg-type]
            Data(data=memoryview(b"!")),  # type: ignore[arg-type]
            EndOfMessage(),
        ]
    )
    assert out == (b"Status: 200 OK\r\nContent-Type: text/plain\r\nX-A: \r\n\r\nhello world!")
    assert conn.our_state is DONE


def test_data_passes_through_as_bytes() -> None:
    conn = Connection()
    conn.send(Response(status=204, headers=[]))
    # Deliberately bytes-likes: sent Data passes them through (docs/protocol.md).
    assert type(conn.send(Data(data=bytearray(b"x")))) is bytes  # type: ignore[arg-type]
    assert type(conn.send(Data(data=memoryview(b"x")))) is bytes  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [100, 101, 200, 202, 204, 301, 404, 418, 431, 500, 503])
def test_status_line_reason_from_httpstatus(status: int) -> None:
    out, _ = send_all([Response(status=status, headers=[])])
    phrase = http.HTTPStatus(status).phrase
    assert out == f"Status: {status} {phrase}\r\n\r\n".encode()


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (199, b"Informational"),
        (299, b"Success"),
        (399, b"Redirection"),
        (499, b"Client Error"),
        (599, b"Server Error"),
        (600, b"Unknown"),
        (999, b"Unknown"),
    ],
)
def test_unknown_status_gets_a_class_reason(status: int, reason: bytes) -> None:
    # nginx < 1.25.3 mangles a Status: line with no reason phrase.
    out, _ = send_all([Response(status=status, headers=[])])
    assert out == b"Status: %d %s\r\n\r\n" % (status, reason)


@pytest.mark.parametrize("status", [99, 1000, 0, -200, 200.0, "200", True, None])
def test_invalid_status(status: object) -> None:
    with pytest.raises(LocalProtocolError):
        Response(status=status, headers=[])  # type: ignore[arg-type]


def test_str_headers_are_latin1() -> None:
    response = Response(status=200, headers=[("X-Name", "caf\xe9")])  # type: ignore[list-item]
    assert response.headers == [(b"X-Name", b"caf\xe9")]
    out, _ = send_all([response])
    assert b"X-Name: caf\xe9\r\n" in out


@pytest.mark.parametrize(
    "header",
    [
        ("X-Snow", "\u2603"),
        ("\u2603", "x"),
    ],
)
def test_non_latin1_headers_rejected(header: tuple[str, str]) -> None:
    with pytest.raises(LocalProtocolError, match="latin-1"):
        Response(status=200, headers=[header])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "header",
    [
        (b"X-A", b"a\r\nSet-Cookie: evil=1"),
        (b"X-A", b"a\nb"),
        (b"X-A", b"a\rb"),
        (b"X-A", b"a\x00b"),
        (b"X-A\r\nEvil", b"1"),
        (b"X-A\n", b"1"),
        (b"X-A\x00", b"1"),
        (b"", b"1"),
        (b"X A", b"1"),
        (b"X:A", b"1"),
        (b"X-A:", b"1"),
        (b"(X)", b"1"),
        (b"X\xe9", b"1"),
        (b"X/Y", b"1"),
        ("X-A", "a\r\nb"),
    ],
)
def test_invalid_headers_rejected(header: tuple[bytes, bytes]) -> None:
    with pytest.raises(LocalProtocolError):
        Response(status=200, headers=[header])


@pytest.mark.parametrize(
    "headers",
    [
        [(b"a",)],
        [(b"a", b"b", b"c")],
        [b"ab"],
        [(1, b"x")],
        [(b"x", 1)],
        5,
    ],
)
def test_malformed_header_lists_rejected(headers: object) -> None:
    with pytest.raises(LocalProtocolError):
        Response(status=200, headers=headers)  # type: ignore[arg-type]


def test_all_token_characters_allowed() -> None:
    name = b"!#$%&'*+-.^_`|~09azAZ"
    response = Response(status=200, headers=[(name, b"v\tw x")])
    assert response.headers == [(name, b"v\tw x")]


@pytest.mark.parametrize(
    "events",
    [
        [Data(data=b"x")],
        [EndOfMessage()],
        [Response(status=200, headers=[]), Response(status=200, headers=[])],
        [Response(status=200, headers=[]), EndOfMessage(), Data(data=b"x")],
        [Response(status=200, headers=[]), EndOfMessage(), EndOfMessage()],
        [Request(environ=[])],
        [ConnectionClosed()],
    ],
)
def test_send_in_wrong_state(events: list[Event]) -> None:
    conn = Connection()
    for event in events[:-1]:
        conn.send(event)
    with pytest.raises(LocalProtocolError):
        conn.send(events[-1])
    assert conn.our_state is ERROR
    with pytest.raises(LocalProtocolError):
        conn.send(Response(status=200, headers=[]))


def test_send_failed() -> None:
    conn = Connection()
    conn.send(Response(status=200, headers=[]))
    assert conn.our_state is SEND_BODY
    conn.send_failed()
    # Both sides (mypy would keep conn.our_state narrowed to the SEND_BODY above).
    assert conn.states == {"their": RECV_HEADERS, "our": ERROR}
    with pytest.raises(LocalProtocolError):
        conn.send(Data(data=b"x"))


def test_event_validation() -> None:
    with pytest.raises(LocalProtocolError):
        Data(data="text")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        Request(environ=[(b"", b"x")])
    with pytest.raises(LocalProtocolError):
        Request(environ=[(b"A\x00", b"x")])
    with pytest.raises(LocalProtocolError):
        Request(environ=[("A", b"x")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        Data(b"positional")  # type: ignore[call-arg]
    # Frozen. (Python 3.11's frozen+slots dataclasses raise TypeError rather
    # than FrozenInstanceError, cpython gh-90562; either way nothing changes.)
    event = Data(data=b"x")
    with pytest.raises((AttributeError, TypeError)):
        event.data = b"y"  # type: ignore[misc]
    assert event.data == b"x"


def test_repr_of_need_data_and_states() -> None:
    assert repr(NEED_DATA) == "NEED_DATA"
    assert repr(ERROR) == "ERROR"


# --- transition tables -------------------------------------------------------------------


def test_every_table_entry_is_reachable() -> None:
    # The tables hold no dead rules: each one is made by some input.
    seen: set[tuple[object, str]] = set()
    for wire in (request_bytes(), request_bytes(b"abc"), b""):
        conn = Connection()
        conn.receive_data(wire)
        conn.receive_data(b"")
        for _ in range(6):
            before = conn.their_state
            event = next_event_checked(conn)
            seen.add((before, type(event).__name__))
    assert set(THEIR_TRANSITIONS) <= seen
    conn = Connection()
    ours = set()
    for event in (Response(status=200, headers=[]), Data(data=b"x"), EndOfMessage()):
        ours.add((conn.our_state, type(event).__name__))
        conn.send(event)
    assert set(OUR_TRANSITIONS) == ours


# --- real captures ------------------------------------------------------------------------

CAPTURE_FILES = sorted(CAPTURES.glob("*.scgi")) if CAPTURES.is_dir() else []


def _capture_ids() -> list[str]:
    return [p.stem for p in CAPTURE_FILES]


def parse_capture(wire: bytes, split: Callable[[bytes], list[bytes]]) -> tuple[Request, bytes]:
    events, conn = feed(split(wire))
    assert isinstance(events[0], Request)
    assert [type(e) for e in events if type(e) is not Data] == [
        Request,
        EndOfMessage,
        ConnectionClosed,
    ]
    body = b"".join(e.data for e in events if type(e) is Data)
    assert conn.trailing_data == (b"", True)
    return events[0], body


def test_captures_are_present() -> None:
    # tests/data/captures/README.md says how they were made.
    assert CAPTURE_FILES, "tests/data/captures/*.scgi missing"
    assert (CAPTURES / "README.md").exists()


@pytest.mark.parametrize("path", CAPTURE_FILES, ids=_capture_ids())
def test_capture_parses(path: Path, split: Callable[[bytes], list[bytes]]) -> None:
    wire = path.read_bytes()
    request, body = parse_capture(wire, split)
    env = dict(request.environ)
    # Every front-end puts CONTENT_LENGTH first and frames the body by it.
    assert request.environ[0][0] == b"CONTENT_LENGTH"
    assert len(body) == int(env[b"CONTENT_LENGTH"])
    assert env.get(b"SCGI", b"1") == b"1"
    # With trailing bytes: the same request, the rest left alone.
    events, conn = feed(split(wire + b"trailing"), eof=False)
    assert events[0] == request
    assert type(events[-1]) is EndOfMessage
    assert conn.trailing_data == (b"trailing", False)


def _capture(name: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    path = CAPTURES / f"{name}.scgi"
    if not path.exists():
        pytest.fail(f"capture {path} missing")
    request, body = parse_capture(path.read_bytes(), whole)
    return request.environ, body


def names(environ: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name for name, _ in environ]


def test_capture_facts_nginx_stock() -> None:
    environ, body = _capture("nginx-stock-get-query")
    env = dict(environ)
    assert b"SCRIPT_NAME" not in env and b"PATH_INFO" not in env
    assert env[b"SCGI"] == b"1"
    assert 1 < names(environ).index(b"SCGI") < len(environ) - 1  # in the middle
    assert env[b"REQUEST_URI"] == b"/echo/path?a=1&b=two%20words&a=3&empty=&plus=x+y"
    assert env[b"CONTENT_TYPE"] == b""  # empty values are kept
    assert body == b""


def test_capture_facts_nginx_dup_headers_repeated() -> None:
    # nginx 1.22 repeats duplicate headers instead of joining them.
    environ, _ = _capture("nginx-stock-dup-headers")
    cookies = [v for n, v in environ if n == b"HTTP_COOKIE"]
    assert cookies == [b"a=1", b"b=2"]
    assert [v for n, v in environ if n == b"HTTP_X_DUP"] == [b"first", b"second"]


def test_capture_facts_nginx_without_scgi_params() -> None:
    environ, body = _capture("nginx-noparams-chunked")
    env = dict(environ)
    assert b"SCGI" not in env and b"REQUEST_METHOD" not in env
    assert env[b"HTTP_TRANSFER_ENCODING"] == b"chunked"
    assert body == b"hello chunked world"
    assert env[b"CONTENT_LENGTH"] == b"19"  # de-chunked length


def test_capture_facts_apache() -> None:
    environ, _ = _capture("apache-root-get-query")
    env = dict(environ)
    assert names(environ)[1] == b"SCGI"  # second
    assert env[b"SCRIPT_NAME"] == b"/echo/path"  # the whole decoded path
    assert b"PATH_INFO" not in env
    environ, _ = _capture("apache-prefix-dup-headers")
    assert [v for n, v in environ if n == b"HTTP_COOKIE"] == [b"a=1, b=2"]


def test_capture_facts_lighttpd() -> None:
    environ, body = _capture("lighttpd-root-post-form")
    env = dict(environ)
    assert names(environ)[-1] == b"SCGI"  # last
    assert env[b"SCRIPT_NAME"] == b"" and env[b"PATH_INFO"] == b"/form"
    assert len(body) == 46 == int(env[b"CONTENT_LENGTH"])
    environ, _ = _capture("lighttpd-prefix-get-query")
    env = dict(environ)
    assert env[b"SCRIPT_NAME"] == b"/app"


# --- properties (hypothesis) ----------------------------------------------------------------

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def split_at(wire: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(wire) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(wire)]:
        pieces.append(wire[last:point])
        last = point
    return [p for p in pieces if p]


VALID_EVENT_TYPES = (Request, Data, EndOfMessage, ConnectionClosed)


def _run_any(wire: bytes, cuts: list[int], eof: bool) -> None:
    try:
        events, _ = feed(split_at(wire, cuts), eof=eof)
    except RemoteProtocolError as exc:
        assert exc.error_status_hint in (400, 413, 431)
        return
    assert all(isinstance(e, VALID_EVENT_TYPES) for e in events)


@FAST
@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=8), st.booleans())
def test_any_bytes_parse_or_remote_error(wire: bytes, cuts: list[int], eof: bool) -> None:
    _run_any(wire, cuts, eof)


# Near-valid inputs reach far deeper than random bytes: a valid request with
# a few bytes changed, dropped or inserted.
@FAST
@given(
    st.data(),
    st.lists(st.integers(0, 400), max_size=6),
    st.booleans(),
)
def test_mutated_requests_parse_or_remote_error(
    data: st.DataObject, cuts: list[int], eof: bool
) -> None:
    wire = bytearray(request_bytes(b"body", (b"HTTP_X", b"1")))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(wire)))
        byte = data.draw(st.sampled_from(b"0123456789:,\x00-+ xS"))
        action = data.draw(st.sampled_from(["set", "insert", "delete"]))
        if action == "insert" or pos == len(wire):
            wire.insert(pos, byte)
        elif action == "set":
            wire[pos] = byte
        else:
            del wire[pos]
    _run_any(bytes(wire), cuts, eof)


names_st = st.binary(min_size=1, max_size=12).filter(
    lambda b: b"\x00" not in b and b not in (b"CONTENT_LENGTH", b"SCGI")
)
values_st = st.binary(max_size=20).filter(lambda b: b"\x00" not in b)


@FAST
@given(
    st.lists(st.tuples(names_st, values_st), max_size=8),
    st.binary(max_size=200),
    st.lists(st.integers(0, 600), max_size=8),
    st.booleans(),
)
def test_valid_requests_round_trip(
    extra: list[tuple[bytes, bytes]], body: bytes, cuts: list[int], scgi: bool
) -> None:
    environ = [(b"CONTENT_LENGTH", b"%d" % len(body))]
    if scgi:
        environ.append((b"SCGI", b"1"))
    environ += extra
    wire = netstring_headers(environ) + body
    events, conn = feed(split_at(wire, cuts))
    assert events == expected(environ, body)
    assert conn.their_state is CLOSED


def _outcome(chunks: list[bytes], **conn_args: int | None) -> object:
    try:
        events, conn = feed(chunks, conn=Connection(**conn_args))  # type: ignore[arg-type]
    except RemoteProtocolError as exc:
        return ("error", exc.error_status_hint)
    return events, conn.trailing_data


tricky_names_st = st.sampled_from(
    [b"CONTENT_LENGTH", b"SCGI", b"", b"X", b"HTTP_COOKIE", b"SCGIX", b"1", b"0"]
)
tricky_values_st = st.sampled_from([b"0", b"1", b"2", b"", b"SCGI", b"CONTENT_LENGTH", b"12"])


@FAST
@given(
    st.lists(st.tuples(tricky_names_st | names_st, tricky_values_st | values_st), max_size=6),
    st.sampled_from([b"0", b"3", b"03", b"", b"x", b"99"]),
    st.binary(max_size=6),
    st.sampled_from([None, 0, 2, 40]),
    st.sampled_from([DEFAULT_MAX_HEADER_SIZE, 16, 40]),
)
def test_fast_path_agrees_with_the_general_parser(
    extra: list[tuple[bytes, bytes]],
    length: bytes,
    after: bytes,
    max_body_size: int | None,
    max_header_size: int,
) -> None:
    # Whole (the short path, falling back on anything it can't prove) and
    # byte by byte (the general parser only) must give the same events, or
    # the same error status.
    wire = netstring_headers([(b"CONTENT_LENGTH", length), *extra]) + after
    limits = {"max_body_size": max_body_size, "max_header_size": max_header_size}
    assert _outcome([wire], **limits) == _outcome(bytewise(wire), **limits)


@FAST
@given(
    st.lists(st.tuples(tricky_names_st | names_st, tricky_values_st | values_st), max_size=6),
    st.binary(max_size=6),
    st.integers(0, 10_000),
    st.sampled_from(["flip", "insert", "delete"]),
    st.integers(0, 255),
)
def test_fast_path_agrees_with_the_general_parser_on_damaged_framing(
    extra: list[tuple[bytes, bytes]], after: bytes, where: int, how: str, byte: int
) -> None:
    # One byte flipped, inserted or removed anywhere (the length's digits, the ':', a
    # NUL, the ','...): whole and byte by byte still agree, event for event or status.
    wire = netstring_headers([(b"CONTENT_LENGTH", b"0"), *extra]) + after
    i = where % len(wire)
    if how == "flip":
        wire = wire[:i] + bytes([wire[i] ^ (byte or 1)]) + wire[i + 1 :]
    elif how == "insert":
        wire = wire[:i] + bytes([byte]) + wire[i:]
    else:
        wire = wire[:i] + wire[i + 1 :]
    assert _outcome([wire]) == _outcome(bytewise(wire))


token_st = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCXYZ", min_size=1)
value_st = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=255, blacklist_characters="\r\n\x00"),
    max_size=30,
)


def parse_cgi_head(data: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
    """A tiny CGI response-head parser: (status, reason, headers, rest)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep
    first, *lines = head.split(b"\r\n")
    assert first.startswith(b"Status: ")
    code, _, reason = first[len(b"Status: ") :].partition(b" ")
    headers = []
    for line in lines:
        name, colon, value = line.partition(b": ")
        assert colon
        headers.append((name, value))
    return int(code), reason, headers, rest


@FAST
@given(
    st.integers(100, 999),
    st.lists(st.tuples(token_st, value_st), max_size=8),
    st.binary(max_size=50),
)
def test_writer_round_trip(status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    # A value may start or end with spaces; the parser splits on the first ": ".
    response = Response(status=status, headers=headers)  # type: ignore[arg-type]
    out, _ = send_all([response, Data(data=body), EndOfMessage()])
    code, reason, parsed, rest = parse_cgi_head(out)
    assert code == status
    assert reason  # never empty: nginx < 1.25.3 mangles a bare code
    assert parsed == [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
    assert rest == body


def test_protocol_is_a_deprecated_alias_of_scgi() -> None:
    # trioscgi.protocol was the SCGI core's name: users' imports of it keep working and
    # give the very same objects.
    import trioscgi
    import trioscgi.protocol
    import trioscgi.scgi

    assert trioscgi.protocol.__all__ == trioscgi.scgi.__all__
    for name in trioscgi.scgi.__all__:
        assert getattr(trioscgi.protocol, name) is getattr(trioscgi.scgi, name), name
    assert trioscgi.protocol is trioscgi.__dict__["protocol"]
    assert "scgi" in trioscgi.__all__ and "protocol" in trioscgi.__all__
