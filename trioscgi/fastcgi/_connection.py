"""The FastCGI connection state machine: records in, events out; answers out as records."""

from __future__ import annotations

from collections.abc import Callable
from struct import Struct
from struct import error as StructError
from typing import Final

from .._core.errors import LocalProtocolError, RemoteProtocolError
from .._core.events import NEED_DATA, _NeedData
from ._events import Abort, ConnectionClosed, Data, EndOfMessage, Event, Rejected, Request
from ._records import (
    ABORT_REQUEST,
    APPLICATION_ONLY,
    BEGIN_REQUEST,
    CANT_MPX_CONN,
    END_REQUEST,
    GET_VALUES,
    GET_VALUES_RESULT,
    HEADER,
    HEADER_FIELDS,
    HEADER_LEN,
    KEEP_CONN,
    LENGTH4,
    MAX_CONTENT_LENGTH,
    OVERLOADED,
    PADDING,
    PARAMS,
    REQUEST_COMPLETE,
    RESPONDER,
    STDERR,
    STDIN,
    STDOUT,
    UNKNOWN_ROLE,
    UNKNOWN_TYPE,
    VERSION_1,
    encode_pairs,
    end_request_record,
    record,
)
from ._state import (
    ABORTED,
    CLOSED,
    DONE,
    ERROR,
    HALF_RECEIVED,
    KNOWN,
    ON_ABORT,
    ON_BEGIN_REQUEST,
    ON_END_OF_MESSAGE,
    ON_REJECTED,
    ON_REQUEST,
    OPEN,
    RECV_PARAMS,
    RECV_STDIN,
    State,
)

__all__ = [
    "DEFAULT_MAX_CONNS",
    "DEFAULT_MAX_PARAMS_SIZE",
    "DEFAULT_MAX_PENDING_OUTPUT",
    "NEED_DATA",
    "Connection",
]


# Default limits. 64 KiB of PARAMS is the SCGI core's header limit: it is
# lighttpd's request-header limit and more than nginx forwards by default
# (4 x 8 KiB large_client_header_buffers, plus its fastcgi_params).
DEFAULT_MAX_PARAMS_SIZE: Final = 65536
# Answered in GET_VALUES_RESULT only: the server's max_connections.
# What each name-value pair counts against max_params_size beyond its bytes. Parsed, a
# pair costs about 230 bytes of Python objects (its tuple, two bytes objects, and in the
# scope a header tuple or a dict entry), so 64 KiB of one-letter headers (7,000 pairs)
# held about 20 times their size: 86 MiB for one connection with 64 such requests. At
# 128 a pair, 64 KiB holds at most ~480 pairs (a usual request: 20-40, ~5 KiB of cost).
PAIR_COST: Final = 128
DEFAULT_MAX_CONNS: Final = 1024
# What the core may have answered by itself (END_REQUEST for a refused id,
# GET_VALUES_RESULT, UNKNOWN_TYPE) and not yet handed over in
# data_to_send(). Each answer is at most twice the size of the record that
# asked for it, so a server that sends data_to_send() after every batch of
# events, one read at a time, stays well under it; a peer that fills it
# without reading is flooding us, and the connection is closed.
DEFAULT_MAX_PENDING_OUTPUT: Final = 65536

# version 1 and a record type, as the first two header bytes read them.
_V1_BEGIN: Final = VERSION_1 << 8 | BEGIN_REQUEST
_V1_PARAMS: Final = VERSION_1 << 8 | PARAMS
_V1_STDIN: Final = VERSION_1 << 8 | STDIN
# CONTENT_LENGTH has at most this many digits to be compared with
# max_body_size: 10**18 bytes is beyond any real body, and int() stays
# cheap on hostile input.
_MAX_CONTENT_LENGTH_DIGITS: Final = 18
_TYPE_NAMES: Final = {
    END_REQUEST: "END_REQUEST",
    STDOUT: "STDOUT",
    STDERR: "STDERR",
    GET_VALUES_RESULT: "GET_VALUES_RESULT",
    UNKNOWN_TYPE: "UNKNOWN_TYPE",
}

# The parser's fast path for its own events (STYLE.md 3: validated
# construction is for user code): set the slots directly.
_new = object.__new__
_set_request_id = Request.__dict__["request_id"].__set__
_set_params = Request.__dict__["params"].__set__
_set_keep_conn = Request.__dict__["keep_conn"].__set__
_set_data_id = Data.__dict__["request_id"].__set__
_set_data = Data.__dict__["data"].__set__
_CONNECTION_CLOSED: Final = ConnectionClosed._make()

