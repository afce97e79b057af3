"""A sans-I/O FastCGI application-side protocol core (the RESPONDER role).

Bytes in, events out; answers out as records. It imports no trio, does no
logging and reads no clock, so it runs under any I/O library and in tests
with nothing but bytes::

    conn = Connection()
    conn.receive_data(sock.recv(65536))
    event = conn.next_event()   # Request, Data, EndOfMessage, Abort, Rejected,
                                # ConnectionClosed or NEED_DATA
    sock.sendall(conn.data_to_send())   # what the core answered by itself
    sock.sendall(conn.send_stdout(event.request_id, b"Status: 200 OK\\r\\n\\r\\nhello"))
    sock.sendall(conn.end_request(event.request_id))
"""

from ._connection import (
    DEFAULT_MAX_CONNS,
    DEFAULT_MAX_PARAMS_SIZE,
    DEFAULT_MAX_PENDING_OUTPUT,
    NEED_DATA,
    PAIR_COST,
    Connection,
)
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._events import (
    Abort,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Rejected,
    Request,
)
from ._records import (
    ABORT_REQUEST,
    AUTHORIZER,
    BEGIN_REQUEST,
    CANT_MPX_CONN,
    DATA,
    END_REQUEST,
    FCGI_LISTENSOCK_FILENO,
    FILTER,
    GET_VALUES,
    GET_VALUES_RESULT,
    HEADER_LEN,
    KEEP_CONN,
    MAX_CONTENT_LENGTH,
    OVERLOADED,
    PARAMS,
    REQUEST_COMPLETE,
    RESPONDER,
    STDERR,
    STDIN,
    STDOUT,
    UNKNOWN_ROLE,
    UNKNOWN_TYPE,
    VERSION_1,
)
from ._state import (
    ABORTED,
    CLOSED,
    DONE,
    ERROR,
    OPEN,
    RECV_PARAMS,
    RECV_STDIN,
    REJECTED,
    State,
)

__all__ = [
    "ABORTED",
    "ABORT_REQUEST",
    "AUTHORIZER",
    "BEGIN_REQUEST",
    "CANT_MPX_CONN",
    "CLOSED",
    "DATA",
    "DEFAULT_MAX_CONNS",
    "DEFAULT_MAX_PARAMS_SIZE",
    "DEFAULT_MAX_PENDING_OUTPUT",
    "DONE",
    "END_REQUEST",
    "ERROR",
    "FCGI_LISTENSOCK_FILENO",
    "FILTER",
    "GET_VALUES",
    "GET_VALUES_RESULT",
    "HEADER_LEN",
    "KEEP_CONN",
    "MAX_CONTENT_LENGTH",
    "NEED_DATA",
    "OPEN",
    "OVERLOADED",
    "PAIR_COST",
    "PARAMS",
    "RECV_PARAMS",
    "RECV_STDIN",
    "REJECTED",
    "REQUEST_COMPLETE",
    "RESPONDER",
    "STDERR",
    "STDIN",
    "STDOUT",
    "UNKNOWN_ROLE",
    "UNKNOWN_TYPE",
    "VERSION_1",
    "Abort",
    "Connection",
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Event",
    "LocalProtocolError",
    "ProtocolError",
    "Rejected",
    "RemoteProtocolError",
    "Request",
    "State",
]
