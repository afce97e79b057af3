"""The states of an SCGI connection and every rule that moves between them.

SCGI carries exactly one request per connection, so each side walks its
states once: the peer's (the request) and ours (the response). The two
sides are independent, so an error answer can be sent while the request
is broken or unfinished.
"""

from __future__ import annotations

import enum
from typing import Final


class State(enum.Enum):
    """A state of one side of the connection."""

    # The peer's side: the request.
    RECV_HEADERS = "RECV_HEADERS"  # waiting for the netstring of headers
    RECV_BODY = "RECV_BODY"  # reading CONTENT_LENGTH bytes of body
    # Our side: the response.
    SEND_RESPONSE = "SEND_RESPONSE"  # the response head is still to be sent
    SEND_BODY = "SEND_BODY"  # head sent, body bytes may follow
    # Both sides.
    DONE = "DONE"  # this side's message is complete
    CLOSED = "CLOSED"  # the peer closed its end after the request (or before it)
    ERROR = "ERROR"  # a protocol error happened; the side stays here

    def __repr__(self) -> str:
        return self.name


RECV_HEADERS: Final = State.RECV_HEADERS
RECV_BODY: Final = State.RECV_BODY
SEND_RESPONSE: Final = State.SEND_RESPONSE
SEND_BODY: Final = State.SEND_BODY
DONE: Final = State.DONE
CLOSED: Final = State.CLOSED
ERROR: Final = State.ERROR

# (state, event class name) -> next state. Anything not listed is a
# protocol error. Event classes are named rather than imported to keep
# this table free of cycles.
THEIR_TRANSITIONS: Final[dict[tuple[State, str], State]] = {
    (RECV_HEADERS, "Request"): RECV_BODY,
    (RECV_HEADERS, "ConnectionClosed"): CLOSED,  # connected and closed without a byte
    (RECV_BODY, "Data"): RECV_BODY,
    (RECV_BODY, "EndOfMessage"): DONE,
    (DONE, "ConnectionClosed"): CLOSED,
    (CLOSED, "ConnectionClosed"): CLOSED,  # asked again: still closed (as h11)
}

OUR_TRANSITIONS: Final[dict[tuple[State, str], State]] = {
    (SEND_RESPONSE, "Response"): SEND_BODY,
    (SEND_BODY, "Data"): SEND_BODY,
    (SEND_BODY, "EndOfMessage"): DONE,
}
