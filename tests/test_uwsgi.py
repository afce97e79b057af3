"""The sans-I/O uwsgi core: packets whole, byte by byte and with trailing data; limits; errors.

The captures are what nginx ``uwsgi_pass`` and Apache mod_proxy_uwsgi really sent
(tests/data/captures/*.uwsgi).
"""

from __future__ import annotations

import ast
import itertools
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trioscgi
from trioscgi import protocol
from trioscgi.uwsgi import (
    CLOSED,
    DEFAULT_MAX_VARS,
    DEFAULT_MAX_VARS_SIZE,
    DONE,
    ERROR,
    NEED_DATA,
    RECV_BODY,
    RECV_HEADER,
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
    UnsupportedModifier,
    response_head,
)
from trioscgi.uwsgi._connection import _LAYOUTS, _SEEN, _parse_vars, _parse_vars_checked
from trioscgi.uwsgi._state import OUR_TRANSITIONS, THEIR_TRANSITIONS

CAPTURES = Path(__file__).parent / "data" / "captures"


def u16(n: int) -> bytes:
    return struct.pack("<H", n)


def vars_block(environ: Iterable[tuple[bytes, bytes]]) -> bytes:
    return b"".join(u16(len(k)) + k + u16(len(v)) + v for k, v in environ)


def packet(
    environ: Iterable[tuple[bytes, bytes]], body: bytes = b"", *, m1: int = 0, m2: int = 0
) -> bytes:
    block = vars_block(environ)
    return bytes([m1]) + u16(len(block)) + bytes([m2]) + block + body


def raw(block: bytes, body: bytes = b"") -> bytes:
    """A packet around a hand-made vars block."""
    return b"\x00" + u16(len(block)) + b"\x00" + block + body


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


def parse(wire: bytes, split: Callable[[bytes], list[bytes]] = whole) -> list[Event]:
    return feed(split(wire))[0]


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


def expected(
    environ: list[tuple[bytes, bytes]], body: bytes = b"", *, modifier1: int = 0
) -> list[Event]:
    out: list[Event] = [Request(environ=environ, modifier1=modifier1)]
    if body:
        out.append(Data(data=body))
    return [*out, EndOfMessage(), ConnectionClosed()]


# What nginx's stock uwsgi_params sends for a GET (empty CONTENT_LENGTH and
# CONTENT_TYPE included, as nginx passes them).
GET_ENV = [
    (b"QUERY_STRING", b"y=1"),
    (b"REQUEST_METHOD", b"GET"),
    (b"CONTENT_TYPE", b""),
    (b"CONTENT_LENGTH", b""),
    (b"REQUEST_URI", b"/x?y=1"),
    (b"PATH_INFO", b"/x"),
    (b"HTTP_HOST", b"localhost"),
]

# --- valid requests -------------------------------------------------------------------


def test_get(split: Callable[[bytes], list[bytes]]) -> None:
    assert parse(packet(GET_ENV), split) == expected(GET_ENV)


def test_post_with_body(split: Callable[[bytes], list[bytes]]) -> None:
    env = [(b"REQUEST_METHOD", b"POST"), (b"CONTENT_LENGTH", b"11")]
    assert parse(packet(env, b"hello world"), split) == expected(env, b"hello world")


def test_content_length_absent_or_empty_is_no_body(split: Callable[[bytes], list[bytes]]) -> None:
    env = [(b"REQUEST_METHOD", b"GET")]
    assert parse(packet(env), split) == expected(env)
    env = [(b"CONTENT_LENGTH", b"")]
    assert parse(packet(env), split) == expected(env)


def test_empty_vars_block(split: Callable[[bytes], list[bytes]]) -> None:
    assert parse(b"\x00\x00\x00\x00", split) == expected([])


def test_modifier1_30_is_a_request_too(split: Callable[[bytes], list[bytes]]) -> None:
    # nginx `uwsgi_modifier1 30;`: uWSGI's recipe for an app under a prefix.
    events = parse(packet(GET_ENV, m1=30), split)
    assert events == expected(GET_ENV, modifier1=30)
    assert isinstance(events[0], Request)
    assert events[0].modifier1 == 30