# Built once per request id and shared: EndOfMessage events (frozen, equal
# by value anyway), the header of an empty PARAMS record, and what
# end_request() sends for a plain end. Front-ends use small ids (nginx,
# Apache, lighttpd: always 1); bounded, so a peer walking through all 65535
# ids can't grow them.
_CACHE_MAX: Final = 1024
_END_OF_MESSAGES: Final[dict[int, EndOfMessage]] = {}
_PARAMS_ENDS: Final[dict[int, bytes]] = {}
_PLAIN_ENDS: Final[dict[int, bytes]] = {}


def _end_of_message(request_id: int) -> EndOfMessage:
    event = _END_OF_MESSAGES.get(request_id)
    if event is None:
        event = EndOfMessage._make(request_id=request_id)
        if len(_END_OF_MESSAGES) < _CACHE_MAX:
            _END_OF_MESSAGES[request_id] = event
    return event


def _params_end(request_id: int) -> bytes:
    header = HEADER_FIELDS.pack(VERSION_1, PARAMS, request_id, 0, 0)
    if len(_PARAMS_ENDS) < _CACHE_MAX:
        _PARAMS_ENDS[request_id] = header
    return header


def _plain_end(request_id: int) -> bytes:
    # The empty STDOUT record that ends the stream, then END_REQUEST.
    data = record(STDOUT, request_id) + end_request_record(request_id, 0, REQUEST_COMPLETE)
    if len(_PLAIN_ENDS) < _CACHE_MAX:
        _PLAIN_ENDS[request_id] = data
    return data


# Decoders for a name-value pair whose two lengths are under 128 (one byte
# each: every pair nginx, Apache and lighttpd send for a usual request, but
# long cookies and query strings), keyed by its two length bytes as one
# big-endian short. Each reads the name, the value and the next pair's two
# length bytes in one C call, instead of two index and two slice
# operations in Python: about 2,700 instructions per pair instead of 3,100
# (callgrind, the objects made included). The key is the lengths, never
# the content. Bounded: up to 4096 of the 16384 possible keys (about
# 1.8 MB). Past that, a pair of lengths not seen yet is sliced in line,
# at about 4,500 per pair: the price of the table lookup first.
_PAIR_DECODERS: Final[dict[int, tuple[Callable[[bytes, int], tuple[bytes, bytes, int]], int]]] = {}
_PAIR_DECODERS_MAX: Final = 4096


def _pairs(buf: bytes, pos: int, end: int) -> list[tuple[bytes, bytes]]:
    """The name-value pairs (spec section 3.4) in ``buf[pos:end]``.

    Raises:
        RemoteProtocolError: a length runs past ``end``.
    """
    if len(buf) < end + 2:
        # The decoders read two bytes past each pair: give them some.
        buf = buf[pos:end] + b"\0\0"
        end -= pos
        pos = 0
    pairs: list[tuple[bytes, bytes]] = []
    append = pairs.append
    decoder_of = _PAIR_DECODERS.get
    # `at` is where the current pair's name would start were both its
    # lengths one byte each, `key` those two bytes: the pairs end right at
    # `end` when `at` reaches `stop`. Read past `end` (a length cut short)
    # and `at` ends up past `stop` too, which the check below catches:
    # `buf` may hold the next records.
    at = pos + 2
    stop = end + 2
    try:
        key = buf[pos] << 8 | buf[pos + 1]
        while at < stop:
            decoder = decoder_of(key)
            if decoder is not None:
                decode, size = decoder
                name, value, key = decode(buf, at)
                append((name, value))
                at += size
            elif key & 0x8080:
                # A 4-byte length (which may hold a small number too, and
                # so gets no decoder: its first bytes are not the lengths).
                at, key = _long_pair(buf, at - 2, append)
            elif len(_PAIR_DECODERS) < _PAIR_DECODERS_MAX:
                made = Struct(f"!{key >> 8}s{key & 0xFF}sH")
                _PAIR_DECODERS[key] = (made.unpack_from, made.size)
            else:
                # Lengths not seen before the table filled: slices, in line
                # (no call, no exception), still dearer than before the
                # decoders by the lookup and the key's arithmetic.
                name_end = at + (key >> 8)
                value_end = name_end + (key & 0xFF)
                append((buf[at:name_end], buf[name_end:value_end]))
                at = value_end + 2
                key = buf[value_end] << 8 | buf[value_end + 1]
    except (IndexError, StructError):
        at = stop + 1
    if at != stop:
        raise RemoteProtocolError(
            "a name-value pair's lengths run past the end of its record or stream"
        )
    return pairs


def _length_at(buf: bytes, pos: int) -> tuple[int, int]:
    # A name or value length at pos (one byte under 128, else four with the
    # top bit set), and where what follows it starts.
    length = buf[pos]
    if length < 128:
        return length, pos + 1
    return LENGTH4.unpack_from(buf, pos)[0] & 0x7FFFFFFF, pos + 4


