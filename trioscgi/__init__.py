"""trioscgi: a trio-native SCGI server for ASGI and WSGI applications."""

from . import protocol
from ._config import Config
from ._server import serve
from ._version import __version__

__all__ = ["Config", "__version__", "protocol", "serve"]