def test_sizes_are_little_endian() -> None:
    name, value = b"N" * 300, b"v" * 258  # 0x012c and 0x0102: both bytes matter
    wire = packet([(name, value)])
    assert wire[1:3] == u16(4 + 300 + 258) == bytes([0x32, 0x02])
    assert wire[4:6] == b"\x2c\x01"
    assert parse(wire) == expected([(name, value)])


def test_duplicates_kept_in_order(split: Callable[[bytes], list[bytes]]) -> None:
    # nginx 1.22 repeats a header sent twice; a uwsgi_param may repeat a name.
    env = [(b"HTTP_COOKIE", b"a=1"), (b"HTTP_X", b"1"), (b"HTTP_COOKIE", b"b=2")]
    assert parse(packet(env), split) == expected(env)


def test_binary_and_empty_values() -> None:
    env = [(b"A", b""), (b"B", bytes(range(256))), (b"\x00\xff", b"\r\n")]
    assert parse(packet(env)) == expected(env)


def test_content_length_leading_zeros_are_digits() -> None:
    env = [(b"CONTENT_LENGTH", b"003")]
    assert parse(packet(env, b"abc")) == expected(env, b"abc")


def test_long_content_length_accepted_up_to_18_digits() -> None:
    conn = Connection()
    conn.receive_data(packet([(b"CONTENT_LENGTH", b"9" * 18)]))
    assert isinstance(conn.next_event(), Request)
    assert conn.body_remaining == 10**18 - 1


def test_environ_values_are_bytes_when_split() -> None:
    events = parse(packet(GET_ENV), bytewise)
    assert isinstance(events[0], Request)
    for name, value in events[0].environ:
        assert type(name) is bytes
        assert type(value) is bytes


def test_request_get() -> None:
    request = Request(environ=GET_ENV)
    assert request.get(b"REQUEST_METHOD") == b"GET"
    assert request.get(b"NOPE") is None
    assert request.get(b"NOPE", b"d") == b"d"


# --- framing --------------------------------------------------------------------------


def test_eof_before_any_byte_is_connection_closed() -> None:
    conn = Connection()
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.their_state is CLOSED
    assert conn.next_event() == ConnectionClosed()


def test_framing_never_waits_for_eof(split: Callable[[bytes], list[bytes]]) -> None:
    # Front-ends do not half-close after the body.
    env = [(b"CONTENT_LENGTH", b"4")]
    events, conn = feed(split(packet(env, b"body")), eof=False)
    assert events == expected(env, b"body")[:-1]
    assert conn.their_state is DONE


def test_trailing_data_is_left_alone(split: Callable[[bytes], list[bytes]]) -> None:
    env = [(b"CONTENT_LENGTH", b"4")]
    events, conn = feed(split(packet(env, b"body") + b"\x00trailing"), eof=False)
    assert events == expected(env, b"body")[:-1]
    assert conn.trailing_data == (b"\x00trailing", False)
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.trailing_data == (b"\x00trailing", True)


def test_trailing_data_with_no_body(split: Callable[[bytes], list[bytes]]) -> None:
    events, conn = feed(split(packet(GET_ENV) + b"more"), eof=False)
    assert events == expected(GET_ENV)[:-1]
    assert conn.trailing_data == (b"more", False)


def test_need_data_until_complete() -> None:
    env = [(b"CONTENT_LENGTH", b"2")]
    wire = packet(env, b"ok")
    conn = Connection()
    head = len(wire) - 2
    for i in range(head):
        conn.receive_data(wire[i : i + 1])
        if i < head - 1:
            assert conn.next_event() is NEED_DATA
            assert conn.their_state is RECV_HEADER
    assert conn.next_event() == Request(environ=env)
    assert conn.next_event() is NEED_DATA
    assert conn.body_remaining == 2
    conn.receive_data(b"o")
    assert conn.next_event() == Data(data=b"o")
    conn.receive_data(b"k")
    assert conn.next_event() == Data(data=b"k")
    assert conn.next_event() == EndOfMessage()


def test_data_events_take_what_is_buffered() -> None:
    env = [(b"CONTENT_LENGTH", b"6")]
    conn = Connection()
    conn.receive_data(packet(env))
    assert conn.next_event() == Request(environ=env)
    conn.receive_data(b"ab")
    conn.receive_data(b"cd")
    assert conn.next_event() == Data(data=b"abcd")
    conn.receive_data(b"efgh")
    assert conn.next_event() == Data(data=b"ef")
    assert conn.next_event() == EndOfMessage()
    assert conn.trailing_data == (b"gh", False)


