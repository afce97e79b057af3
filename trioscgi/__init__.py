"""trioscgi: a trio-native gateway server for ASGI and WSGI applications behind a web server.

A gateway server for SCGI and FastCGI (and uwsgi: its sans-I/O core is here, its wire is
next) behind nginx, Apache, lighttpd or HAProxy. The public API: :func:`serve`, :class:`Config`
and the protocol cores :mod:`trioscgi.scgi`, :mod:`trioscgi.fastcgi`, :mod:`trioscgi.uwsgi`
(``trioscgi.protocol``: a deprecated alias of ``trioscgi.scgi``).
"""

from . import fastcgi, protocol, scgi, uwsgi
from ._asgi.lifespan import LifespanFailure
from ._config import Config, ConfigError
from ._listeners import BindError
from ._server import serve
from ._version import __version__

__all__ = [
    "BindError",
    "Config",
    "ConfigError",
    "LifespanFailure",
    "__version__",
    "fastcgi",
    "protocol",
    "scgi",
    "serve",
    "uwsgi",
]
