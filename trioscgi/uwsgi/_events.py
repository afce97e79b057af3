"""The events of a uwsgi connection: what the peer sent, and what we send.

Events are frozen and keyword-only. Those built by user code are validated
on construction; the parser builds its own without the checks, since it has
already proved what it found. ``Data``, ``EndOfMessage`` and
``ConnectionClosed`` are SCGI's too (trioscgi._core.events).
"""

from __future__ import annotations

from dataclasses import dataclass

from .._core.errors import LocalProtocolError
from .._core.events import ConnectionClosed, Data, EndOfMessage, EnvironRequest, Event, ResponseBase

__all__ = ["ConnectionClosed", "Data", "EndOfMessage", "Event", "Request", "Response"]


def _check_u16(value: object, what: str) -> None:
    if type(value) is not bytes or len(value) > 0xFFFF:
        raise LocalProtocolError(f"{what} must be bytes of at most 65535, got {value!r:.60}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Request(EnvironRequest):
    """The request head: the packet header and its vars.

    Attributes:
        environ: ``(name, value)`` pairs in wire order. Duplicate names are
            kept (nginx before 1.23 repeats a header sent twice, as two
            ``HTTP_COOKIE``; later versions join them), except
            ``CONTENT_LENGTH``, which frames the body and may appear once.
        modifier1: 0, a WSGI/ASGI request; or 30, the same request from a
            front-end configured with ``uwsgi_modifier1 30``, uWSGI's old
            way of saying "strip SCRIPT_NAME from the front of PATH_INFO".
        modifier2: always 0.
    """

    environ: list[tuple[bytes, bytes]]
    modifier1: int = 0
    modifier2: int = 0

    def __post_init__(self) -> None:
        size = 0
        for pair in self.environ:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise LocalProtocolError(f"environ entries must be (bytes, bytes), got {pair!r}")
            _check_u16(pair[0], "an environ name")
            _check_u16(pair[1], "an environ value")
            if not pair[0]:
                raise LocalProtocolError(f"environ entry with an empty name: {pair!r}")
            size += 4 + len(pair[0]) + len(pair[1])
        if size > 0xFFFF:
            raise LocalProtocolError(f"environ of {size} bytes does not fit a uwsgi packet")
        if self.modifier1 not in REQUEST_MODIFIERS or self.modifier2 != 0:
            raise LocalProtocolError(
                f"not a request's modifiers: {self.modifier1!r}, {self.modifier2!r}"
            )


# modifier1 values that carry a WSGI-style request: 0, and 30 (uWSGI's
# UWSGI_MODIFIER_MANAGE_PATH_INFO, the documented nginx recipe for an app
# under a prefix: `uwsgi_param SCRIPT_NAME /app; uwsgi_modifier1 30;`).
REQUEST_MODIFIERS = frozenset({0, 30})


@dataclass(frozen=True, slots=True, kw_only=True)
class Response(ResponseBase):
    """The response head, written as an HTTP/1.1 status line and headers (see ResponseBase)."""