def test_body_data_is_bytes_not_our_buffer() -> None:
    conn = Connection()
    chunk = bytearray(packet([(b"CONTENT_LENGTH", b"3")], b"abc"))
    conn.receive_data(chunk)  # type: ignore[arg-type]
    conn.next_event()
    chunk[-3:] = b"xyz"  # the caller reuses its buffer
    event = conn.next_event()
    assert event == Data(data=b"abc")
    assert isinstance(event, Data)
    assert type(event.data) is bytes


def test_data_after_eof_is_our_error() -> None:
    conn = Connection()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_receive_data_accepts_other_buffers(kind: type) -> None:
    wire = packet([(b"CONTENT_LENGTH", b"2")], b"hi")
    events, _ = feed([kind(wire[:5]), kind(wire[5:])])
    assert events == expected([(b"CONTENT_LENGTH", b"2")], b"hi")


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("m1", "m2"),
    [(1, 0), (5, 0), (7, 0), (17, 0), (100, 0), (111, 17), (255, 0), (0, 1), (30, 1), (0, 255)],
)
def test_other_modifiers_are_refused(m1: int, m2: int) -> None:
    err = remote_error(packet(GET_ENV, m1=m1, m2=m2))
    assert type(err) is UnsupportedModifier
    assert (err.modifier1, err.modifier2) == (m1, m2)
    assert err.error_status_hint == 501
    assert f"modifier1={m1}, modifier2={m2}" in str(err)


def test_modifiers_are_refused_before_the_vars_arrive() -> None:
    # The header alone says it: no buffering a management packet's payload.
    err = remote_error(b"\x64\xff\xff\x00", eof=False)
    assert type(err) is UnsupportedModifier


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_eof_in_the_header(cut: int, split: Callable[[bytes], list[bytes]]) -> None:
    err = remote_error(packet(GET_ENV)[:cut], split)
    assert "packet header" in str(err)
    assert err.error_status_hint == 400


def test_eof_in_the_vars(split: Callable[[bytes], list[bytes]]) -> None:
    wire = packet(GET_ENV)
    for cut in (4, 5, len(wire) - 1):
        err = remote_error(wire[:cut], split)
        assert "vars block" in str(err)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"\x01", "inside a name size"),
        (b"\x00\x00\x00\x00", "empty name"),
        (b"\x05\x00ABC", "runs past the vars block"),
        (b"\x01\x00A", "runs past the vars block"),
        (b"\x01\x00A\x01", "runs past the vars block"),
        (b"\x01\x00A\x05\x00abc", "runs past the vars block"),
        (b"\x01\x00A\x01\x00a\x01", "inside a name size"),
        (b"\x01\x00A\x01\x00a\x00\x00\x00\x00", "empty name"),
        (vars_block([(b"CONTENT_LENGTH", b"1"), (b"CONTENT_LENGTH", b"1")]), "twice"),
        (vars_block([(b"CONTENT_LENGTH", b""), (b"CONTENT_LENGTH", b"")]), "twice"),
        (vars_block([(b"CONTENT_LENGTH", b"-1")]), "invalid CONTENT_LENGTH"),
        (vars_block([(b"CONTENT_LENGTH", b"+1")]), "invalid CONTENT_LENGTH"),
        (vars_block([(b"CONTENT_LENGTH", b" 1")]), "invalid CONTENT_LENGTH"),
        (vars_block([(b"CONTENT_LENGTH", b"1_0")]), "invalid CONTENT_LENGTH"),
        (vars_block([(b"CONTENT_LENGTH", b"0x10")]), "invalid CONTENT_LENGTH"),
        (vars_block([(b"CONTENT_LENGTH", "\u0661".encode())]), "invalid CONTENT_LENGTH"),
        (vars_block([(b"CONTENT_LENGTH", b"1" * 19)]), "invalid CONTENT_LENGTH"),
    ],
)
def test_vars_errors(block: bytes, message: str, split: Callable[[bytes], list[bytes]]) -> None:
    err = remote_error(raw(block), split)
    assert message in str(err)
    assert err.error_status_hint == 400


def test_vars_error_is_found_without_eof() -> None:
    err = remote_error(raw(b"\x00\x00\x00\x00") + b"more", eof=False)
    assert "empty name" in str(err)


