"""Deprecated: the SCGI core is :mod:`trioscgi.scgi`; this name stays as its alias.

``trioscgi.protocol`` was the SCGI core's name while it was the only one; beside
``trioscgi.fastcgi`` and ``trioscgi.uwsgi`` it is now ``trioscgi.scgi``. Every name here
is the same object as there, so existing imports keep working; new code should import
``trioscgi.scgi``. (No warning is raised: ``trioscgi`` itself imports this alias.)
"""

from .scgi import *  # noqa: F403
from .scgi import __all__ as __all__  # noqa: PLC0414 - re-exported, for mypy's strict check
