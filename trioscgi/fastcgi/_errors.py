"""The errors of the FastCGI protocol core."""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Something broke the FastCGI protocol.

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

    For example, writing STDOUT for a request id that is not active, or an
    app status that does not fit in four bytes.
    """


class RemoteProtocolError(ProtocolError):
    """The peer (the web server) sent something invalid.

    FastCGI records carry no resynchronisation point, so nothing after the
    error can be trusted: the connection is then in the ``ERROR`` state for
    good, and must be closed. (A limit broken by one request is not an
    error of the connection: that request gets :class:`Rejected`.)
    """