def test_eof_in_the_body(split: Callable[[bytes], list[bytes]]) -> None:
    err = remote_error(packet([(b"CONTENT_LENGTH", b"10")], b"12345"), split)
    assert "5 bytes of body missing" in str(err)


def test_eof_in_the_body_gives_data_first() -> None:
    conn = Connection()
    conn.receive_data(packet([(b"CONTENT_LENGTH", b"10")], b"12345"))
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), Request)
    assert conn.next_event() == Data(data=b"12345")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


# --- limits ---------------------------------------------------------------------------


def test_vars_size_over_the_limit_is_431_from_the_header() -> None:
    wire = packet([(b"A", b"x" * 100)])
    err = remote_error(wire[:4], eof=False, max_vars_size=104)
    assert err.error_status_hint == 431
    # At the limit, fine.
    assert feed([wire], conn=Connection(max_vars_size=105))[0] == expected([(b"A", b"x" * 100)])


def test_default_limits() -> None:
    conn = Connection()
    assert conn.max_vars_size == DEFAULT_MAX_VARS_SIZE == 65535
    assert conn.max_vars == DEFAULT_MAX_VARS
    assert conn.max_body_size is None
    # The biggest block the format can say is accepted by default.
    env = [(b"A", b"x" * (65535 - 5))]
    assert parse(packet(env)) == expected(env)


def test_too_many_vars_is_431(split: Callable[[bytes], list[bytes]]) -> None:
    env = [(b"H%d" % i, b"") for i in range(11)]
    err = remote_error(packet(env), split, max_vars=10)
    assert err.error_status_hint == 431
    assert parse(packet(env[:10]), split) == expected(env[:10])


def test_default_var_count_bounds_a_block_of_tiny_vars() -> None:
    # 65535 bytes of one-letter vars would be 13,000 pairs.
    env = [(b"%c" % (65 + i % 26), b"") for i in range(13_000)]
    err = remote_error(packet(env))
    assert err.error_status_hint == 431


def test_body_over_limit_is_413_before_any_body() -> None:
    err = remote_error(packet([(b"CONTENT_LENGTH", b"11")]), eof=False, max_body_size=10)
    assert err.error_status_hint == 413
    env = [(b"CONTENT_LENGTH", b"10")]
    assert feed([packet(env, b"x" * 10)], conn=Connection(max_body_size=10))[0] == expected(
        env, b"x" * 10
    )


def test_constructor_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_vars_size"):
        Connection(max_vars_size=65536)
    with pytest.raises(ValueError, match="max_vars_size"):
        Connection(max_vars_size=-1)
    with pytest.raises(ValueError, match="max_vars"):
        Connection(max_vars=-1)
    with pytest.raises(ValueError, match="max_body_size"):
        Connection(max_body_size=-1)


# --- states ---------------------------------------------------------------------------


def test_states_walk_through() -> None:
    conn = Connection()
    assert conn.states == {"their": RECV_HEADER, "our": SEND_RESPONSE}
    conn.receive_data(packet([(b"CONTENT_LENGTH", b"1")], b"x"))
    conn.next_event()
    assert conn.their_state is RECV_BODY
    conn.next_event()
    conn.next_event()
    # Both sides at once from here: mypy would keep conn.their_state narrowed to
    # the RECV_BODY asserted above.
    assert conn.states == {"their": DONE, "our": SEND_RESPONSE}
    conn.send(Response(status=200, headers=[]))
    assert conn.states == {"their": DONE, "our": SEND_BODY}
    conn.send(Data(data=b"x"))
    conn.send(EndOfMessage())
    assert conn.states == {"their": DONE, "our": DONE}
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.states == {"their": CLOSED, "our": DONE}


def test_error_state_is_sticky_even_with_good_data_after() -> None:
    conn = Connection()
    conn.receive_data(b"\x01\x00\x00\x00")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    conn.receive_data(packet(GET_ENV))
    with pytest.raises(RemoteProtocolError, match="after a protocol error"):
        conn.next_event()
    assert conn.their_state is ERROR


def test_sides_are_independent_after_a_remote_error() -> None:
    conn = Connection()
    conn.receive_data(raw(b"\x00\x00\x00\x00"))
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    answer = conn.send(Response(status=info.value.error_status_hint, headers=[]))
    assert answer == b"HTTP/1.1 400 Bad Request\r\n\r\n"


