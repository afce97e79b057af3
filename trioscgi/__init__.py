"""trioscgi: a trio-native SCGI server for ASGI and WSGI applications."""

from . import fastcgi, protocol, uwsgi
from ._config import Config, ConfigError
from ._lifespan import LifespanFailure
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
    "serve",
    "uwsgi",
]
