"""The errors of the sans-I/O cores: one hierarchy for SCGI, FastCGI and uwsgi.

The three cores raise the same classes (``trioscgi.scgi.RemoteProtocolError is
trioscgi.fastcgi.RemoteProtocolError``): a server that serves several protocols catches
one class, and the hint means the same everywhere. docs/protocol.md says why.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Something broke the protocol (SCGI, FastCGI or uwsgi).

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

    For example, a response header containing CR or LF, sending a body
    before the response head, or writing FastCGI STDOUT for a request id
    that is not active.
    """


class RemoteProtocolError(ProtocolError):
    """The peer (the front-end) sent something invalid.

    The connection is then in the ``ERROR`` state for good: answer with
    ``error_status_hint`` if possible, and close. (FastCGI records carry no
    resynchronisation point either, so nothing after the error can be
    trusted there; a limit broken by one FastCGI request is not an error of
    the connection: that request gets :class:`trioscgi.fastcgi.Rejected`.)
    """
