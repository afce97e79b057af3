"""Type aliases and exit codes shared by the server's modules."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The daemon's exit codes (docs/configuration.md): a clean stop, a runtime
# error (a bind failed, a crash loop), a usage or config error (including an
# app that can't be loaded), a lifespan startup failure.
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_LIFESPAN = 3
