"""The SCGI wire: the one-request-per-connection wire with the SCGI core.

It reads the netstring head with :mod:`trioscgi.scgi` and answers with a CGI-style head
(``Status: 200 OK``); the rest is :class:`~trioscgi._wire.oneshot.OneShotConnection`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import scgi as p
from .oneshot import Core, OneShotConnection, error_responses

if TYPE_CHECKING:
    from .._config import Config

__all__ = ["SCGIConnection"]


class SCGIConnection(OneShotConnection):
    """Serve one SCGI request on an accepted socket; the task that runs it owns the socket."""

    __slots__ = ()

    wire = "scgi"
    _NEED_DATA = p.NEED_DATA
    _REQUEST = p.Request
    _DATA = p.Data
    _REMOTE_ERROR = p.RemoteProtocolError
    _ERROR_RESPONSES = error_responses(p.response_head, (400, 408, 413, 431))

    @staticmethod
    def _new_core(config: Config) -> Core:
        return p.Connection(
            max_header_size=config.max_header_size, max_body_size=config.max_body_size
        )

    _head_bytes = staticmethod(p.response_head)
