"""Tests for trioscgi.fastcgi: the sans-I/O FastCGI core.

Every request is fed whole, byte by byte, in 3-byte pieces and with
trailing data; every state change the parser makes is checked against
``REQUEST_TRANSITIONS`` in ``_state.py``. Records are built here by hand,
from the spec's layout, not with the core's own encoders.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trioscgi import fastcgi as f
from trioscgi.fastcgi import (
    ABORTED,
    CLOSED,
    DONE,
    ERROR,
    NEED_DATA,
    OPEN,
    RECV_PARAMS,
    RECV_STDIN,
    REJECTED,
    Abort,
    Connection,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    LocalProtocolError,
    ProtocolError,
    Rejected,
    RemoteProtocolError,
    Request,
)
from trioscgi.fastcgi._state import HALF_RECEIVED, KNOWN, REQUEST_TRANSITIONS, State

CAPTURES = Path(__file__).parent / "data" / "captures"

# --- building records by hand (spec section 3.3) -------------------------------


def rec(
    rtype: int,
    rid: int,
    content: bytes = b"",
    *,
    pad: int | None = None,
    reserved: int = 0,
    fill: int = 0xAA,
) -> bytes:
    """One record: version 1, type, id, content length, padding, reserved, content, padding.

    Padding is ``fill`` bytes (not zeros by default: a receiver must skip it unread).
    """
    if pad is None:
        pad = -len(content) & 7
    header = bytes([1, rtype, rid >> 8, rid & 0xFF, len(content) >> 8, len(content) & 0xFF])
    return header + bytes([pad, reserved]) + content + bytes([fill]) * pad


def sent(rtype: int, rid: int, content: bytes = b"") -> bytes:
    """A record as the core writes it: padded with zeros to a multiple of 8."""
    return rec(rtype, rid, content, fill=0)


def length(n: int) -> bytes:
    return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)


def nv(pairs: Iterable[tuple[bytes, bytes]], long: bool = False) -> bytes:
    """Name-value pairs (spec 3.4); ``long`` uses 4-byte lengths even for short ones."""
    out = b""
    for name, value in pairs:
        if long:
            out += struct.pack(">II", len(name) | 0x80000000, len(value) | 0x80000000)
        else:
            out += length(len(name)) + length(len(value))
        out += name + value
    return out


def begin(rid: int = 1, role: int = f.RESPONDER, keep: bool = False) -> bytes:
    return rec(f.BEGIN_REQUEST, rid, struct.pack(">HB5x", role, int(keep)))


def stream(rtype: int, rid: int, data: bytes, size: int = 65535) -> bytes:
    """``data`` as a stream: records of at most ``size`` bytes, then the empty one."""
    records = b"".join(rec(rtype, rid, data[i : i + size]) for i in range(0, len(data), size))
    return records + rec(rtype, rid)


NGINX_PARAMS = [
    (b"QUERY_STRING", b"a=1&b=two%20words"),
    (b"REQUEST_METHOD", b"GET"),
    (b"CONTENT_TYPE", b""),
    (b"CONTENT_LENGTH", b""),
    (b"SCRIPT_NAME", b"/echo/path"),
    (b"REQUEST_URI", b"/echo/path?a=1&b=two%20words"),
    (b"DOCUMENT_URI", b"/echo/path"),
    (b"DOCUMENT_ROOT", b"/usr/share/nginx/html"),
    (b"SERVER_PROTOCOL", b"HTTP/1.1"),
    (b"REQUEST_SCHEME", b"http"),
    (b"GATEWAY_INTERFACE", b"CGI/1.1"),
    (b"SERVER_SOFTWARE", b"nginx/1.22.1"),
    (b"REMOTE_ADDR", b"127.0.0.1"),
    (b"REMOTE_PORT", b"59386"),
    (b"SERVER_ADDR", b"127.0.0.1"),
    (b"SERVER_PORT", b"8080"),
    (b"SERVER_NAME", b""),
    (b"HTTP_HOST", b"localhost"),
    (b"HTTP_ACCEPT", b"*/*"),
]


def request_wire(
    rid: int = 1,
    params: list[tuple[bytes, bytes]] | None = None,
    body: bytes | None = None,
    *,
    keep: bool = False,
    params_size: int = 65535,
    stdin_size: int = 65535,
) -> bytes:
    """A whole RESPONDER request as nginx lays it out: BEGIN, PARAMS, empty PARAMS, STDIN."""
    if params is None:
        params = NGINX_PARAMS
    if body is None:
        body = b""
    return (
        begin(rid, keep=keep)
        + stream(f.PARAMS, rid, nv(params), params_size)
        + stream(f.STDIN, rid, body, stdin_size)
    )


def parse_records(wire: bytes) -> list[tuple[int, int, int, bytes, int]]:
    """(type, id, content length, content, padding) of each record in ``wire``."""
    out = []
    pos = 0
    while pos < len(wire):
        version, rtype, rid, clen, plen = struct.unpack_from(">BBHHBx", wire, pos)
        assert version == 1
        content = wire[pos + 8 : pos + 8 + clen]
        assert len(content) == clen
        assert len(wire) >= pos + 8 + clen + plen
        out.append((rtype, rid, clen, content, plen))
        pos += 8 + clen + plen
    return out


def decode_nv(data: bytes) -> list[tuple[bytes, bytes]]:
    """Name-value pairs, decoded independently of the core."""
    out = []
    pos = 0
    while pos < len(data):
        lengths = []
        for _ in range(2):
            if data[pos] >> 7:
                lengths.append(struct.unpack_from(">I", data, pos)[0] & 0x7FFFFFFF)
                pos += 4
            else:
                lengths.append(data[pos])
                pos += 1
        name = data[pos : pos + lengths[0]]
        value = data[pos + lengths[0] : pos + lengths[0] + lengths[1]]
        pos += lengths[0] + lengths[1]
        out.append((name, value))
    return out


# --- feeding ---------------------------------------------------------------------


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


def _allowed(before: State | None, after: State | None, event: Event | None) -> bool:
    """Whether one next_event() call may move an id from ``before`` to ``after``."""
    # Records that make no event: BEGIN_REQUEST opens an id, ABORT_REQUEST in
    # its PARAMS closes it; both may happen in one call.
    silent = {
        (before, before),
        (None, RECV_PARAMS),
        (RECV_PARAMS, None),
        (None, None),
    }
    if event is None:
        return (before, after) in silent
    name = type(event).__name__
    starts = [before] + ([RECV_PARAMS] if before is None else [])
    return any(
        (start, name) in REQUEST_TRANSITIONS and REQUEST_TRANSITIONS[start, name] is after
        for start in starts
    )


def next_event_checked(conn: Connection) -> Event | object:
    """``conn.next_event()``, holding every state change to REQUEST_TRANSITIONS."""
    before = conn.request_states
    try:
        event = conn.next_event()
    except RemoteProtocolError:
        assert conn.state is ERROR
        raise
    after = conn.request_states
    event_id = getattr(event, "request_id", None)
    for rid in before.keys() | after.keys():
        ev = event if rid == event_id and isinstance(event, Event) else None
        assert _allowed(before.get(rid), after.get(rid), ev), (rid, before, after, event)
    if event is NEED_DATA:
        assert conn.state is OPEN
    return event


def end_request_checked(conn: Connection, rid: int) -> None:
    """``conn.end_request(rid)``, held to REQUEST_TRANSITIONS like next_event()."""
    assert REQUEST_TRANSITIONS[conn.request_states[rid], "end_request"] is None
    conn.end_request(rid)
    assert rid not in conn.request_states


def drain(conn: Connection, out: list[Event], on_end: Callable[[int], None] | None = None) -> None:
    """Take events until NEED_DATA or ConnectionClosed, merging adjacent Data of one id."""
    for _ in range(100_000):  # bounded: one event per call at most
        event = next_event_checked(conn)
        if event is NEED_DATA:
            return
        assert isinstance(event, Event)
        if (
            type(event) is Data
            and out
            and type(out[-1]) is Data
            and out[-1].request_id == event.request_id
        ):
            out[-1] = Data(request_id=event.request_id, data=out[-1].data + event.data)
        else:
            out.append(event)
        if type(event) is EndOfMessage and on_end is not None:
            on_end(event.request_id)
        if type(event) is ConnectionClosed:
            return
    raise AssertionError("next_event never returned NEED_DATA")


def feed(
    chunks: Iterable[bytes],
    *,
    eof: bool = False,
    conn: Connection | None = None,
    end_requests: bool = False,
) -> list[Event]:
    """Every event the chunks make, the way a server loop takes them.

    ``end_requests`` ends each request as soon as its EndOfMessage arrives,
    as a keep-conn server would.
    """
    if conn is None:
        conn = Connection()
    out: list[Event] = []
    on_end = (lambda rid: end_request_checked(conn, rid)) if end_requests else None
    for chunk in chunks:
        conn.receive_data(chunk)
        drain(conn, out, on_end)
    if eof:
        conn.receive_data(b"")
        drain(conn, out, on_end)
    return out


def GET(
    rid: int = 1, params: list[tuple[bytes, bytes]] | None = None, keep: bool = False
) -> Request:
    return Request(
        request_id=rid, params=NGINX_PARAMS if params is None else params, keep_conn=keep
    )


# --- requests ---------------------------------------------------------------------


def test_nginx_get(split: Callable[[bytes], list[bytes]]) -> None:
    conn = Connection()
    events = feed(split(request_wire()), eof=True, conn=conn)
    assert events == [GET(), EndOfMessage(request_id=1), ConnectionClosed()]
    assert conn.state is CLOSED
    # Like h11, asking again gives the same answer.
    assert conn.next_event() == ConnectionClosed()
    assert conn.data_to_send() == b""


def test_nginx_post(split: Callable[[bytes], list[bytes]]) -> None:
    body = bytes(range(256)) * 300  # 76800 bytes: two STDIN records of nginx's 32 KiB, and a rest
    params = [(b"REQUEST_METHOD", b"POST"), (b"CONTENT_LENGTH", b"%d" % len(body))]
    wire = request_wire(params=params, body=body, stdin_size=32768)
    events = feed(split(wire), eof=True)
    assert events == [
        GET(params=params),
        Data(request_id=1, data=body),
        EndOfMessage(request_id=1),
        ConnectionClosed(),
    ]


def test_data_events_are_bytes_of_one_record_at_most() -> None:
    body = b"x" * 100 + b"y" * 50
    wire = request_wire(body=body, stdin_size=100)
    conn = Connection()
    conn.receive_data(wire)
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
    assert events[1:] == [
        Data(request_id=1, data=b"x" * 100),
        Data(request_id=1, data=b"y" * 50),
        EndOfMessage(request_id=1),
    ]
    assert all(type(e.data) is bytes for e in events if type(e) is Data)


def test_stdin_record_is_handed_over_as_it_arrives() -> None:
    # A 65535-byte record in 1000-byte reads: the content comes as it is
    # read, not once the whole record is buffered.
    body = bytes(range(251)) * 261  # 65511 bytes, padding 1
    wire = request_wire(body=body)
    head_len = len(request_wire(body=b"")) - 8  # without the empty STDIN record
    conn = Connection()
    conn.receive_data(wire[:head_len])
    assert conn.next_event() == GET()
    assert conn.next_event() is NEED_DATA
    got = []
    rest = wire[head_len:]
    for i in range(0, len(rest), 1000):
        conn.receive_data(rest[i : i + 1000])
        while (event := conn.next_event()) is not NEED_DATA:
            got.append(event)
        # Never more than a header's worth of bytes kept back.
        assert len(conn.trailing_data[0]) < 8
    data = [e for e in got if type(e) is Data]
    assert len(data) > 60
    assert b"".join(e.data for e in data) == body
    assert got[-1] == EndOfMessage(request_id=1)


def test_trailing_data_waits(split: Callable[[bytes], list[bytes]]) -> None:
    # A whole request, then the first bytes of the next record.
    conn = Connection()
    events = feed(split(request_wire() + b"\x01\x01\x00"), conn=conn)
    assert events == [GET(), EndOfMessage(request_id=1)]
    assert conn.trailing_data == (b"\x01\x01\x00", False)
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a record"):
        conn.next_event()
    assert conn.state is ERROR
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_keep_conn_requests_back_to_back(split: Callable[[bytes], list[bytes]]) -> None:
    # nginx with fastcgi_keep_conn: id 1 again once END_REQUEST went out.
    first = request_wire(keep=True)
    second = request_wire(params=[(b"REQUEST_METHOD", b"HEAD")], body=b"ab", keep=True)
    conn = Connection()
    events = feed(split(first + second), conn=conn, end_requests=True)
    assert events == [
        GET(keep=True),
        EndOfMessage(request_id=1),
        GET(params=[(b"REQUEST_METHOD", b"HEAD")], keep=True),
        Data(request_id=1, data=b"ab"),
        EndOfMessage(request_id=1),
    ]
    assert conn.active_requests == 0
    assert not conn.close_requested


def test_begin_for_an_active_id_is_an_error() -> None:
    conn = Connection()
    with pytest.raises(RemoteProtocolError, match="already active"):
        feed([request_wire() + begin()], conn=conn)
    assert conn.state is ERROR


def test_params_spanning_records_at_every_offset() -> None:
    params = [(b"A" * 5, b"v" * 200), (b"N" * 130, b""), (b"SHORT", b"x")]
    data = nv(params)
    for cut in range(1, len(data)):
        wire = (
            begin()
            + rec(f.PARAMS, 1, data[:cut])
            + rec(f.PARAMS, 1, data[cut:])
            + rec(f.PARAMS, 1)
            + rec(f.STDIN, 1)
        )
        assert feed([wire]) == [GET(params=params), EndOfMessage(request_id=1)], cut


def test_params_one_byte_records(split: Callable[[bytes], list[bytes]]) -> None:
    data = nv(NGINX_PARAMS)
    wire = (
        begin()
        + b"".join(rec(f.PARAMS, 1, data[i : i + 1]) for i in range(len(data)))
        + rec(f.PARAMS, 1)
        + rec(f.STDIN, 1)
    )
    assert feed(split(wire)) == [GET(), EndOfMessage(request_id=1)]


def test_four_byte_lengths(split: Callable[[bytes], list[bytes]]) -> None:
    # A value over 64 KiB spans two records; 4-byte lengths for short
    # strings are legal too.
    params = [
        (b"HTTP_COOKIE", b"c" * 70000),
        (b"N" * 128, b"v" * 127),
        (b"X", b"y" * 128),
    ]
    wire = begin() + stream(f.PARAMS, 1, nv(params) + nv([(b"LONG", b"form")], long=True))
    wire += rec(f.STDIN, 1)
    conn = Connection(max_params_size=100_000)
    events = feed(split(wire), conn=conn)
    assert events == [GET(params=[*params, (b"LONG", b"form")]), EndOfMessage(request_id=1)]


def test_small_lengths_in_four_bytes_mislead_no_later_pair() -> None:
    # The core keeps a decoder per pair of one-byte lengths, keyed by the
    # pair's first two bytes. A 4-byte length holding a small number starts
    # with the same kind of bytes (80 00 ...) as a long one: decoding the
    # first pair below must leave nothing that reads the second one wrong.
    params = [(b"NAME5", b"abc"), (b"N" * 300, b"xyz"), (b"NAME5", b"abc")]
    content = b""
    for name, value in params:
        content += struct.pack(">I", len(name) | 0x80000000) + bytes([len(value)]) + name + value
    wire = begin() + rec(f.PARAMS, 1, content) + rec(f.PARAMS, 1) + rec(f.STDIN, 1)
    for _ in range(2):
        assert feed([wire]) == [GET(params=params), EndOfMessage(request_id=1)]


def test_pairs_of_every_short_length() -> None:
    # More pairs of lengths than the core keeps decoders for (4096): those
    # past the bound are read as well, and the decoders stay bounded.
    from trioscgi.fastcgi import _connection

    params = [(b"n" * nl, b"v" * vl) for nl in range(0, 128, 2) for vl in range(0, 128)]
    assert len(params) > _connection._PAIR_DECODERS_MAX
    for chunk in range(0, len(params), 40):
        part = params[chunk : chunk + 40]
        assert feed([request_wire(params=part)]) == [GET(params=part), EndOfMessage(request_id=1)]
    assert len(_connection._PAIR_DECODERS) <= _connection._PAIR_DECODERS_MAX


def test_empty_params_stream_and_duplicates() -> None:
    wire = begin() + rec(f.PARAMS, 1) + rec(f.STDIN, 1)
    assert feed([wire]) == [GET(params=[]), EndOfMessage(request_id=1)]
    dup = [(b"HTTP_COOKIE", b"a=1"), (b"HTTP_COOKIE", b"b=2"), (b"", b"empty name")]
    events = feed([request_wire(params=dup)])
    assert events[0] == GET(params=dup)
    assert isinstance(events[0], Request)
    assert events[0].get(b"HTTP_COOKIE") == b"a=1"
    assert events[0].get(b"MISSING") is None
    assert events[0].get(b"MISSING", b"d") == b"d"


def test_padding_and_reserved_are_ignored(split: Callable[[bytes], list[bytes]]) -> None:
    wire = (
        rec(f.BEGIN_REQUEST, 1, struct.pack(">HB5x", 1, 0), pad=255, reserved=7)
        + rec(f.PARAMS, 1, nv(NGINX_PARAMS), pad=3, reserved=1)
        + rec(f.PARAMS, 1, pad=9)
        + rec(f.STDIN, 1, b"body", pad=0)
        + rec(f.STDIN, 1, pad=200)
    )
    assert feed(split(wire), eof=True) == [
        GET(),
        Data(request_id=1, data=b"body"),
        EndOfMessage(request_id=1),
        ConnectionClosed(),
    ]


def test_interleaved_requests(split: Callable[[bytes], list[bytes]]) -> None:
    # HAProxy with mpxs-conns: two requests' records interleaved.
    p1 = nv([(b"REQUEST_URI", b"/one"), (b"X", b"1")])
    p2 = nv([(b"REQUEST_URI", b"/two")])
    wire = (
        begin(1, keep=True)
        + begin(2, keep=True)
        + rec(f.PARAMS, 2, p2[:4])
        + rec(f.PARAMS, 1, p1)
        + rec(f.PARAMS, 2, p2[4:])
        + rec(f.PARAMS, 1)
        + rec(f.STDIN, 1, b"a1")
        + rec(f.PARAMS, 2)
        + rec(f.STDIN, 2, b"b1")
        + rec(f.STDIN, 1, b"a2")
        + rec(f.STDIN, 2)
        + rec(f.STDIN, 1)
    )
    conn = Connection(multiplex=True, max_requests=2)
    events = feed(split(wire), conn=conn)
    assert events == [
        GET(1, [(b"REQUEST_URI", b"/one"), (b"X", b"1")], keep=True),
        Data(request_id=1, data=b"a1"),
        GET(2, [(b"REQUEST_URI", b"/two")], keep=True),
        Data(request_id=2, data=b"b1"),
        Data(request_id=1, data=b"a2"),
        EndOfMessage(request_id=2),
        EndOfMessage(request_id=1),
    ]
    assert conn.request_states == {1: DONE, 2: DONE}
    assert conn.active_requests == 2
    conn.end_request(2)
    assert conn.request_states == {1: DONE}


def test_records_for_inactive_ids_are_ignored(split: Callable[[bytes], list[bytes]]) -> None:
    # The spec: "While a request ID R is inactive, the application ignores
    # records with requestId == R, except for FCGI_BEGIN_REQUEST".
    noise = (
        rec(f.PARAMS, 7, nv([(b"A", b"B")]))
        + rec(f.STDIN, 7, b"data")
        + rec(f.STDIN, 7)
        + rec(f.ABORT_REQUEST, 7)
        + rec(f.PARAMS, 9, b"\xff\xff garbage that is never decoded")
    )
    conn = Connection()
    events = feed(split(noise + request_wire() + noise), conn=conn, eof=True)
    assert events == [GET(), EndOfMessage(request_id=1), ConnectionClosed()]
    assert conn.data_to_send() == b""


def test_data_stream_and_unknown_request_types_are_ignored() -> None:
    # DATA is the FILTER role's stream; types the spec doesn't define may
    # come in a later version; GET_VALUES belongs on id 0.
    wire = (
        begin()
        + rec(f.DATA, 1, b"filter data")
        + rec(f.DATA, 1)
        + rec(42, 1, b"future")
        + rec(255, 1)
        + rec(f.GET_VALUES, 1, nv([(b"FCGI_MAX_REQS", b"")]))
        + stream(f.PARAMS, 1, nv(NGINX_PARAMS))
        + rec(f.STDIN, 1)
    )
    conn = Connection()
    assert feed([wire], conn=conn) == [GET(), EndOfMessage(request_id=1)]
    assert conn.data_to_send() == b""


@pytest.mark.parametrize(
    "rtype", [f.END_REQUEST, f.STDOUT, f.STDERR, f.GET_VALUES_RESULT, f.UNKNOWN_TYPE]
)
@pytest.mark.parametrize("rid", [0, 1, 3])
def test_application_only_types_are_errors(rtype: int, rid: int) -> None:
    # A web server never sends these. Answering an UNKNOWN_TYPE with an
    # UNKNOWN_TYPE could loop forever with a peer built the same way.
    conn = Connection()
    conn.receive_data(request_wire(1) + rec(rtype, rid, b"\x00" * 8))
    assert conn.next_event() == GET()
    assert conn.next_event() == EndOfMessage(request_id=1)
    with pytest.raises(RemoteProtocolError, match="from applications"):
        conn.next_event()
    assert conn.data_to_send() == b""


# --- what the core answers by itself ---------------------------------------------------


def result(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return sent(f.GET_VALUES_RESULT, 0, nv(pairs))


def get_values(*names: bytes) -> bytes:
    return rec(f.GET_VALUES, 0, nv([(name, b"") for name in names]))


def test_get_values_answers_only_what_is_asked(split: Callable[[bytes], list[bytes]]) -> None:
    conn = Connection(max_requests=8, multiplex=True, max_conns=77)
    events = feed(split(get_values(b"FCGI_MAX_REQS")), conn=conn)
    assert events == []
    assert conn.data_to_send() == result([(b"FCGI_MAX_REQS", b"8")])
    assert conn.data_to_send() == b""


def test_get_values_all_names_unknown_and_duplicates() -> None:
    conn = Connection(max_requests=8, multiplex=True, max_conns=77)
    wire = get_values(
        b"FCGI_MPXS_CONNS", b"X_UNKNOWN", b"FCGI_MAX_CONNS", b"FCGI_MAX_REQS", b"FCGI_MAX_CONNS"
    )
    assert feed([wire], conn=conn) == []
    assert conn.data_to_send() == result(
        [(b"FCGI_MPXS_CONNS", b"1"), (b"FCGI_MAX_CONNS", b"77"), (b"FCGI_MAX_REQS", b"8")]
    )
    # Nothing known: an empty result. Values in the query are ignored.
    feed([get_values(b"NOPE"), rec(f.GET_VALUES, 0, nv([(b"FCGI_MAX_REQS", b"junk")]))], conn=conn)
    assert conn.data_to_send() == result([]) + result([(b"FCGI_MAX_REQS", b"8")])


def test_get_values_without_multiplexing_reports_one_request() -> None:
    # FCGI_MPXS_CONNS "0" means one request at a time, whatever max_requests says.
    conn = Connection(max_requests=8)
    feed([get_values(b"FCGI_MAX_REQS", b"FCGI_MPXS_CONNS", b"FCGI_MAX_CONNS")], conn=conn)
    assert conn.data_to_send() == result(
        [(b"FCGI_MAX_REQS", b"1"), (b"FCGI_MPXS_CONNS", b"0"), (b"FCGI_MAX_CONNS", b"1024")]
    )


def test_get_values_between_records_of_a_request() -> None:
    # HAProxy asks at connection start; the spec allows it "at any time".
    wire = request_wire()
    cut = len(begin())
    conn = Connection()
    events = feed([wire[:cut] + get_values(b"FCGI_MAX_REQS")[:5]], conn=conn)
    assert events == []
    assert conn.data_to_send() == b""
    events = feed([get_values(b"FCGI_MAX_REQS")[5:] + wire[cut:]], conn=conn)
    assert events == [GET(), EndOfMessage(request_id=1)]
    assert conn.data_to_send() == result([(b"FCGI_MAX_REQS", b"1")])


def test_malformed_get_values_is_an_error() -> None:
    conn = Connection()
    conn.receive_data(rec(f.GET_VALUES, 0, b"\x05\x00FCGI"))
    with pytest.raises(RemoteProtocolError, match="past the end"):
        conn.next_event()


@pytest.mark.parametrize(
    "rtype", [12, 200, 255, f.BEGIN_REQUEST, f.ABORT_REQUEST, f.PARAMS, f.STDIN, f.DATA]
)
def test_unknown_management_type(rtype: int) -> None:
    # "When an application receives a management record whose type T it
    # does not understand, the application responds with
    # {FCGI_UNKNOWN_TYPE, 0, {T}}."
    conn = Connection()
    assert (
        feed([rec(rtype, 0, b"whatever" if rtype != f.BEGIN_REQUEST else bytes(8))], conn=conn)
        == []
    )
    answer = conn.data_to_send()
    assert answer == b"\x01\x0b\x00\x00\x00\x08\x00\x00" + bytes([rtype]) + bytes(7)
    # The connection goes on.
    assert feed([request_wire()], conn=conn) == [GET(), EndOfMessage(request_id=1)]


def end_request_bytes(rid: int, app_status: int, protocol_status: int) -> bytes:
    # {FCGI_END_REQUEST, rid, {appStatus B3..B0, protocolStatus, reserved[3]}}
    return sent(f.END_REQUEST, rid, struct.pack(">IB3x", app_status, protocol_status))


@pytest.mark.parametrize("role", [f.AUTHORIZER, f.FILTER, 0, 4, 0x0101, 0xFFFF])
@pytest.mark.parametrize("keep", [False, True])
def test_unknown_roles_are_refused(role: int, keep: bool) -> None:
    wire = begin(3, role=role, keep=keep) + stream(f.PARAMS, 3, nv(NGINX_PARAMS))
    wire += stream(f.STDIN, 3, b"ignored") + stream(f.DATA, 3, b"ignored")
    conn = Connection()
    assert feed([wire], conn=conn) == []
    assert conn.data_to_send() == end_request_bytes(3, 0, f.UNKNOWN_ROLE)
    assert (conn.refused, conn.last_refusal) == (1, f.UNKNOWN_ROLE)
    assert conn.active_requests == 0
    # Without FCGI_KEEP_CONN the spec has the application close after it.
    assert conn.close_requested is not keep
    assert feed([request_wire(3)], conn=conn) == [GET(3), EndOfMessage(request_id=3)]


def test_cant_mpx_conn_without_multiplexing(split: Callable[[bytes], list[bytes]]) -> None:
    wire = begin(1, keep=True) + begin(2, keep=True) + stream(f.PARAMS, 2, nv(NGINX_PARAMS))
    wire += stream(f.STDIN, 2, b"x") + stream(f.PARAMS, 1, nv(NGINX_PARAMS))
    conn = Connection(max_requests=5)  # multiplex=False: one at a time
    events = feed(split(wire), conn=conn)
    assert events == [GET(1, keep=True)]
    assert conn.data_to_send() == end_request_bytes(2, 0, f.CANT_MPX_CONN)
    assert (conn.refused, conn.last_refusal) == (1, f.CANT_MPX_CONN)
    assert conn.request_states == {1: RECV_STDIN}
    assert not conn.close_requested


def test_overloaded_over_max_requests() -> None:
    conn = Connection(max_requests=2, multiplex=True)
    assert (conn.refused, conn.last_refusal) == (0, None)
    feed([begin(1, keep=True), begin(2, keep=True), begin(3, keep=False)], conn=conn)
    assert conn.data_to_send() == end_request_bytes(3, 0, f.OVERLOADED)
    assert (conn.refused, conn.last_refusal) == (1, f.OVERLOADED)
    assert conn.active_requests == 2
    assert conn.close_requested
    # A slot frees up, and the id is served.
    feed([stream(f.PARAMS, 1, b"") + rec(f.STDIN, 1)], conn=conn)
    conn.end_request(1)
    assert feed([request_wire(3)], conn=conn) == [GET(3), EndOfMessage(request_id=3)]


def test_three_thousand_ids_keep_bounded_state() -> None:
    # A peer opening 3,000 ids: the core keeps max_requests of them, answers
    # the rest at once and forgets them.
    conn = Connection(max_requests=10, multiplex=True)
    sent = b""
    for start in range(1, 3001, 500):
        batch = b"".join(begin(rid, keep=True) for rid in range(start, start + 500))
        assert feed([batch], conn=conn) == []
        sent += conn.data_to_send()
    assert conn.active_requests == 10
    answers = parse_records(sent)
    assert len(answers) == 2990
    assert {(r[0], r[3][4]) for r in answers} == {(f.END_REQUEST, f.OVERLOADED)}
    assert sorted(r[1] for r in answers) == list(range(11, 3001))


def test_pending_answers_are_bounded() -> None:
    # A peer that floods refused BEGINs (or GET_VALUES) while the server
    # does not send data_to_send(): the connection is closed, not grown.
    conn = Connection(max_pending_output=1000)
    flood = get_values(b"FCGI_MAX_CONNS") * 40
    with pytest.raises(RemoteProtocolError, match="waiting to be sent"):
        feed([flood], conn=conn)
    assert conn.state is ERROR
    # The same flood, sent on between batches, is fine.
    conn = Connection(max_pending_output=1000)
    for chunk in threes(flood):
        feed([chunk], conn=conn)
        assert len(conn.data_to_send()) <= 1000


# --- abort and rejection ---------------------------------------------------------------


def test_abort_a_running_request(split: Callable[[bytes], list[bytes]]) -> None:
    head = begin(1, keep=True) + stream(f.PARAMS, 1, nv(NGINX_PARAMS)) + rec(f.STDIN, 1, b"part")
    wire = head + rec(f.ABORT_REQUEST, 1) + rec(f.ABORT_REQUEST, 1) + rec(f.STDIN, 1, b"late")
    wire += rec(f.STDIN, 1)
    conn = Connection()
    events = feed(split(wire), conn=conn)
    assert events == [GET(keep=True), Data(request_id=1, data=b"part"), Abort(request_id=1)]
    assert conn.request_states == {1: ABORTED}
    assert conn.data_to_send() == b""
    # The server answers "as soon as possible" (spec 5.4).
    assert conn.end_request(1) == rec(f.STDOUT, 1) + end_request_bytes(1, 0, f.REQUEST_COMPLETE)
    assert conn.active_requests == 0


def test_abort_after_the_body_and_after_rejection() -> None:
    conn = Connection(max_params_size=10)
    feed([request_wire(1, params=[])], conn=conn)
    assert feed([rec(f.ABORT_REQUEST, 1)], conn=conn) == [Abort(request_id=1)]
    conn.end_request(1)
    events = feed([begin(1) + rec(f.PARAMS, 1, b"x" * 11) + rec(f.ABORT_REQUEST, 1)], conn=conn)
    assert [type(e) for e in events] == [Rejected, Abort]


def test_abort_before_the_server_knows_the_request(split: Callable[[bytes], list[bytes]]) -> None:
    # Aborted in its PARAMS stream: the core ends it itself.
    wire = begin(4) + rec(f.PARAMS, 4, nv(NGINX_PARAMS)) + rec(f.ABORT_REQUEST, 4)
    wire += rec(f.PARAMS, 4) + rec(f.STDIN, 4)
    conn = Connection()
    assert feed(split(wire), conn=conn, eof=True) == [ConnectionClosed()]
    assert conn.data_to_send() == rec(f.STDOUT, 4) + end_request_bytes(4, 0, f.REQUEST_COMPLETE)
    assert conn.close_requested


def test_params_over_the_limit_single_record(split: Callable[[bytes], list[bytes]]) -> None:
    params = nv(NGINX_PARAMS)
    conn = Connection(max_params_size=len(params) - 1)
    wire = begin(1, keep=True) + stream(f.PARAMS, 1, params) + stream(f.STDIN, 1, b"dropped")
    events = feed(split(wire), conn=conn)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, Rejected)
    assert (event.request_id, event.status_hint, event.keep_conn) == (1, 431, True)
    assert str(len(params) - 1) in event.reason
    assert conn.request_states == {1: REJECTED}
    # The server answers; the id is free again.
    assert conn.send_stdout(1, b"Status: 431\r\n\r\n")
    conn.end_request(1)
    wire = request_wire(1, params=[])
    assert feed([wire], conn=conn) == [GET(params=[]), EndOfMessage(request_id=1)]


def test_params_over_the_limit_many_records() -> None:
    params = nv(NGINX_PARAMS)
    conn = Connection(max_params_size=100)
    wire = begin(1) + stream(f.PARAMS, 1, params, size=30) + stream(f.STDIN, 1, b"dropped")
    [event] = feed([wire], conn=conn)
    assert isinstance(event, Rejected)
    assert (event.request_id, event.status_hint, event.keep_conn) == (1, 431, False)
    # Exactly the limit is fine: the bytes and f.PAIR_COST a pair.
    limit = len(params) + len(NGINX_PARAMS) * f.PAIR_COST
    conn = Connection(max_params_size=limit)
    assert feed([request_wire()], conn=conn)[0] == GET()
    conn = Connection(max_params_size=limit)
    assert feed([request_wire(params_size=30)], conn=conn)[0] == GET()


@pytest.mark.parametrize("params_size", [65535, 30])
def test_each_pair_counts_against_the_params_limit(params_size: int) -> None:
    # Parsed, a tiny pair is ~25 times its bytes: 64 KiB of one-letter headers held
    # ~86 MiB on a connection with 64 such requests. Each pair counts PAIR_COST more,
    # in one PARAMS record or many; one byte over the limit so counted is a 431.
    params = nv(NGINX_PARAMS)
    limit = len(params) + len(NGINX_PARAMS) * f.PAIR_COST
    for size, ok in ((limit, True), (limit - 1, False)):
        conn = Connection(max_params_size=size)
        [event, *_] = feed([request_wire(params_size=params_size)], conn=conn)
        if ok:
            assert event == GET()
        else:
            assert isinstance(event, Rejected) and event.status_hint == 431
            assert f"each name-value pair counting {f.PAIR_COST} more" in event.reason
    tiny = [(b"HTTP_" + bytes([65 + i % 26]), b"1") for i in range(7000)]  # ~63 KiB
    conn = Connection(max_params_size=65536)
    [event, *_] = feed([request_wire(params=tiny, params_size=params_size)], conn=conn)
    assert isinstance(event, Rejected) and event.status_hint == 431


def test_content_length_over_the_body_limit() -> None:
    params = [(b"CONTENT_LENGTH", b"1001"), (b"REQUEST_METHOD", b"POST")]
    conn = Connection(max_body_size=1000)
    events = feed([request_wire(params=params, body=b"x" * 1001)], conn=conn)
    assert len(events) == 1
    assert isinstance(events[0], Rejected)
    assert events[0].status_hint == 413
    assert "CONTENT_LENGTH" in events[0].reason
    # At the limit, empty, absent or not a number: the body is counted as it comes.
    for value in (b"1000", b"", b"12x", b"-5"):
        conn = Connection(max_body_size=1000)
        wire = request_wire(params=[(b"CONTENT_LENGTH", value)], body=b"x" * 1000)
        assert feed([wire], conn=conn)[-1] == EndOfMessage(request_id=1), value
    conn = Connection(max_body_size=1000)
    wire = request_wire(params=[(b"CONTENT_LENGTH", b"9" * 40)])
    assert type(feed([wire], conn=conn)[0]) is Rejected


@pytest.mark.parametrize("record_size", [1, 7, 300, 65535])
def test_stdin_over_the_body_limit(split: Callable[[bytes], list[bytes]], record_size: int) -> None:
    # No CONTENT_LENGTH (nginx fastcgi_request_buffering off, chunked): the
    # STDIN bytes themselves are counted.
    body = bytes(range(256)) * 4
    wire = request_wire(params=[], body=body, stdin_size=record_size, keep=True)
    conn = Connection(max_body_size=1000)
    events = feed(split(wire), conn=conn)
    assert type(events[0]) is Request
    rejected = events[-1]
    assert isinstance(rejected, Rejected)
    assert (rejected.status_hint, rejected.keep_conn) == (413, True)
    received = b"".join(e.data for e in events if type(e) is Data)
    assert len(received) <= 1000
    assert body.startswith(received)
    assert conn.request_states == {1: REJECTED}
    # The rest of the stream was dropped; the server ends the request.
    conn.end_request(1)
    assert feed([request_wire(1)], conn=conn) == [GET(), EndOfMessage(request_id=1)]


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"G",
        b"GET / HTTP/1.1\r\n",
        b"\x00\x01\x00\x01\x00\x08\x00\x00",
        b"\x02\x01\x00\x01\x00\x08\x00\x00" + bytes(8),
        b"17:CONTENT_LENGTH\x000\x00,",
    ],
)
def test_wrong_version_fails_at_once(garbage: bytes) -> None:
    conn = Connection()
    conn.receive_data(garbage)
    with pytest.raises(RemoteProtocolError, match="version") as info:
        conn.next_event()
    assert info.value.error_status_hint == 400
    assert conn.state is ERROR
    with pytest.raises(RemoteProtocolError, match="after a protocol error"):
        conn.next_event()


def test_wrong_version_after_a_request(split: Callable[[bytes], list[bytes]]) -> None:
    with pytest.raises(RemoteProtocolError, match="version"):
        feed(split(request_wire(keep=True) + b"\x00" + bytes(7)), end_requests=True)


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (rec(f.BEGIN_REQUEST, 1, struct.pack(">HB4x", 1, 0)), "not 8"),
        (rec(f.BEGIN_REQUEST, 1, struct.pack(">HB6x", 1, 0)), "not 8"),
        (begin() + rec(f.STDIN, 1, b"early"), "before the end of its PARAMS"),
        (begin() + rec(f.STDIN, 1), "before the end of its PARAMS"),
        (
            begin() + rec(f.PARAMS, 1) + rec(f.PARAMS, 1, b"\x01\x01ab"),
            "after the end of its PARAMS",
        ),
        (begin() + rec(f.PARAMS, 1) + rec(f.STDIN, 1) + rec(f.PARAMS, 1), "after the end"),
        (begin() + rec(f.PARAMS, 1) + rec(f.STDIN, 1) + rec(f.STDIN, 1, b"x"), "after the end"),
        (begin() + rec(f.PARAMS, 1, b"\x05\x00abc") + rec(f.PARAMS, 1), "past the end"),
        (begin() + rec(f.PARAMS, 1, b"\x05") + rec(f.PARAMS, 1), "past the end"),
        (begin() + rec(f.PARAMS, 1, b"\x80\x00\x00") + rec(f.PARAMS, 1), "past the end"),
        (begin() + rec(f.PARAMS, 1, b"\x01\x80\x00\x00\x01") + rec(f.PARAMS, 1), "past the end"),
        (begin() + rec(f.PARAMS, 1, b"\x01\x00ab") + rec(f.PARAMS, 1), "past the end"),
    ],
)
def test_protocol_errors(split: Callable[[bytes], list[bytes]], wire: bytes, match: str) -> None:
    conn = Connection()
    with pytest.raises(RemoteProtocolError, match=match):
        feed(split(wire), conn=conn)
    assert conn.state is ERROR
    # Bytes after an error are dropped, and the answer stays the same.
    conn.receive_data(request_wire())
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_malformed_params_split_over_records() -> None:
    # The slow path (several records) checks the lengths as the fast one does.
    wire = begin() + rec(f.PARAMS, 1, b"\x03\x02ab") + rec(f.PARAMS, 1, b"c") + rec(f.PARAMS, 1)
    with pytest.raises(RemoteProtocolError, match="past the end"):
        feed([wire])


# --- EOF --------------------------------------------------------------------------------


def test_eof_on_a_fresh_connection() -> None:
    # A health check: connect, close.
    assert feed([], eof=True) == [ConnectionClosed()]


def test_eof_while_the_server_answers_is_a_close() -> None:
    # nginx closes the upstream connection when its client goes away.
    conn = Connection()
    assert feed([request_wire()], conn=conn, eof=True) == [
        GET(),
        EndOfMessage(request_id=1),
        ConnectionClosed(),
    ]
    assert conn.active_requests == 1
    # The server may still end it (the bytes go nowhere).
    conn.end_request(1)


@pytest.mark.parametrize(
    ("cut", "match"),
    [
        (3, "middle of a record"),  # in the BEGIN header
        (16, "half-received"),  # after BEGIN: PARAMS still to come
        (20, "middle of a record"),  # in the PARAMS header
        (30, "middle of a record"),  # in the PARAMS content
        (-24, "half-received"),  # STDIN still to come
        (-20, "middle of a record"),  # in the STDIN record's header
        (-16, "middle of a STDIN record"),  # its header, none of its content
        (-9, "middle of a STDIN record"),  # in its content
        (-8, "half-received"),  # the empty STDIN record still to come
    ],
)
def test_eof_in_the_middle(split: Callable[[bytes], list[bytes]], cut: int, match: str) -> None:
    wire = request_wire(body=b"12345678")  # ... STDIN(8 bytes), empty STDIN
    conn = Connection()
    with pytest.raises(RemoteProtocolError, match=match):
        feed(split(wire[:cut]), conn=conn, eof=True)
    assert conn.state is ERROR


def test_eof_after_a_rejected_request_is_a_close() -> None:
    conn = Connection(max_params_size=5)
    events = feed([begin() + rec(f.PARAMS, 1, b"x" * 8)], conn=conn, eof=True)
    assert [type(e) for e in events] == [Rejected, ConnectionClosed]


def test_data_after_eof_is_a_local_error() -> None:
    conn = Connection()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError, match="after EOF"):
        conn.receive_data(b"\x01")


# --- sending --------------------------------------------------------------------------


def started(rid: int = 1) -> Connection:
    conn = Connection()
    feed([request_wire(rid)], conn=conn)
    return conn


def test_send_stdout_exact_bytes() -> None:
    conn = started(258)
    out = conn.send_stdout(258, b"Status: 200 OK\r\n\r\nhi")
    # {FCGI_STDOUT, 258, "Status..."}: 20 bytes of content, 4 of padding.
    assert out == b"\x01\x06\x01\x02\x00\x14\x04\x00Status: 200 OK\r\n\r\nhi\x00\x00\x00\x00"
    assert conn.send_stdout(258, b"12345678") == b"\x01\x06\x01\x02\x00\x08\x00\x0012345678"
    assert conn.send_stdout(258, b"") == b""


@pytest.mark.parametrize("size", [1, 7, 8, 65534, 65535, 65536, 65535 * 3 + 17, 300_000])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_send_stdout_splits_and_pads(size: int, kind: Callable[[bytes], object]) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    conn = started()
    records = parse_records(conn.send_stdout(1, kind(data)))  # type: ignore[arg-type]
    assert b"".join(r[3] for r in records) == data
    assert len(records) == -(-size // 65535)
    for rtype, rid, clen, _, plen in records:
        assert (rtype, rid) == (f.STDOUT, 1)
        assert 0 < clen <= 65535
        assert (clen + plen) % 8 == 0
        assert plen < 8


def test_send_stdout_takes_a_memoryview_of_other_items() -> None:
    conn = started()
    view = memoryview(bytes(range(16))).cast("I")
    assert parse_records(conn.send_stdout(1, view))[0][3] == bytes(range(16))
    # Not contiguous: copied.
    assert parse_records(conn.send_stdout(1, memoryview(b"abcdef")[::2]))[0][3] == b"ace"
    with pytest.raises(LocalProtocolError, match="bytes-like"):
        conn.send_stdout(1, "text")  # type: ignore[arg-type]


def test_end_request_exact_bytes() -> None:
    conn = started(1)
    # The empty STDOUT record that ends the stream, then
    # {FCGI_END_REQUEST, 1, {appStatus, protocolStatus, reserved[3]}}.
    assert conn.end_request(1) == (
        b"\x01\x06\x00\x01\x00\x00\x00\x00"
        b"\x01\x03\x00\x01\x00\x08\x00\x00"
        b"\x00\x00\x00\x00\x00\x00\x00\x00"
    )
    conn = started(0x1234)
    assert conn.end_request(0x1234, 0x01020304, f.OVERLOADED) == (
        b"\x01\x06\x12\x34\x00\x00\x00\x00"
        b"\x01\x03\x12\x34\x00\x08\x00\x00"
        b"\x01\x02\x03\x04\x02\x00\x00\x00"
    )


def test_end_request_frees_the_id() -> None:
    conn = started()
    conn.end_request(1)
    assert conn.active_requests == 0
    with pytest.raises(LocalProtocolError, match="not active"):
        conn.end_request(1)
    with pytest.raises(LocalProtocolError, match="not active"):
        conn.send_stdout(1, b"x")
    # Records still coming for it are ignored.
    assert feed([rec(f.STDIN, 1, b"x"), rec(f.ABORT_REQUEST, 1)], conn=conn) == []


def test_end_request_mid_body_drops_the_rest() -> None:
    # The server answers before the body ends (a 413 of its own, say): the
    # rest of the body, even of a STDIN record half-read, is dropped.
    conn = Connection()
    wire = request_wire(body=b"a" * 5000)
    cut = len(request_wire(body=b"")) - 8 + 8 + 100
    events = feed([wire[:cut]], conn=conn)
    assert events == [GET(), Data(request_id=1, data=b"a" * 100)]
    conn.end_request(1)
    assert feed([wire[cut:]], conn=conn, eof=True) == [ConnectionClosed()]


def test_stderr_stream_is_ended_by_end_request() -> None:
    conn = started()
    assert conn.send_stderr(1, b"") == b""
    assert conn.send_stderr(1, b"oops") == sent(f.STDERR, 1, b"oops")
    assert conn.end_request(1, 1) == rec(f.STDERR, 1) + rec(f.STDOUT, 1) + end_request_bytes(
        1, 1, 0
    )


@pytest.mark.parametrize(
    ("app_status", "protocol_status"),
    [(-1, 0), (2**32, 0), (0, 256), (0, -1), (1.5, 0), (0, "0")],
)
def test_end_request_checks_its_fields(app_status: object, protocol_status: object) -> None:
    conn = started()
    with pytest.raises(LocalProtocolError, match="must fit"):
        conn.end_request(1, app_status, protocol_status)  # type: ignore[arg-type]
    assert conn.active_requests == 1


def test_sending_for_an_id_the_server_was_not_told_about() -> None:
    conn = Connection()
    feed([begin(5) + rec(f.PARAMS, 5, b"\x01\x01ab")], conn=conn)
    assert conn.request_states == {5: RECV_PARAMS}
    for send in (conn.send_stdout, conn.send_stderr):
        with pytest.raises(LocalProtocolError, match="not active"):
            send(5, b"x")
    with pytest.raises(LocalProtocolError, match="not active"):
        conn.end_request(5)
    with pytest.raises(LocalProtocolError, match="not active"):
        conn.end_request(6)


# --- the API itself -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_params_size": 0},
        {"max_body_size": -1},
        {"max_requests": 0},
        {"max_requests": 65536},
        {"max_conns": 0},
        {"max_pending_output": 0},
    ],
)
def test_constructor_checks_its_limits(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        Connection(**kwargs)


def test_events_check_their_fields() -> None:
    with pytest.raises(LocalProtocolError, match="request_id"):
        Request(request_id=0, params=[], keep_conn=False)
    with pytest.raises(LocalProtocolError, match="request_id"):
        Data(request_id=65536, data=b"")
    with pytest.raises(LocalProtocolError, match="request_id"):
        EndOfMessage(request_id=True)
    with pytest.raises(LocalProtocolError, match="params"):
        Request(request_id=1, params=[(b"a", "b")], keep_conn=False)  # type: ignore[list-item]
    with pytest.raises(LocalProtocolError, match="keep_conn"):
        Request(request_id=1, params=[], keep_conn=1)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="bytes"):
        Data(request_id=1, data=bytearray(b"x"))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="status_hint"):
        Rejected(request_id=1, status_hint=200, reason="x")
    with pytest.raises(LocalProtocolError, match="reason"):
        Rejected(request_id=1, status_hint=413, reason=b"x")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="request_id"):
        Abort(request_id=-1)
    with pytest.raises(TypeError, match="directly"):
        ProtocolError("x")
    event = Data(request_id=1, data=b"x")
    with pytest.raises(AttributeError):
        event.data = b"y"  # type: ignore[misc]


def test_state_tables_agree() -> None:
    request_states = {RECV_PARAMS, RECV_STDIN, DONE, REJECTED, ABORTED}
    assert request_states == HALF_RECEIVED | KNOWN
    assert {RECV_STDIN} == HALF_RECEIVED & KNOWN
    for (before, _), after in REQUEST_TRANSITIONS.items():
        assert before is None or before in request_states
        assert after is None or after in request_states
    assert repr(RECV_PARAMS) == "RECV_PARAMS"
    assert repr(NEED_DATA) == "NEED_DATA"


def test_the_parser_sets_states_from_the_table() -> None:
    # One home per rule: every state the core gives a request is read from
    # REQUEST_TRANSITIONS (the ON_* names of _state.py), never spelled out in
    # the parser, so that the table can't say one thing and the parser another.
    import ast

    import trioscgi.fastcgi._connection as module
    import trioscgi.fastcgi._state as states

    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    targets = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and target.attr == "state":
                    assert isinstance(node.value, ast.Name), ast.unparse(node)
                    targets.append(node.value.id)
    assert len(targets) >= 6
    for name in targets:
        assert name.startswith("ON_"), name
        after = getattr(states, name)
        assert after in REQUEST_TRANSITIONS.values(), name


def test_exports() -> None:
    import trioscgi

    assert trioscgi.fastcgi is f
    assert "fastcgi" in trioscgi.__all__
    assert f.FCGI_LISTENSOCK_FILENO == 0
    assert (f.REQUEST_COMPLETE, f.CANT_MPX_CONN, f.OVERLOADED, f.UNKNOWN_ROLE) == (0, 1, 2, 3)
    assert (f.BEGIN_REQUEST, f.PARAMS, f.STDIN, f.STDOUT, f.UNKNOWN_TYPE) == (1, 4, 5, 6, 11)
    for name in f.__all__:
        assert hasattr(f, name), name


# --- real front-ends' captures ----------------------------------------------------------


def capture_expectations(wire: bytes) -> tuple[list[Event], bytes]:
    """What the core should make of a capture: decoded here, record by record."""
    params: dict[int, bytes] = {}
    keep: dict[int, bool] = {}
    events: list[Event] = []
    answers = b""
    for rtype, rid, _, content, _ in parse_records(wire):
        if rtype == f.BEGIN_REQUEST:
            keep[rid] = bool(content[2] & 1)
            params[rid] = b""
        elif rtype == f.PARAMS and content:
            params[rid] += content
        elif rtype == f.PARAMS:
            events.append(
                Request(request_id=rid, params=decode_nv(params[rid]), keep_conn=keep[rid])
            )
        elif rtype == f.STDIN and content:
            if events and type(events[-1]) is Data and events[-1].request_id == rid:
                events[-1] = Data(request_id=rid, data=events[-1].data + content)
            else:
                events.append(Data(request_id=rid, data=content))
        elif rtype == f.STDIN:
            events.append(EndOfMessage(request_id=rid))
        elif rtype == f.GET_VALUES:
            asked = [name for name, _ in decode_nv(content)]
            values = {b"FCGI_MAX_CONNS": b"1024", b"FCGI_MAX_REQS": b"1", b"FCGI_MPXS_CONNS": b"0"}
            answers += result([(name, values[name]) for name in asked if name in values])
    return events, answers


CAPTURE_FILES = sorted(CAPTURES.glob("*.fcgi"))


@pytest.mark.parametrize("path", CAPTURE_FILES, ids=[p.name for p in CAPTURE_FILES])
def test_captures(path: Path, split: Callable[[bytes], list[bytes]]) -> None:
    # tests/data/captures/*.fcgi: the exact bytes nginx, Apache (mod_proxy_fcgi
    # and mod_fcgid), lighttpd, HAProxy and cgi-fcgi sent.
    wire = path.read_bytes()
    expected, answers = capture_expectations(wire)
    conn = Connection()
    events = feed(split(wire), conn=conn, eof=True, end_requests=True)
    assert events == [*expected, ConnectionClosed()]
    assert conn.data_to_send() == answers


# --- properties (hypothesis) ------------------------------------------------------------

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Material for hostile input: whole requests and single records, valid ones
# so that random input gets past the version byte often enough to reach
# every path of the parser; then mutated (below).
SEEDS = [
    request_wire(1, NGINX_PARAMS[:4], b"body", keep=True),
    request_wire(2, [(b"N" * 130, b"v")], b"x" * 40, stdin_size=16),
    request_wire(3, [(b"CONTENT_LENGTH", b"999")], b"", params_size=5),
    begin(1),
    begin(2, keep=True),
    begin(1, role=f.FILTER),
    rec(f.PARAMS, 1, nv(NGINX_PARAMS[:3])),
    rec(f.PARAMS, 1),
    rec(f.PARAMS, 2, b"\x81\x00\x00"),
    rec(f.STDIN, 1, b"body"),
    rec(f.STDIN, 1),
    rec(f.STDIN, 2),
    rec(f.ABORT_REQUEST, 1),
    rec(f.ABORT_REQUEST, 2),
    get_values(b"FCGI_MAX_REQS"),
    rec(f.GET_VALUES, 0, b"\x0f"),
    rec(77, 0),
    rec(f.DATA, 1, b"d"),
]


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    """Seeds, then a few bytes changed, cut out or put in."""
    pieces = draw(st.lists(st.sampled_from(SEEDS), max_size=8))
    wire = bytearray(b"".join(pieces))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))):
        if not wire:
            break
        at = draw(st.integers(0, len(wire) - 1))
        change = draw(st.sampled_from(["set", "cut", "insert"]))
        if change == "set":
            wire[at] = draw(st.integers(0, 255))
        elif change == "cut":
            del wire[at : at + draw(st.integers(1, 16))]
        else:
            wire[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(wire)


def chunked(wire: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(wire) + 1) for c in cuts})
    edges = [0, *points, len(wire)]
    return [wire[a:b] for a, b in itertools.pairwise(edges) if b > a]


def events_or_error(chunks: list[bytes], conn: Connection) -> list[Event] | str:
    try:
        return feed(chunks, conn=conn, eof=True, end_requests=True)
    except RemoteProtocolError as exc:
        assert conn.state is ERROR
        assert exc.error_status_hint == 400
        return "error"


@FAST
@given(
    st.one_of(hostile_bytes(), hostile_bytes(), st.binary(max_size=200)),
    st.lists(st.integers(0, 2000), max_size=8),
    st.booleans(),
    st.integers(1, 600),
    st.integers(16, 600),
)
def test_any_bytes_give_events_or_a_remote_error(
    wire: bytes, cuts: list[int], multiplex: bool, limit: int, pending: int
) -> None:
    conn = Connection(
        multiplex=multiplex,
        max_requests=3,
        max_params_size=limit,
        max_body_size=limit,
        max_pending_output=pending,
    )
    result = events_or_error(chunked(wire, cuts), conn)
    # Whatever happened, the same bytes in one piece do the same.
    again = events_or_error(
        [wire] if wire else [],
        Connection(
            multiplex=multiplex,
            max_requests=3,
            max_params_size=limit,
            max_body_size=limit,
            max_pending_output=pending,
        ),
    )
    assert result == again


# Lengths on both sides of 128, where the 4-byte form starts.
request_strategy = st.tuples(
    st.lists(st.tuples(st.binary(max_size=130), st.binary(max_size=140)), max_size=4),  # params
    st.binary(max_size=300),  # body
    st.integers(1, 65535),  # PARAMS record size
    st.integers(1, 400),  # STDIN record size
    st.integers(1, 3),  # request id
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(request_strategy, min_size=1, max_size=3), st.lists(st.integers(0, 5000), max_size=10)
)
def test_valid_streams_give_the_same_events_however_split(
    requests: list[tuple[list[tuple[bytes, bytes]], bytes, int, int, int]], cuts: list[int]
) -> None:
    wire = b"".join(
        request_wire(rid, params, body, keep=True, params_size=psize, stdin_size=ssize)
        for params, body, psize, ssize, rid in requests
    )
    expected: list[Event] = []
    for params, body, _, _, rid in requests:
        expected.append(Request(request_id=rid, params=params, keep_conn=True))
        if body:
            expected.append(Data(request_id=rid, data=body))
        expected.append(EndOfMessage(request_id=rid))
    expected.append(ConnectionClosed())
    for chunks in ([wire], chunked(wire, cuts), bytewise(wire)):
        assert feed(chunks, eof=True, end_requests=True) == expected


@pytest.mark.parametrize("size", [1, 65535, 65536, 65535 * 3 + 17, 1 << 20])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_send_stdout_parts_is_send_stdout_without_the_copy(
    size: int, kind: Callable[[bytes], object]
) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    conn = started()
    payload = kind(data)
    parts = conn.send_stdout_parts(1, payload)  # type: ignore[arg-type]
    assert b"".join(bytes(part) for part in parts) == conn.send_stdout(1, data)
    if kind is not memoryview:
        # The content is the caller's buffer, not a copy of it.
        views = [part for part in parts if isinstance(part, memoryview)]
        assert sum(map(len, views)) == size
        assert all(view.obj is payload for view in views)
