"""The uwsgi wire: the one-request-per-connection wire with the uwsgi core.

nginx ``uwsgi_pass`` and Apache mod_proxy_uwsgi send one packet per connection (the vars
block, then a ``CONTENT_LENGTH`` body) and read an HTTP/1.1 status line back
(:func:`trioscgi.uwsgi.response_head`); the rest is
:class:`~trioscgi._wire.oneshot.OneShotConnection`, shared with SCGI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import uwsgi as u
from .oneshot import Core, OneShotConnection, error_responses

if TYPE_CHECKING:
    from .._config import Config

__all__ = ["UWSGIConnection"]


class UWSGIConnection(OneShotConnection):
    """Serve one uwsgi request on an accepted socket; the task that runs it owns the socket."""

    __slots__ = ()

    wire = "uwsgi"
    _NEED_DATA = u.NEED_DATA
    _REQUEST = u.Request
    _DATA = u.Data
    _REMOTE_ERROR = u.RemoteProtocolError
    # 501: a packet with another modifier (uWSGI's management packets, other plugins).
    _ERROR_RESPONSES = error_responses(u.response_head, (400, 408, 413, 431, 501))

    @staticmethod
    def _new_core(config: Config) -> Core:
        # The vars block's size is a u16: max_header_size above 65535 is the format's bound.
        return u.Connection(
            max_vars_size=min(config.max_header_size, 0xFFFF),
            max_body_size=config.max_body_size,
        )

    _head_bytes = staticmethod(u.response_head)
