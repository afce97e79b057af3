"""The states of an SCGI connection and every rule that moves between them.

SCGI carries exactly one request per connection, so each side walks its
states once: the peer's (the request) and ours (the response). The states
and our side's table are uwsgi's too (trioscgi._core.oneshot); the peer's
table starts from SCGI's own head state, ``RECV_HEADERS``.
"""

from __future__ import annotations

from typing import Final

from .._core.oneshot import OUR_TRANSITIONS, RECV_HEADERS, State, their_transitions

__all__ = ["OUR_TRANSITIONS", "THEIR_TRANSITIONS", "State"]

# (state, event class name) -> next state. Anything not listed is a protocol error.
THEIR_TRANSITIONS: Final[dict[tuple[State, str], State]] = their_transitions(RECV_HEADERS)
