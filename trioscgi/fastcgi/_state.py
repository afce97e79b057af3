"""The states of a FastCGI connection and of its requests, and every rule that moves between them.

A connection carries many requests, one after another (FCGI_KEEP_CONN) or
at once (multiplexing), each under its request id. Each active id walks its
own states; the connection itself is open, closed or broken.
"""

from __future__ import annotations

from typing import Final

from .._core.enums import Named


class State(Named):
    """A state of the connection or of one of its requests."""

    # A request, from BEGIN_REQUEST until the server's end_request().
    RECV_PARAMS = "RECV_PARAMS"  # reading the PARAMS stream; the server knows nothing yet
    RECV_STDIN = "RECV_STDIN"  # Request emitted; reading the STDIN stream
    DONE = "DONE"  # EndOfMessage emitted; the server is answering
    REJECTED = "REJECTED"  # Rejected emitted; the core drops the id's records
    ABORTED = "ABORTED"  # Abort emitted; the core drops the id's records
    # The connection.
    OPEN = "OPEN"
    CLOSED = "CLOSED"  # EOF seen at a record boundary, nothing half-received
    ERROR = "ERROR"  # the peer sent garbage; the connection stays here


RECV_PARAMS: Final = State.RECV_PARAMS
RECV_STDIN: Final = State.RECV_STDIN
DONE: Final = State.DONE
REJECTED: Final = State.REJECTED
ABORTED: Final = State.ABORTED
OPEN: Final = State.OPEN
CLOSED: Final = State.CLOSED
ERROR: Final = State.ERROR

# (state of the id, what happened) -> its next state; None is "not active".
# What happened is a record type the core handles without an event
# ("BEGIN_REQUEST", "ABORT_REQUEST" before the server knows the id), an
# event class name, or "end_request" (the server's call). Anything not
# listed does not happen: the tests hold the parser to this table.
REQUEST_TRANSITIONS: Final[dict[tuple[State | None, str], State | None]] = {
    (None, "BEGIN_REQUEST"): RECV_PARAMS,  # RESPONDER, under the limit
    (RECV_PARAMS, "Request"): RECV_STDIN,  # the empty PARAMS record
    (RECV_PARAMS, "Rejected"): REJECTED,  # PARAMS over the limit, or CONTENT_LENGTH
    # Aborted before the server heard of it: the core answers END_REQUEST.
    (RECV_PARAMS, "ABORT_REQUEST"): None,
    (RECV_STDIN, "Data"): RECV_STDIN,
    (RECV_STDIN, "EndOfMessage"): DONE,  # the empty STDIN record
    (RECV_STDIN, "Rejected"): REJECTED,  # STDIN over the limit
    (RECV_STDIN, "Abort"): ABORTED,
    (DONE, "Abort"): ABORTED,
    (REJECTED, "Abort"): ABORTED,
    (RECV_STDIN, "end_request"): None,  # answered before the body ended
    (DONE, "end_request"): None,
    (REJECTED, "end_request"): None,
    (ABORTED, "end_request"): None,
}


def _target(what: str) -> State:
    # Where every row for `what` leads, the one state the parser sets for it
    # without looking its row up (the row is the state it has just tested).
    # Import fails if the rows disagree or lead out of the table (None: the
    # parser frees the id instead).
    (after,) = {after for (_, name), after in REQUEST_TRANSITIONS.items() if name == what}
    if after is None:
        raise ValueError(f"{what} ends the request: no state to set")
    return after


# The states the parser sets, read from the table: the table is their one home, and
# the parser pays nothing for it (a module global, as a bare state was).
ON_BEGIN_REQUEST: Final = _target("BEGIN_REQUEST")
ON_REQUEST: Final = _target("Request")
ON_END_OF_MESSAGE: Final = _target("EndOfMessage")
ON_REJECTED: Final = _target("Rejected")
ON_ABORT: Final = _target("Abort")

# Ids whose input is still arriving: EOF while one exists loses part of a
# request, so it is an error, not ConnectionClosed.
HALF_RECEIVED: Final = frozenset({RECV_PARAMS, RECV_STDIN})
# Ids the server was told about (Request or Rejected): only these may be
# answered with send_stdout() and end_request().
KNOWN: Final = frozenset({RECV_STDIN, DONE, REJECTED, ABORTED})
