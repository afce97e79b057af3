"""The errors of the uwsgi protocol core."""

from __future__ import annotations

__all__ = [
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "UnsupportedModifier",
]


class ProtocolError(Exception):
    """Something broke the uwsgi protocol.

    Never raised directly: it is either a :class:`LocalProtocolError` (this
    side misused the API) or a :class:`RemoteProtocolError` (the peer sent
    something invalid). ``error_status_hint`` is the HTTP status a server
    should answer with when a response is still possible.
    """

    def __init__(self, msg: str, error_status_hint: int = 400) -> None:
        if type(self) is ProtocolError:
            raise TypeError("tried to raise ProtocolError directly; use a subclass")
        super().__init__(msg)
        self.error_status_hint = error_status_hint


class LocalProtocolError(ProtocolError):
    """This side tried to do something the protocol does not allow.

    For example, a response header containing CR or LF, or sending a body
    before the response head.
    """


class RemoteProtocolError(ProtocolError):
    """The peer (the front-end) sent something invalid.

    The connection is then in the ``ERROR`` state for good: answer with
    ``error_status_hint`` if possible, and close.
    """


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
