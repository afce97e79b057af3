"""A sans-I/O uwsgi server-side protocol core (the request packet of uWSGI's protocol).

Used like :mod:`trioscgi.scgi`, whose shape it shares (one request per
connection, a head then a ``CONTENT_LENGTH``-framed body, a response head
then its body): the same states, the same ``Data``, ``EndOfMessage`` and
``ConnectionClosed`` events, the same errors, all from trioscgi._core. No
I/O, no trio, no logging, no clock. What differs is the head: a 4-byte
packet header and a block of u16-sized vars in, where SCGI has a netstring;
and out, an HTTP/1.1 status line and headers (what nginx's uwsgi module and
Apache mod_proxy_uwsgi read) where SCGI writes CGI's ``Status:``.
"""

from .._core.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .._core.events import NEED_DATA, ConnectionClosed, Data, EndOfMessage, Event
from .._core.oneshot import (
    CLOSED,
    DONE,
    ERROR,
    RECV_BODY,
    RECV_HEADER,
    SEND_BODY,
    SEND_RESPONSE,
    State,
)
from ._connection import (
    DEFAULT_MAX_VARS,
    DEFAULT_MAX_VARS_SIZE,
    HEADER_LEN,
    Connection,
    response_head,
)
from ._errors import UnsupportedModifier
from ._events import REQUEST_MODIFIERS, Request, Response

# The connection and its packet, its events, its errors, its states.
__all__ = ["DEFAULT_MAX_VARS", "DEFAULT_MAX_VARS_SIZE", "NEED_DATA", "Connection"]
__all__ += ["HEADER_LEN", "REQUEST_MODIFIERS", "response_head"]
__all__ += ["ConnectionClosed", "Data", "EndOfMessage", "Event", "Request", "Response"]
__all__ += ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]
__all__ += ["UnsupportedModifier"]
__all__ += ["RECV_BODY", "RECV_HEADER", "SEND_BODY", "SEND_RESPONSE", "State"]
__all__ += ["CLOSED", "DONE", "ERROR"]
