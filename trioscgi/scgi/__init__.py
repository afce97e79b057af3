"""A sans-I/O SCGI server-side protocol core.

Bytes in, events out; events in, bytes out. It imports no trio, does no
logging and reads no clock, so it runs under any I/O library and in tests
with nothing but bytes::

    conn = Connection()
    conn.receive_data(sock.recv(65536))
    event = conn.next_event()   # Request, Data, EndOfMessage, ConnectionClosed or NEED_DATA
    sock.sendall(conn.send(Response(status=200, headers=[(b"content-type", b"text/plain")])))
"""

from .._core.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .._core.events import NEED_DATA, ConnectionClosed, Data, EndOfMessage, Event
from .._core.oneshot import (
    CLOSED,
    DONE,
    ERROR,
    RECV_BODY,
    RECV_HEADERS,
    SEND_BODY,
    SEND_RESPONSE,
    State,
)
from ._connection import DEFAULT_MAX_HEADER_SIZE, Connection, response_head
from ._events import Request, Response

# The connection, its events, its errors, its states.
__all__ = ["DEFAULT_MAX_HEADER_SIZE", "NEED_DATA", "Connection", "response_head"]
__all__ += ["ConnectionClosed", "Data", "EndOfMessage", "Event", "Request", "Response"]
__all__ += ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]
__all__ += ["RECV_BODY", "RECV_HEADERS", "SEND_BODY", "SEND_RESPONSE", "State"]
__all__ += ["CLOSED", "DONE", "ERROR"]
