"""The errors of the uwsgi core: the cores' one hierarchy (trioscgi._core.errors), and its own."""

from __future__ import annotations

from .._core.errors import LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "UnsupportedModifier",
]


class UnsupportedModifier(RemoteProtocolError):
    """The packet is not a request this core serves: its modifiers say something else.

    uWSGI multiplexes many packet kinds over one header by ``modifier1``
    (requests for its Perl, Ruby, Lua... plugins, spooler and cache
    commands, pings, signals). Only the WSGI/ASGI request is served here;
    the rest would need uWSGI itself. ``error_status_hint`` is 501: a front-end
    configured with another ``uwsgi_modifier1`` shows its client a clear error.

    Attributes:
        modifier1: the packet's first header byte.
        modifier2: its last header byte.
    """

    def __init__(self, msg: str, modifier1: int, modifier2: int) -> None:
        super().__init__(msg, 501)
        self.modifier1 = modifier1
        self.modifier2 = modifier2
