"""The trio server: listeners, lifespan, graceful shutdown."""

from __future__ import annotations

from typing import Any

import trio

from ._config import Config


async def serve(
    app: Any, config: Config, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` as configured by ``config`` until cancelled."""
    raise NotImplementedError