def _long_pair(
    buf: bytes, pos: int, append: Callable[[tuple[bytes, bytes]], None]
) -> tuple[int, int]:
    # One pair at pos with a 4-byte length or two: appended; where the next
    # pair's name would start, were its lengths one byte each, and the
    # next pair's first two bytes.
    nl, pos = _length_at(buf, pos)
    vl, pos = _length_at(buf, pos)
    name_end = pos + nl
    value_end = name_end + vl
    append((buf[pos:name_end], buf[name_end:value_end]))
    return value_end + 2, buf[value_end] << 8 | buf[value_end + 1]


def _check_stdin(rid: int, state: State) -> None:
    # STDIN for a request that is not reading its body: an error when the
    # stream is not open yet or is closed; dropped when rejected or aborted.
    if state is RECV_PARAMS:
        raise RemoteProtocolError(f"STDIN for request {rid} before the end of its PARAMS")
    if state is DONE:
        raise RemoteProtocolError(f"STDIN for request {rid} after the end of its STDIN")


class _Request:
    """What the core keeps for an active request id (built in next_event)."""

    __slots__ = ("keep_conn", "params", "received", "state", "stderr")

    state: State
    keep_conn: bool
    # PARAMS content so far, when the stream spans several records.
    params: bytearray | None
    received: int  # STDIN bytes so far
    stderr: bool  # a STDERR stream was started, and end_request() ends it