def test_error_classes() -> None:
    assert issubclass(UnsupportedModifier, RemoteProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, ProtocolError)
    with pytest.raises(TypeError):
        ProtocolError("x")
    assert RemoteProtocolError("x").error_status_hint == 400
    # The cores share one hierarchy (docs/protocol.md): catching the SCGI ones catches these.
    assert RemoteProtocolError is protocol.RemoteProtocolError


def test_the_core_does_no_io() -> None:
    # No trio, no logging, no clock (STYLE.md 1): the core's modules import only these.
    allowed = {
        "__future__",
        "collections.abc",
        "dataclasses",
        "enum",
        "struct",
        "typing",
        # Relative: the core's own modules, the SCGI core's shared response checks, what
        # the cores share (trioscgi/_core/), and the reason phrases of the CGI head
        # (trioscgi/_cgi.py, a leaf with no I/O).
        "_connection",
        "_errors",
        "_events",
        "_state",
        "scgi",
        "scgi._events",
        "_core.errors",
        "_core.events",
        "_core.oneshot",
        "_cgi",
    }
    package = Path(trioscgi.uwsgi.__file__).parent
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {node.module or ""}
            else:
                continue
            assert names <= allowed, (path.name, names - allowed)


def test_exported_from_the_package() -> None:
    assert trioscgi.uwsgi.Connection is Connection
    assert "uwsgi" in trioscgi.__all__


# --- sending --------------------------------------------------------------------------


def test_response_bytes() -> None:
    conn = Connection()
    # Deliberately str: Response encodes str headers as latin-1 (its docstring).
    headers = [(b"content-type", b"text/plain"), ("x-a", "é")]
    head = conn.send(Response(status=200, headers=headers))  # type: ignore[arg-type]
    assert head == b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-a: \xe9\r\n\r\n"
    # Deliberately a bytearray: sent Data passes bytes-likes through.
    assert conn.send(Data(data=bytearray(b"body"))) == b"body"  # type: ignore[arg-type]
    assert conn.send(EndOfMessage()) == b""


@pytest.mark.parametrize(
    ("status", "line"),
    [
        (101, b"HTTP/1.1 101 Switching Protocols\r\n"),
        (204, b"HTTP/1.1 204 No Content\r\n"),
        (404, b"HTTP/1.1 404 Not Found\r\n"),
        # Unknown codes get their class's name: a reason phrase always.
        (299, b"HTTP/1.1 299 Success\r\n"),
        (799, b"HTTP/1.1 799 Unknown\r\n"),
    ],
)
def test_status_lines(status: int, line: bytes) -> None:
    assert response_head(Response(status=status, headers=[])) == line + b"\r\n"


def test_response_head_takes_the_scgi_cores_response() -> None:
    # The ASGI cycle builds protocol.Response for every wire: same bytes.
    headers = [(b"a", b"1"), (b"b", b"2")]
    assert response_head(protocol.Response(status=404, headers=headers)) == response_head(
        Response(status=404, headers=headers)
    )


