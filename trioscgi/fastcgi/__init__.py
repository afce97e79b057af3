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

from .._core.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from . import _records
from ._connection import (
    DEFAULT_MAX_CONNS,
    DEFAULT_MAX_PARAMS_SIZE,
    DEFAULT_MAX_PENDING_OUTPUT,
    NEED_DATA,
    PAIR_COST,
    Connection,
)
from ._events import (
    Abort,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Rejected,
    Request,
)
from ._records import *  # noqa: F403  (the spec's constants: _records.__all__)
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

# The connection and its limits, its events, its errors, its states, the record constants.
__all__ = ["DEFAULT_MAX_CONNS", "DEFAULT_MAX_PARAMS_SIZE", "DEFAULT_MAX_PENDING_OUTPUT"]
__all__ += ["NEED_DATA", "PAIR_COST", "Connection"]
__all__ += ["Abort", "ConnectionClosed", "Data", "EndOfMessage", "Event", "Rejected", "Request"]
__all__ += ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]
__all__ += ["ABORTED", "DONE", "RECV_PARAMS", "RECV_STDIN", "REJECTED", "State"]
__all__ += ["CLOSED", "ERROR", "OPEN"]
__all__ += _records.__all__
