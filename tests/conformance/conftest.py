"""Fixtures of the conformance suite: ``http_path``, the real server on one path.

Names are specific (``http_path``…) so that other suites in this directory
(WebSocket) can add theirs beside them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .app import READ_STARTED, RECORDS
from .drivers import ALL_PATHS, Driver, running_path


@pytest.fixture(params=ALL_PATHS)
async def http_path(request: pytest.FixtureRequest) -> AsyncIterator[Driver]:
    """A driver for one path (test-id part: ``scgi-trio``, ``fastcgi-mpx-asyncio``,
    ``wsgi-fastcgi``…), with trioscgi serving the suite's app on it."""
    try:
        async with running_path(request.param) as driver:
            yield driver
    finally:
        RECORDS.clear()
        READ_STARTED.clear()