@pytest.mark.parametrize(
    "headers",
    [
        [(b"a", b"x\r\nSet-Cookie: evil")],
        [(b"a", b"x\ny")],
        [(b"a", b"x\x00y")],
        [(b"bad name", b"x")],
        [(b"", b"x")],
        [(b"a:", b"x")],
        [("a", "ĉ")],
        [(b"a",)],
        [(1, b"x")],
    ],
)
def test_response_header_checks_are_the_shared_ones(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(LocalProtocolError):
        Response(status=200, headers=headers)
    with pytest.raises(protocol.LocalProtocolError):
        protocol.Response(status=200, headers=headers)


@pytest.mark.parametrize("status", [99, 1000, "200", 200.0, True])
def test_response_status_checked(status: object) -> None:
    with pytest.raises(LocalProtocolError):
        Response(status=status, headers=[])  # type: ignore[arg-type]


def test_send_out_of_order_is_a_local_error() -> None:
    conn = Connection()
    with pytest.raises(LocalProtocolError, match="can't send Data"):
        conn.send(Data(data=b"x"))
    assert conn.our_state is ERROR
    with pytest.raises(LocalProtocolError):
        conn.send(Response(status=200, headers=[]))


def test_send_failed() -> None:
    conn = Connection()
    conn.send_failed()
    assert conn.our_state is ERROR


def test_our_transitions_table() -> None:
    assert OUR_TRANSITIONS[SEND_RESPONSE, "Response"] is SEND_BODY


@pytest.mark.parametrize(
    "kwargs",
    [
        {"environ": [(b"", b"x")]},
        {"environ": [(b"A", "x")]},
        {"environ": [(b"A",)]},
        {"environ": [(b"A" * 65536, b"")]},
        {"environ": [(b"A", b"x" * 40000), (b"B", b"x" * 40000)]},
        {"environ": [], "modifier1": 1},
        {"environ": [], "modifier2": 1},
    ],
)
def test_request_validated_on_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        Request(**kwargs)  # type: ignore[arg-type]


def test_data_validated_on_construction() -> None:
    with pytest.raises(LocalProtocolError):
        Data(data="text")  # type: ignore[arg-type]


# --- real front-ends' captures --------------------------------------------------------


def split_capture(wire: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A capture decoded here, independently of the core: modifier1, vars, body."""
    size = int.from_bytes(wire[1:3], "little")
    block, body = wire[4 : 4 + size], wire[4 + size :]
    pairs = []
    pos = 0
    while pos < len(block):
        n = int.from_bytes(block[pos : pos + 2], "little")
        name = block[pos + 2 : pos + 2 + n]
        pos += 2 + n
        n = int.from_bytes(block[pos : pos + 2], "little")
        pairs.append((name, block[pos + 2 : pos + 2 + n]))
        pos += 2 + n
    return wire[0], pairs, body


CAPTURE_FILES = sorted(CAPTURES.glob("*.uwsgi"))


def test_there_are_captures() -> None:
    variants = {"-".join(p.name.split("-", 2)[:2]) for p in CAPTURE_FILES}
    assert {"nginx-stock", "nginx-prefix", "nginx-prefix30", "apache-root"} <= variants


@pytest.mark.parametrize("path", CAPTURE_FILES, ids=[p.name for p in CAPTURE_FILES])
def test_captures(path: Path, split: Callable[[bytes], list[bytes]]) -> None:
    # tests/data/captures/*.uwsgi: the exact bytes nginx (uwsgi_pass) and Apache
    # (mod_proxy_uwsgi) sent.
    wire = path.read_bytes()
    modifier1, environ, body = split_capture(wire)
    assert parse(wire, split) == expected(environ, body, modifier1=modifier1)


# --- properties (hypothesis) ----------------------------------------------------------

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEEDS = [
    packet(GET_ENV),
    packet([(b"CONTENT_LENGTH", b"4"), (b"REQUEST_METHOD", b"POST")], b"body"),
    packet([(b"CONTENT_LENGTH", b"300")], b"x" * 10),
    packet([(b"N" * 260, b"v" * 300)]),
    packet([], m1=30),
    packet([(b"A", b"")], m1=100),
    raw(b"\x00\x00\x00\x00"),
    raw(b"\x01\x00A\xff\xffx"),
    b"\x00\xff\xff\x00",
]


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    """Seeds, then a few bytes changed, cut out or put in."""
    pieces = draw(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=3))
    wire = bytearray(b"".join(pieces))
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3]))):
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


def events_or_error(chunks: list[bytes], conn: Connection) -> list[Event] | tuple[str, int]:
    try:
        return feed(chunks, conn=conn)[0]
    except RemoteProtocolError as exc:
        assert conn.their_state is ERROR
        assert exc.error_status_hint in (400, 413, 431, 501)
        return type(exc).__name__, exc.error_status_hint


@FAST
@given(
    st.one_of(hostile_bytes(), hostile_bytes(), st.binary(max_size=300)),
    st.lists(st.integers(0, 2000), max_size=8),
    st.integers(0, 400),
    st.integers(0, 40),
)
def test_any_bytes_give_events_or_a_remote_error(
    wire: bytes, cuts: list[int], limit: int, max_vars: int
) -> None:
    # Never anything but events or RemoteProtocolError, however the bytes
    # come, and the same outcome whole or in pieces.
    def conn() -> Connection:
        return Connection(max_vars_size=limit, max_vars=max_vars, max_body_size=limit)

    result = events_or_error(chunked(wire, cuts), conn())
    assert result == events_or_error([wire] if wire else [], conn())
    assert result == events_or_error(bytewise(wire), conn())


@FAST
@given(
    st.lists(
        st.tuples(st.binary(min_size=1, max_size=300), st.binary(max_size=300)).filter(
            lambda p: p[0] != b"CONTENT_LENGTH"
        ),
        max_size=8,
    ),
    st.binary(max_size=500),
    st.sampled_from([0, 30]),
    st.lists(st.integers(0, 6000), max_size=10),
)
def test_generated_requests_round_trip(
    environ: list[tuple[bytes, bytes]], body: bytes, m1: int, cuts: list[int]
) -> None:
    env = [*environ, (b"CONTENT_LENGTH", b"%d" % len(body))]
    wire = packet(env, body, m1=m1)
    # What the parser says is what was built, and builds the same bytes back.
    for chunks in ([wire], chunked(wire, cuts)):
        events = feed(chunks)[0]
        assert events == expected(env, body, modifier1=m1)
        request = events[0]
        assert isinstance(request, Request)
        assert packet(request.environ, body, m1=request.modifier1) == wire


def vars_outcome(
    parse: Callable[[bytes, int], tuple[list[tuple[bytes, bytes]], int]], block: bytes, limit: int
) -> object:
    try:
        return parse(block, limit)
    except RemoteProtocolError as exc:
        return str(exc), exc.error_status_hint


@FAST
@given(
    st.one_of(
        st.builds(
            vars_block,
            st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=20)), max_size=10),
        ),
        st.sampled_from([s[4:] for s in SEEDS]),
        st.binary(max_size=60),
    ),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3),
    st.integers(0, 12),
)
def test_fast_vars_parser_agrees_with_the_checked_one(
    block: bytes, changes: list[tuple[int, int]], limit: int
) -> None:
    # The fast path proves what it can and hands the rest to the checked parser: same
    # pairs, same length, or the same error, for any block.
    mutated = bytearray(block)
    for at, value in changes:
        if mutated:
            mutated[at % len(mutated)] = value
    for b in (block, bytes(mutated)):
        assert vars_outcome(_parse_vars, b, limit) == vars_outcome(_parse_vars_checked, b, limit)


def test_fast_vars_parser_takes_the_captures_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fast path would be dead code if every real request fell back: the captures
    # parse with the checked parser out of reach.
    blocks = []
    for path in CAPTURE_FILES:
        wire = path.read_bytes()
        blocks.append(wire[4 : 4 + int.from_bytes(wire[1:3], "little")])
    expected = [_parse_vars_checked(block, DEFAULT_MAX_VARS) for block in blocks]

    def no_fallback(block: bytes, max_vars: int) -> tuple[list[tuple[bytes, bytes]], int]:
        raise AssertionError(f"fell back on {block[:40]!r}")

    monkeypatch.setattr(trioscgi.uwsgi._connection, "_parse_vars_checked", no_fallback)
    assert [_parse_vars(block, DEFAULT_MAX_VARS) for block in blocks] == expected


def learned(block: bytes) -> None:
    """Parse ``block`` twice: its layout is then decoded by one Struct.

    The caches start empty: other tests may have filled them to their bound with
    lengths of their own, and then nothing more is learned.
    """
    _LAYOUTS.clear()
    _SEEN.clear()
    for _ in range(2):
        _parse_vars(block, DEFAULT_MAX_VARS)
    assert len(block) in _LAYOUTS


def test_a_recurring_layout_is_decoded_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    env = [*GET_ENV[:3], (b"CONTENT_LENGTH", b"12"), *GET_ENV[4:]]
    block = vars_block(env)
    learned(block)
    # Same sizes, other bytes (another query, another length's digits): no walk at all.
    other = vars_block([(k, v.replace(b"1", b"7")) for k, v in env])
    assert len(other) == len(block)

    def no_walk(block: bytes, max_vars: int) -> tuple[list[tuple[bytes, bytes]], int]:
        raise AssertionError("walked")

    monkeypatch.setattr(trioscgi.uwsgi._connection, "_parse_vars_checked", no_walk)
    monkeypatch.setattr(trioscgi.uwsgi._connection, "_NAMES", None)  # the walk's tables
    assert _parse_vars(other, DEFAULT_MAX_VARS) == (
        [(k, v.replace(b"1", b"7")) for k, v in env],
        72,
    )


# A valid name of CONTENT_LENGTH's size, to learn a layout that a block with a second
# or an empty CONTENT_LENGTH then has.
_SAME_SIZE = (b"HTTP_X_ABCDEFG", b"")


@pytest.mark.parametrize(
    ("learn", "change", "outcome"),
    [
        # The same length, another layout: a value one byte longer, its neighbour shorter.
        (
            lambda env: env,
            lambda env: [*env[:4], (b"REQUEST_URI", b"/x?y=12"), (b"PATH_INFO", b"/"), *env[6:]],
            "pairs",
        ),
        # The layout's sizes, but bytes that are not a valid request.
        (lambda env: env, lambda env: [*env[:3], (b"CONTENT_LENGTH", b"1x"), *env[4:]], "400"),
        (  # CONTENT_LENGTH twice
            lambda env: [*env[:2], _SAME_SIZE, *env[3:]],
            lambda env: [*env[:2], (b"CONTENT_LENGTH", b""), *env[3:]],
            "400",
        ),
        (  # an empty CONTENT_LENGTH: 0
            lambda env: [*env[:3], _SAME_SIZE, *env[4:]],
            lambda env: [*env[:3], (b"CONTENT_LENGTH", b""), *env[4:]],
            "pairs",
        ),
    ],
)
def test_a_learned_layout_proves_or_hands_over(learn: Any, change: Any, outcome: str) -> None:
    env = [*GET_ENV[:3], (b"CONTENT_LENGTH", b"12"), *GET_ENV[4:]]
    learned(vars_block(learn(env)))
    block = vars_block(change(env))
    assert len(block) in _LAYOUTS  # the learned layout's length: it is tried first
    expected = vars_outcome(_parse_vars_checked, block, DEFAULT_MAX_VARS)
    assert vars_outcome(_parse_vars, block, DEFAULT_MAX_VARS) == expected
    assert isinstance(expected, tuple)
    if outcome == "400":
        assert isinstance(expected[0], str) and expected[1] == 400
    else:
        assert isinstance(expected[0], list)


def test_a_learned_layout_still_counts_vars() -> None:
    block = vars_block(GET_ENV)
    learned(block)
    with pytest.raises(RemoteProtocolError) as info:
        _parse_vars(block, len(GET_ENV) - 1)
    assert info.value.error_status_hint == 431


def test_layouts_are_bounded() -> None:
    for size in range(3000):
        block = vars_block([(b"X", b"v" * size)])
        _parse_vars(block, DEFAULT_MAX_VARS)
        _parse_vars(block, DEFAULT_MAX_VARS)
    assert len(_LAYOUTS) <= 1024 and len(_SEEN) <= 1024


# --- hostile: bounded memory ----------------------------------------------------------


def test_buffer_is_bounded_while_the_head_arrives() -> None:
    # A peer that announces the largest block and sends it a byte at a
    # time: the core buffers the block and nothing more before it decides.
    conn = Connection()
    conn.receive_data(b"\x00\xff\xff\x00")
    block = b"\x01\x00A\xfa\xff" + b"x" * (65535 - 5)
    for i in range(0, len(block), 4096):
        assert conn.next_event() is NEED_DATA
        conn.receive_data(block[i : i + 4096])
    assert isinstance(conn.next_event(), Request)
    assert conn.trailing_data == (b"", False)


def test_garbage_never_buffers_past_the_header() -> None:
    # Anything that is not a request is refused after four bytes.
    for first in range(1, 256):
        if first == 30:
            continue
        conn = Connection()
        conn.receive_data(bytes([first]) + b"\xff\xff\x00")
        with pytest.raises(UnsupportedModifier):
            conn.next_event()


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_every_mutation_of_a_seed(seed: int) -> None:
    # Every single-byte change of every seed (a bounded, exhaustive set):
    # events or a remote error, never anything else.
    wire = SEEDS[seed][:600]
    for at in range(len(wire)):
        for value in (0x00, 0x01, 0x1E, 0x7F, 0xFF, wire[at] ^ 0x80):
            mutated = wire[:at] + bytes([value]) + wire[at + 1 :]
            events_or_error([mutated], Connection())
