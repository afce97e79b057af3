"""The events of an SCGI connection: what the peer sent, and what we send.

Events are frozen and keyword-only. Those built by user code are validated
on construction; the parser builds its own through ``_make`` without the
checks, since it has already proved what it found. ``Data``,
``EndOfMessage`` and ``ConnectionClosed`` are uwsgi's too
(trioscgi._core.events).
"""

from __future__ import annotations

from dataclasses import dataclass

from .._core.errors import LocalProtocolError
from .._core.events import ConnectionClosed, Data, EndOfMessage, EnvironRequest, Event, ResponseBase
from .._core.headers import normalize_headers

__all__ = ["ConnectionClosed", "Data", "EndOfMessage", "Event", "Request", "Response"]
__all__ += ["normalize_headers"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Request(EnvironRequest):
    """The request head: the SCGI header block.

    Attributes:
        environ: ``(name, value)`` pairs in wire order. Duplicate names are
            kept: nginx before 1.23 repeats a header sent twice (two
            ``HTTP_COOKIE``), later versions join them.
    """

    environ: list[tuple[bytes, bytes]]

    def __post_init__(self) -> None:
        for pair in self.environ:
            if (
                not isinstance(pair, tuple)
                or len(pair) != 2
                or not isinstance(pair[0], bytes)
                or not isinstance(pair[1], bytes)
            ):
                raise LocalProtocolError(f"environ entries must be (bytes, bytes), got {pair!r}")
            if not pair[0] or 0 in pair[0] or 0 in pair[1]:
                raise LocalProtocolError(f"invalid environ entry {pair!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Response(ResponseBase):
    """The response head, written as a CGI-style header block (see ResponseBase)."""
