"""One request per connection, a head then a CONTENT_LENGTH-framed body: SCGI's and uwsgi's shape.

Both protocols carry exactly one request per connection, so each side walks
its states once: the peer's (the request) and ours (the response). The two
sides are independent, so an error answer can be sent while the request is
broken or unfinished. Everything but the head is the same in both: the body
is ``CONTENT_LENGTH`` bytes, the response is a head then body bytes until
the connection closes. :class:`OneShotConnection` holds that; each core's
``Connection`` adds its head parser (``_next_head``), its response head
(``_response_head``) and its table of the peer's transitions.
"""

from __future__ import annotations

from typing import Any, Final

from .enums import Named
from .errors import LocalProtocolError, RemoteProtocolError
from .events import NEED_DATA, ConnectionClosed, Data, EndOfMessage, Event, _NeedData

__all__ = ["OUR_TRANSITIONS", "OneShotConnection", "State"]


class State(Named):
    """A state of one side of an SCGI or uwsgi connection.

    The cores share it; each uses its own name for the wait for the head:
    ``RECV_HEADERS`` (SCGI's netstring of headers) or ``RECV_HEADER``
    (uwsgi's 4-byte header and vars block).
    """

    # The peer's side: the request.
    RECV_HEADERS = "RECV_HEADERS"  # SCGI: waiting for the netstring of headers
    RECV_HEADER = "RECV_HEADER"  # uwsgi: waiting for the 4-byte header and the vars block
    RECV_BODY = "RECV_BODY"  # reading CONTENT_LENGTH bytes of body
    # Our side: the response.
    SEND_RESPONSE = "SEND_RESPONSE"  # the response head is still to be sent
    SEND_BODY = "SEND_BODY"  # head sent, body bytes may follow
    # Both sides.
    DONE = "DONE"  # this side's message is complete
    CLOSED = "CLOSED"  # the peer closed its end after the request (or before it)
    ERROR = "ERROR"  # a protocol error happened; the side stays here


RECV_HEADERS: Final = State.RECV_HEADERS
RECV_HEADER: Final = State.RECV_HEADER
RECV_BODY: Final = State.RECV_BODY
SEND_RESPONSE: Final = State.SEND_RESPONSE
SEND_BODY: Final = State.SEND_BODY
DONE: Final = State.DONE
CLOSED: Final = State.CLOSED
ERROR: Final = State.ERROR


def their_transitions(head: State) -> dict[tuple[State, str], State]:
    """The peer's (state, event class name) -> next state, waiting for the head in ``head``.

    Anything not listed is a protocol error. Event classes are named rather
    than imported to keep the tables free of cycles; the tests hold the
    parsers to them.
    """
    return {
        (head, "Request"): RECV_BODY,
        (head, "ConnectionClosed"): CLOSED,  # connected and closed without a byte
        (RECV_BODY, "Data"): RECV_BODY,
        (RECV_BODY, "EndOfMessage"): DONE,
        (DONE, "ConnectionClosed"): CLOSED,
        (CLOSED, "ConnectionClosed"): CLOSED,  # asked again: still closed (as h11)
    }


# Ours, the same in both protocols: the head, body bytes, the end.
OUR_TRANSITIONS: Final[dict[tuple[State, str], State]] = {
    (SEND_RESPONSE, "Response"): SEND_BODY,
    (SEND_BODY, "Data"): SEND_BODY,
    (SEND_BODY, "EndOfMessage"): DONE,
}

# The parser's fast path for its own events (STYLE.md 3): set the slot
# directly, and share the two field-less events, which are frozen and
# compare equal anyway.
new_event = object.__new__
_set_data = Data.__dict__["data"].__set__
END_OF_MESSAGE: Final = EndOfMessage._make()
CONNECTION_CLOSED: Final = ConnectionClosed._make()


def check_body_limit(max_body_size: int | None) -> None:
    """Refuse a negative ``max_body_size`` (``None``: no limit), when a connection is made."""
    if max_body_size is not None and max_body_size < 0:
        raise ValueError("max_body_size must not be negative")


# What a new connection holds besides its head state and limits: our state, the
# buffer, EOF, the body still to come. A subclass's __init__ unpacks it, after its
# head state, in one step (a call to a shared __init__ costs a new connection about
# 800 instructions).
FRESH: Final[tuple[State, bytes, bool, int]] = (SEND_RESPONSE, b"", False, 0)


