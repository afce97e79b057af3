"""The states of a uwsgi connection and every rule that moves between them.

The uwsgi protocol carries exactly one request per connection (there is no
keep-alive), so each side walks its states once, as in SCGI: the states and
our side's table are SCGI's too (trioscgi._core.oneshot); the peer's table
starts from uwsgi's own head state, ``RECV_HEADER``.
"""

from __future__ import annotations

from typing import Final

from .._core.oneshot import OUR_TRANSITIONS, RECV_HEADER, State, their_transitions

__all__ = ["OUR_TRANSITIONS", "THEIR_TRANSITIONS", "State"]

# (state, event class name) -> next state. Anything not listed is a protocol error.
THEIR_TRANSITIONS: Final[dict[tuple[State, str], State]] = their_transitions(RECV_HEADER)