class Connection:
    """One FastCGI connection, seen from the application (RESPONDER role).

    Feed it what the socket reads with :meth:`receive_data` and take the
    requests apart with :meth:`next_event`; send what :meth:`data_to_send`
    holds (the answers the core gave by itself) after each batch of events;
    turn each response into records with :meth:`send_stdout` and
    :meth:`end_request`. It does no I/O of its own.

    Args:
        max_params_size: the most PARAMS content bytes one request may send,
            each name-value pair counting ``PAIR_COST`` bytes more; more gets
            that request :class:`Rejected` with hint 431.
        max_body_size: the most STDIN bytes one request may send, or
            ``None`` for no limit; more (or a CONTENT_LENGTH param above
            it) gets that request :class:`Rejected` with hint 413.
        max_requests: how many request ids may be active at once on this
            connection, when ``multiplex`` is true; answered as
            FCGI_MAX_REQS. One more gets END_REQUEST with OVERLOADED.
        multiplex: serve several requests at once on this connection
            (FCGI_MPXS_CONNS). When false, the limit is one request, and
            a second one gets END_REQUEST with CANT_MPX_CONN.
        max_conns: only answered, as FCGI_MAX_CONNS: the server's limit.
        max_pending_output: the most bytes of automatic answers that may
            wait in :meth:`data_to_send`; more raises
            :class:`RemoteProtocolError`.

    Attributes:
        refused: how many BEGIN_REQUESTs the core answered itself with an
            END_REQUEST (UNKNOWN_ROLE, OVERLOADED, CANT_MPX_CONN), and
        last_refusal: the protocol status of the last of them (``None``
            before any): a server compares ``refused`` after each batch to
            tell its operator, which costs nothing until there is news.
    """

    __slots__ = (
        "_buf",
        "_close_requested",
        "_eof",
        "_limit",
        "_out",
        "_out_size",
        "_partial",
        "_pos",
        "_requests",
        "_state",
        "last_refusal",
        "max_body_size",
        "max_conns",
        "max_params_size",
        "max_pending_output",
        "max_requests",
        "multiplex",
        "refused",
    )

    def __init__(
        self,
        *,
        max_params_size: int = DEFAULT_MAX_PARAMS_SIZE,
        max_body_size: int | None = None,
        max_requests: int = 1,
        multiplex: bool = False,
        max_conns: int = DEFAULT_MAX_CONNS,
        max_pending_output: int = DEFAULT_MAX_PENDING_OUTPUT,
    ) -> None:
        if max_params_size < 1:
            raise ValueError("max_params_size must be positive")
        if max_body_size is not None and max_body_size < 0:
            raise ValueError("max_body_size must not be negative")
        if not 1 <= max_requests <= 0xFFFF:
            raise ValueError("max_requests must be from 1 to 65535")
        if max_conns < 1:
            raise ValueError("max_conns must be positive")
        if max_pending_output < 1:
            raise ValueError("max_pending_output must be positive")
        self.max_params_size = max_params_size
        self.max_body_size = max_body_size
        self.max_requests = max_requests
        self.multiplex = multiplex
        self.max_conns = max_conns
        self.max_pending_output = max_pending_output
        # Without multiplexing, one request at a time whatever max_requests
        # says: that is what FCGI_MPXS_CONNS "0" promises.
        self._limit = max_requests if multiplex else 1
        self._requests: dict[int, _Request] = {}
        # bytes: what was received, parsed from _pos on. bytearray: less
        # than a whole record, growing (_pos is 0). None: after an error.
        self._buf: bytes | bytearray | None = b""
        self._pos = 0
        # The STDIN record being handed over as it arrives:
        # (request id, its _Request, content bytes to come, padding to come).
        self._partial: tuple[int, _Request, int, int] | None = None
        self._eof = False
        self._state = OPEN
        self._out: list[bytes] = []
        self._out_size = 0
        self._close_requested = False
        self.refused = 0
        self.last_refusal: int | None = None

    # --- state -----------------------------------------------------------------

    @property
    def state(self) -> State:
        """The connection's state: ``OPEN``, ``CLOSED`` or ``ERROR``."""
        return self._state

    @property
    def request_states(self) -> dict[int, State]:
        """The state of every active request id (a copy)."""
        return {rid: req.state for rid, req in self._requests.items()}

    @property
    def active_requests(self) -> int:
        """How many request ids are active: begun and not yet ended by :meth:`end_request`.

        Ids still in their PARAMS stream count: they hold a slot and memory,
        though the server has had no event for them yet.
        """
        return len(self._requests)

    @property
    def close_requested(self) -> bool:
        """Whether the core refused (or ended) a request whose BEGIN_REQUEST lacked FCGI_KEEP_CONN.

        The spec has the application close the connection after such a
        request. The server never saw that request, so the core says it
        here: close once :meth:`data_to_send` is on the wire and no request
        is active. (For the requests the server does see, the flag is in
        :attr:`Request.keep_conn` and :attr:`Rejected.keep_conn`.)
        """
        return self._close_requested

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """Bytes received but not parsed yet, and whether EOF was seen."""
        buf = self._buf
        if buf is None:
            return b"", self._eof
        return bytes(buf[self._pos :]), self._eof

    # --- receiving -------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the socket; ``b""`` means the peer closed (EOF).

        Raises:
            LocalProtocolError: data after EOF.
        """
        if data:
            if self._eof:
                raise LocalProtocolError("received data after EOF")
            buf = self._buf
            if type(buf) is bytes:
                pos = self._pos
                if pos == len(buf):
                    # Everything parsed (the usual case): keep a reference,
                    # not a copy, but never to a caller's mutable buffer.
                    self._buf = data if type(data) is bytes else bytes(data)
                    self._pos = 0
                    return
                # Part of a record is left: grow it in place until the
                # record is whole, so that a record arriving a byte at a
                # time costs linear time, not quadratic.
                rest = bytearray(memoryview(buf)[pos:])
                rest += data
                self._buf = rest
                self._pos = 0
            elif buf is not None:
                buf += data
            # After an error (None) the bytes mean nothing: drop them.
        else:
            self._eof = True

    def next_event(self) -> Event | _NeedData:
        """The next event, or :data:`NEED_DATA`.

        Returns:
            :class:`Request` when a request's PARAMS stream ends, then
            :class:`Data` for its STDIN content as it arrives (a record's,
            or the part of one received so far) and :class:`EndOfMessage`
            for the empty STDIN record; :class:`Abort` and
            :class:`Rejected` for a request at any point;
            :class:`ConnectionClosed` at EOF (and again on every later
            call, like h11). :data:`NEED_DATA` when the buffered bytes hold
            no event. Records the core answers by itself (GET_VALUES, an
            unknown type, a refused BEGIN_REQUEST) or ignores make no
            event: check :meth:`data_to_send` after each batch.

        Raises:
            RemoteProtocolError: the peer sent something invalid. The
                connection is then in ``ERROR`` for good: close it.
        """
        buf = self._buf
        if type(buf) is not bytes:
            # A record still arriving in a bytearray, or a broken connection.
            return self._next_event_slow()
        requests = self._requests
        pos = self._pos
        size = len(buf)
        try:
            partial = self._partial
            if partial is not None:
                # The rest of the STDIN record _stdin_begins started, here
                # rather than in a method of its own: a big body takes this
                # path once per read.
                prid, preq, left, pad = partial
                if left:
                    if pos == size:
                        return self._short(buf, pos)
                    start = pos
                    pos += left if left < size - pos else size - pos
                    stop = pos
                    left -= stop - start
                    if not left:
                        pos += pad if pad < size - pos else size - pos
                        pad -= pos - stop
                    self._partial = (prid, preq, left, pad) if left or pad else None
                    if requests.get(prid) is preq and preq.state is RECV_STDIN:
                        self._pos = pos
                        data = _new(Data)
                        _set_data_id(data, prid)
                        _set_data(data, buf[start:stop])
                        return data
                    # The server ended the request meanwhile: the rest is
                    # dropped, and what follows parsed below.
                else:
                    skip = pad if pad < size - pos else size - pos
                    pos += skip
                    if pad - skip:
                        self._partial = (prid, preq, 0, pad - skip)
                        return self._short(buf, pos)
                    self._partial = None
            while True:
                start = pos + HEADER_LEN
                if start > size:
                    if pos == size and not self._eof:
                        # Everything parsed (every batch ends here): let go
                        # of the buffer.
                        self._buf = b""
                        self._pos = 0
                        return NEED_DATA
                    return self._short(buf, pos)
                vt, rid, clen, plen = HEADER.unpack_from(buf, pos)
                stop = start + clen
                nxt = stop + plen
                if nxt > size:
                    if vt == _V1_STDIN:
                        return self._stdin_begins(buf, pos, rid, clen, plen)
                    return self._short(buf, pos)
                if vt == _V1_STDIN:
                    req = requests.get(rid)
                    if req is not None:
                        state = req.state
                        if state is RECV_STDIN:
                            if clen:
                                if self.max_body_size is not None:
                                    rejected = self._body_limit(rid, req, clen)
                                    if rejected is not None:
                                        self._pos = nxt
                                        return rejected
                                self._pos = nxt
                                data = _new(Data)
                                _set_data_id(data, rid)
                                _set_data(data, buf[start:stop])
                                return data
                            self._pos = nxt
                            req.state = ON_END_OF_MESSAGE
                            return _END_OF_MESSAGES.get(rid) or _end_of_message(rid)
                        _check_stdin(rid, state)
                        # REJECTED or ABORTED: dropped.
                    elif not rid:
                        self._management(STDIN, buf, start, stop)
                    pos = nxt
                elif vt == _V1_PARAMS:
                    req = requests.get(rid)
                    if req is not None:
                        state = req.state
                        if state is RECV_PARAMS:
                            if clen:
                                if req.params is None and buf[nxt : nxt + HEADER_LEN] == (
                                    _PARAMS_ENDS.get(rid) or _params_end(rid)
                                ):
                                    # The whole stream in one record, then the
                                    # empty one (what every front-end sends for
                                    # a usual request): the pairs straight from
                                    # the buffer.
                                    if clen > self.max_params_size:
                                        self._pos = nxt
                                        return self._params_too_big(rid, req)
                                    self._pos = nxt + HEADER_LEN
                                    pairs = _pairs(buf, start, stop)
                                    if clen + len(pairs) * PAIR_COST > self.max_params_size:
                                        return self._params_too_big(rid, req)
                                    if self.max_body_size is not None:
                                        return self._request(rid, req, pairs)
                                    # self._request(), without the cost of a call.
                                    req.state = ON_REQUEST
                                    request = _new(Request)
                                    _set_request_id(request, rid)
                                    _set_params(request, pairs)
                                    _set_keep_conn(request, req.keep_conn)
                                    return request
                                params = req.params
                                if params is None:
                                    params = req.params = bytearray()
                                params += memoryview(buf)[start:stop]
                                if len(params) > self.max_params_size:
                                    self._pos = nxt
                                    return self._params_too_big(rid, req)
                            else:
                                params = req.params
                                req.params = None
                                self._pos = nxt
                                if params is None:
                                    return self._request(rid, req, [])
                                end = len(params)
                                # The two bytes _pairs reads past the end.
                                params += b"\0\0"
                                pairs = _pairs(bytes(params), 0, end)
                                if end + len(pairs) * PAIR_COST > self.max_params_size:
                                    return self._params_too_big(rid, req)
                                return self._request(rid, req, pairs)
                        elif state is RECV_STDIN or state is DONE:
                            raise RemoteProtocolError(
                                f"PARAMS for request {rid} after the end of its PARAMS"
                            )
                        # REJECTED or ABORTED: dropped.
                    elif not rid:
                        self._management(PARAMS, buf, start, stop)
                    pos = nxt
                elif vt == _V1_BEGIN and clen == 8 and rid:
                    pos = nxt
                    if rid in requests:
                        raise RemoteProtocolError(
                            f"BEGIN_REQUEST for request {rid}, already active"
                        )
                    # The body: roleB1, roleB0, flags, 5 reserved bytes.
                    keep_conn = buf[start + 2] & KEEP_CONN == KEEP_CONN
                    if buf[start + 1] != RESPONDER or buf[start]:
                        self._refuse(rid, UNKNOWN_ROLE, keep_conn)
                    elif len(requests) >= self._limit:
                        self._refuse(
                            rid, OVERLOADED if self.multiplex else CANT_MPX_CONN, keep_conn
                        )
                    else:
                        # _Request(keep_conn), without the cost of a call.
                        req = _new(_Request)
                        req.state = ON_BEGIN_REQUEST
                        req.keep_conn = keep_conn
                        req.params = None
                        req.received = 0
                        req.stderr = False
                        requests[rid] = req
                else:
                    event = self._other_record(vt, rid, buf, start, stop)
                    pos = nxt
                    if event is not None:
                        self._pos = pos
                        return event
        except RemoteProtocolError:
            self._broken()
            raise

    def _broken(self) -> None:
        self._buf = None
        self._partial = None
        self._state = ERROR

    def _next_event_slow(self) -> Event | _NeedData:
        buf = self._buf
        if buf is None:
            raise RemoteProtocolError("can't receive after a protocol error")
        if type(buf) is not bytes:
            # A bytearray: part of a record, and whatever arrived since. Parse
            # from bytes again (events carry bytes) once a whole record is
            # there, or as soon as the header of a STDIN record whose content
            # is handed over as it comes is (and at once for the rest of
            # one). Not before: a record that waits to be whole would be
            # copied back into a bytearray at the next read, over and over.
            size = len(buf)
            if not (
                self._partial is not None
                or (
                    size >= HEADER_LEN
                    and (
                        size >= HEADER_LEN + (buf[4] << 8 | buf[5]) + buf[6]
                        or (buf[1] == STDIN and self._streams(buf[2] << 8 | buf[3]))
                    )
                )
            ):
                try:
                    return self._short(buf, 0)
                except RemoteProtocolError:
                    self._broken()
                    raise
            self._buf = bytes(buf)
        return self.next_event()

    def _streams(self, rid: int) -> bool:
        # Whether a STDIN record for rid is handed over as it arrives.
        req = self._requests.get(rid)
        return req is not None and req.state is RECV_STDIN

    def _stdin_begins(
        self, buf: bytes, pos: int, rid: int, clen: int, plen: int
    ) -> Event | _NeedData:
        # A STDIN record whose header is here but not all of its content and
        # padding. For an active request, hand over the content as it comes
        # rather than buffer the whole record: a 64 KiB record costs no more
        # memory than a small one, and no byte is copied twice.
        req = self._requests.get(rid)
        if req is None or not clen or req.state is not RECV_STDIN:
            if req is not None:
                _check_stdin(rid, req.state)
            # Dropped (or empty) records are taken whole, as any other.
            return self._short(buf, pos)
        if self.max_body_size is not None:
            rejected = self._body_limit(rid, req, clen)
            if rejected is not None:
                # The record stays: it is dropped once whole, like the rest
                # of the request's records.
                self._pos = pos
                return rejected
        start = pos + HEADER_LEN
        stop = start + clen
        size = len(buf)
        if stop > size:
            # (rid, its _Request, content still to come, padding still to come)
            self._partial = (rid, req, stop - size, plen)
            end = size
        else:
            self._partial = (rid, req, 0, stop + plen - size)
            end = stop
        self._pos = size
        if end == start:
            return self._short(buf, size)
        data = _new(Data)
        _set_data_id(data, rid)
        _set_data(data, buf[start:end])
        return data

    def _short(self, buf: bytes | bytearray, pos: int) -> Event | _NeedData:
        # Less than a whole record from pos on, or the rest of a STDIN record
        # still to come.
        size = len(buf)
        if pos < size:
            # A wrong version fails at once, without waiting for a length's
            # worth of garbage: an HTTP request sent here fails at "G".
            if buf[pos] != VERSION_1 and self._partial is None:
                raise RemoteProtocolError(
                    f"FastCGI version {buf[pos]}, not 1 (record header"
                    f" {bytes(buf[pos : pos + HEADER_LEN])!r})"
                )
            self._pos = pos
            if self._eof:
                raise RemoteProtocolError(
                    f"connection closed in the middle of a record ({size - pos} bytes of it)"
                )
            return NEED_DATA
        # Everything parsed: let go of the buffer.
        self._buf = b""
        self._pos = 0
        if self._eof:
            if self._partial is not None:
                raise RemoteProtocolError(
                    f"connection closed in the middle of a STDIN record of request"
                    f" {self._partial[0]}"
                )
            for rid, req in self._requests.items():
                if req.state in HALF_RECEIVED:
                    raise RemoteProtocolError(
                        f"connection closed with request {rid} half-received ({req.state!r})"
                    )
            self._state = CLOSED
            return _CONNECTION_CLOSED
        return NEED_DATA

    def _body_limit(self, rid: int, req: _Request, clen: int) -> Event | None:
        # Count a STDIN record against max_body_size (not None): Rejected
        # when it goes over.
        received = req.received + clen
        max_body_size = self.max_body_size
        assert max_body_size is not None
        if received > max_body_size:
            return self._reject(
                rid, req, 413, f"request {rid}: body over the limit of {max_body_size} bytes"
            )
        req.received = received
        return None

    def _request(self, rid: int, req: _Request, params: list[tuple[bytes, bytes]]) -> Event:
        # The PARAMS stream ended: the Request, or Rejected for its length.
        max_body_size = self.max_body_size
        if max_body_size is not None:
            for name, value in params:
                if (
                    name == b"CONTENT_LENGTH"
                    and value.isdigit()
                    and (len(value) > _MAX_CONTENT_LENGTH_DIGITS or int(value) > max_body_size)
                ):
                    return self._reject(
                        rid,
                        req,
                        413,
                        f"request {rid}: CONTENT_LENGTH {value[:32]!r} is over the limit"
                        f" of {max_body_size} bytes",
                    )
        req.state = ON_REQUEST
        request = _new(Request)
        _set_request_id(request, rid)
        _set_params(request, params)
        _set_keep_conn(request, req.keep_conn)
        return request

    def _params_too_big(self, rid: int, req: _Request) -> Event:
        return self._reject(
            rid,
            req,
            431,
            f"request {rid}: PARAMS over the limit of {self.max_params_size} bytes"
            f" (each name-value pair counting {PAIR_COST} more)",
        )

    def _reject(self, rid: int, req: _Request, status: int, reason: str) -> Event:
        req.state = ON_REJECTED
        req.params = None
        return Rejected._make(
            request_id=rid, status_hint=status, reason=reason, keep_conn=req.keep_conn
        )

    def _other_record(self, vt: int, rid: int, buf: bytes, start: int, stop: int) -> Event | None:
        # Every record but the three of a usual request.
        version, rtype = vt >> 8, vt & 0xFF
        if version != VERSION_1:
            raise RemoteProtocolError(f"FastCGI version {version}, not 1")
        if rtype in APPLICATION_ONLY:
            # Only an application sends these: answering an UNKNOWN_TYPE with
            # an UNKNOWN_TYPE could start an endless exchange with a peer
            # built the same way.
            raise RemoteProtocolError(
                f"record type {rtype} ({_TYPE_NAMES[rtype]}) comes from applications,"
                " not web servers"
            )
        if not rid:
            self._management(rtype, buf, start, stop)
            return None
        if rtype == ABORT_REQUEST:
            return self._abort(rid)
        if rtype == BEGIN_REQUEST:
            raise RemoteProtocolError(
                f"BEGIN_REQUEST for request {rid} has {stop - start} bytes of body, not 8"
            )
        # DATA (the FILTER role's stream, which a RESPONDER has none of),
        # GET_VALUES on a request id, and record types this version of the
        # spec doesn't define: ignored, as the spec ignores records for
        # inactive ids. A later version may add application record types.
        return None

    def _management(self, rtype: int, buf: bytes, start: int, stop: int) -> None:
        # A record with the null request id (spec section 4).
        if rtype == GET_VALUES:
            values = {
                b"FCGI_MAX_CONNS": b"%d" % self.max_conns,
                b"FCGI_MAX_REQS": b"%d" % self._limit,
                b"FCGI_MPXS_CONNS": b"1" if self.multiplex else b"0",
            }
            # Only the names asked, once each, in the order asked; the
            # values in the query are empty by the spec, and ignored.
            answer = []
            for name, _ in _pairs(buf, start, stop):
                value = values.pop(name, None)
                if value is not None:
                    answer.append((name, value))
            self._answer(record(GET_VALUES_RESULT, 0, encode_pairs(answer)))
        else:
            # "When an application receives a management record whose type T
            # it does not understand, the application responds with
            # {FCGI_UNKNOWN_TYPE, 0, {T}}": a request record type with the
            # null id is one of those.
            self._answer(record(UNKNOWN_TYPE, 0, bytes((rtype, 0, 0, 0, 0, 0, 0, 0))))

    def _abort(self, rid: int) -> Event | None:
        req = self._requests.get(rid)
        if req is None:
            return None
        state = req.state
        if state is RECV_PARAMS:
            # The server has not heard of this request: it ends here.
            del self._requests[rid]
            if not req.keep_conn:
                self._close_requested = True
            self._answer(_PLAIN_ENDS.get(rid) or _plain_end(rid))
            return None
        if state is ABORTED:
            return None
        req.state = ON_ABORT
        return Abort._make(request_id=rid)

    def _refuse(self, rid: int, protocol_status: int, keep_conn: bool) -> None:
        # A BEGIN_REQUEST the core answers by itself; the id stays inactive,
        # so the rest of its records are ignored.
        if not keep_conn:
            self._close_requested = True
        self.refused += 1
        self.last_refusal = protocol_status
        self._answer(end_request_record(rid, 0, protocol_status))

    def _answer(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size > self.max_pending_output:
            raise RemoteProtocolError(
                f"over {self.max_pending_output} bytes of answers to management records"
                " and refused requests are waiting to be sent"
            )

    # --- sending ---------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """What the core answered by itself since the last call, or ``b""``.

        GET_VALUES_RESULT, UNKNOWN_TYPE, and END_REQUEST for requests it
        refused (unknown role, over the limit) or that were aborted before
        the server heard of them. Send it after each batch of
        :meth:`next_event` calls; it is whole records, so it may go out
        between any two of the server's own records.
        """
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        self._out_size = 0
        return data

    def send_stdout(self, request_id: int, data: bytes | bytearray | memoryview) -> bytes:
        """STDOUT records carrying ``data`` for an active request.

        Records hold at most 65535 bytes each and are padded to a multiple
        of 8. Empty ``data`` gives ``b""``: an empty STDOUT record would end
        the stream, which is :meth:`end_request`'s job.

        Raises:
            LocalProtocolError: the server was not told about that id (no
                Request or Rejected), or it was ended already.
        """
        req = self._requests.get(request_id)
        if req is None or req.state not in KNOWN:
            raise LocalProtocolError(f"request {request_id} is not active")
        return _stream(STDOUT, request_id, data)

    def send_stdout_parts(
        self, request_id: int, data: bytes | bytearray | memoryview
    ) -> list[bytes | memoryview]:
        """:meth:`send_stdout` as a list of buffers for ``sendmsg()``: record headers and
        padding as bytes, the content as views of ``data``, which is not copied."""
        req = self._requests.get(request_id)
        if req is None or req.state not in KNOWN:
            raise LocalProtocolError(f"request {request_id} is not active")
        if type(data) is not bytes and type(data) is not bytearray:
            return [_stream(STDOUT, request_id, data)]
        view = memoryview(data)
        parts: list[bytes | memoryview] = []
        for i in range(0, len(data), MAX_CONTENT_LENGTH):
            chunk = view[i : i + MAX_CONTENT_LENGTH]
            m = len(chunk)
            pad = -m & 7
            parts.append(HEADER_FIELDS.pack(VERSION_1, STDOUT, request_id, m, pad))
            parts.append(chunk)
            if pad:
                parts.append(PADDING[pad])
        return parts

    def send_stderr(self, request_id: int, data: bytes | bytearray | memoryview) -> bytes:
        """STDERR records carrying ``data`` for an active request, as :meth:`send_stdout`.

        The web server logs them (nginx: "FastCGI sent in stderr"). The
        stream is ended by :meth:`end_request`.
        """
        req = self._requests.get(request_id)
        if req is None or req.state not in KNOWN:
            raise LocalProtocolError(f"request {request_id} is not active")
        out = _stream(STDERR, request_id, data)
        if out:
            req.stderr = True
        return out

    def end_request(
        self,
        request_id: int,
        app_status: int = 0,
        protocol_status: int = REQUEST_COMPLETE,
    ) -> bytes:
        """End a request: the empty STDOUT record, then END_REQUEST.

        The id becomes inactive: records the web server still sends for it
        are ignored, until a new BEGIN_REQUEST.

        Args:
            request_id: an id the server was told about.
            app_status: the application's status, 0 to 2**32 - 1 (CGI's
                exit status).
            protocol_status: :data:`REQUEST_COMPLETE` for a request served.

        Raises:
            LocalProtocolError: the id is not active, or a status does not
                fit its field.
        """
        req = self._requests.get(request_id)
        if req is None or req.state not in KNOWN:
            raise LocalProtocolError(f"request {request_id} is not active")
        if app_status or protocol_status or req.stderr:
            if type(app_status) is not int or not 0 <= app_status <= 0xFFFFFFFF:
                raise LocalProtocolError(f"app_status must fit in 4 bytes, got {app_status!r}")
            if type(protocol_status) is not int or not 0 <= protocol_status <= 0xFF:
                raise LocalProtocolError(
                    f"protocol_status must fit in 1 byte, got {protocol_status!r}"
                )
            data = record(STDOUT, request_id) + end_request_record(
                request_id, app_status, protocol_status
            )
            if req.stderr:
                data = record(STDERR, request_id) + data
        else:
            data = _PLAIN_ENDS.get(request_id) or _plain_end(request_id)
        del self._requests[request_id]
        return data


def _stream(rtype: int, request_id: int, data: bytes | bytearray | memoryview) -> bytes:
    """Records of ``rtype`` carrying ``data``: at most 65535 bytes each, padded to 8."""
    if type(data) is not bytes and type(data) is not bytearray:
        if isinstance(data, memoryview):
            # len() of a memoryview counts items, not bytes.
            data = data.cast("B") if data.c_contiguous else data.tobytes()
        elif not isinstance(data, (bytes, bytearray)):
            raise LocalProtocolError(f"data must be bytes-like, got {type(data).__name__}")
    n = len(data)
    if n <= MAX_CONTENT_LENGTH:
        if not n:
            return b""
        pad = -n & 7
        return b"".join(
            (HEADER_FIELDS.pack(VERSION_1, rtype, request_id, n, pad), data, PADDING[pad])
        )
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    for i in range(0, n, MAX_CONTENT_LENGTH):
        chunk = view[i : i + MAX_CONTENT_LENGTH]
        m = len(chunk)
        pad = -m & 7
        parts += (HEADER_FIELDS.pack(VERSION_1, rtype, request_id, m, pad), chunk, PADDING[pad])
    return b"".join(parts)