class OneShotConnection:
    """The part of an SCGI or uwsgi ``Connection`` that is not the head.

    Subclasses set ``_their_state`` to their head state and the rest from
    :data:`FRESH` (one unpacking), and ``max_body_size``; they implement
    ``_next_head()`` (parse the head from ``_buf``: return the ``Request``
    with ``_body_left`` set and the state moved to ``RECV_BODY``, or
    ``NEED_DATA``) and name their ``_response_head`` encoder.
    """

    __slots__ = (
        "_body_left",
        "_buf",
        "_eof",
        "_our_state",
        "_their_state",
        "max_body_size",
    )

    @staticmethod
    def _response_head(event: Any) -> bytes:
        # The bytes of the response head, from a Response event of the core: a
        # subclass names its encoder (a static method: no call in between).
        raise NotImplementedError

    _their_state: State
    _our_state: State
    _buf: bytes | bytearray
    _eof: bool
    _body_left: int
    max_body_size: int | None

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
                # Keep a reference, not a copy, but never to a caller's
                # mutable buffer: it may be reused for the next read.
                if type(data) is not bytes:
                    data = bytes(data)
                self._buf = data
            elif isinstance(buf, bytearray):
                buf += data
            else:
                self._buf = bytearray(buf) + data
        else:
            self._eof = True

    def next_event(self) -> Event | _NeedData:
        """The next event of the request, or :data:`NEED_DATA`.

        Returns:
            ``Request`` first, then ``Data`` (all the body bytes buffered so
            far, up to CONTENT_LENGTH) until ``EndOfMessage``, then
            ``ConnectionClosed`` once EOF is seen (and again on every later
            call, like h11). :data:`NEED_DATA` when the buffered bytes don't
            make the next event yet.

        Raises:
            RemoteProtocolError: the peer sent something invalid. The
                connection's peer side is then in ``ERROR`` for good.
        """
        state = self._their_state
        try:
            if state is RECV_BODY:
                if not self._body_left:
                    self._their_state = DONE
                    return END_OF_MESSAGE
                return self._next_body_event()
            if state is RECV_HEADERS or state is RECV_HEADER:
                return self._next_head()
            if state is DONE:
                if self._eof:
                    self._their_state = CLOSED
                    return CONNECTION_CLOSED
                return NEED_DATA
            if state is CLOSED:
                return CONNECTION_CLOSED
            raise RemoteProtocolError("can't receive after a protocol error")
        except RemoteProtocolError:
            self._their_state = ERROR
            raise

    def _next_head(self) -> Event | _NeedData:
        raise NotImplementedError

    def _closed_before_head(self) -> Event:
        # Connected and closed without a byte: a health check or a front-end
        # giving up early. Not an error worth a log line.
        self._their_state = CLOSED
        return CONNECTION_CLOSED

    def _body_size(self, content_length: int) -> int:
        # The body's length, within max_body_size: checked before any of it is read.
        max_body_size = self.max_body_size
        if max_body_size is not None and content_length > max_body_size:
            raise RemoteProtocolError(
                f"body of {content_length} bytes is over the limit of {max_body_size}", 413
            )
        return content_length

    def _next_body_event(self) -> Event | _NeedData:
        left = self._body_left
        buf = self._buf
        if buf:
            if len(buf) <= left:
                data = buf if type(buf) is bytes else bytes(buf)
                self._buf = b""
            else:
                data = bytes(buf[:left])
                self._buf = buf[left:]
            self._body_left = left - len(data)
            event = new_event(Data)
            _set_data(event, data)
            return event
        if self._eof:
            raise RemoteProtocolError(f"connection closed with {left} bytes of body missing")
        return NEED_DATA

    # --- sending ---------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """The bytes that put ``event`` on the wire.

        ``Response`` becomes the protocol's response head, ``Data`` passes
        through, ``EndOfMessage`` is empty: the response ends when the
        connection closes.

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
        if state is SEND_RESPONSE:
            return self._response_head(event)
        return b""

    def send_failed(self) -> None:
        """Note that sending failed: our side goes to ``ERROR``."""
        self._our_state = ERROR
