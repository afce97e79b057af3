"""A sans-I/O uwsgi server-side protocol core (the request packet of uWSGI's protocol).

Bytes in, events out; events in, bytes out. It imports no trio, does no
logging and reads no clock, so it runs under any I/O library and in tests
with nothing but bytes::

    conn = Connection()
    conn.receive_data(sock.recv(65536))
    event = conn.next_event()   # Request, Data, EndOfMessage, ConnectionClosed or NEED_DATA
    sock.sendall(conn.send(Response(status=200, headers=[(b"content-type", b"text/plain")])))

The response goes back as an HTTP/1.1 status line and headers, which is
what nginx's uwsgi module and Apache mod_proxy_uwsgi read.
"""

from ._connection import (
    DEFAULT_MAX_VARS,
    DEFAULT_MAX_VARS_SIZE,
    HEADER_LEN,
    NEED_DATA,
    Connection,
    response_head,
)
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError, UnsupportedModifier
from ._events import (
    REQUEST_MODIFIERS,
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
    RECV_BODY,
    RECV_HEADER,
    SEND_BODY,
    SEND_RESPONSE,
    State,
)

__all__ = [
    "CLOSED",
    "DEFAULT_MAX_VARS",
    "DEFAULT_MAX_VARS_SIZE",
    "DONE",
    "ERROR",
    "HEADER_LEN",
    "NEED_DATA",
    "RECV_BODY",
    "RECV_HEADER",
    "REQUEST_MODIFIERS",
    "SEND_BODY",
    "SEND_RESPONSE",
    "Connection",
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Event",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "Response",
    "State",
    "UnsupportedModifier",
    "response_head",
]
