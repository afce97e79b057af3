"""The HTTP conformance suite: every scenario over every path (scenarios.py, drivers.py).

Test ids name the path: ``test_body_after_pause[fastcgi-keep-asyncio]``. A scenario
a path can't express is skipped there with why (``scenarios.NEEDS``).
docs/conformance.md lists the scenarios and what each path does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from . import scenarios
from .drivers import ALL_PATHS, Driver, features


def over_paths(scenario: scenarios.Scenario) -> Callable[[Any], Any]:
    """Parametrize ``http_path`` with every path, skipping those the scenario can't use."""
    params = []
    for path in ALL_PATHS:
        reason = scenarios.missing(scenario, features(path))
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(path, id=path, marks=marks))
    return pytest.mark.parametrize("http_path", params, indirect=True)


@over_paths(scenarios.body_in_one_piece)
async def test_body_in_one_piece(http_path: Driver) -> None:
    await scenarios.body_in_one_piece(http_path)


@over_paths(scenarios.body_in_many_pieces)
async def test_body_in_many_pieces(http_path: Driver) -> None:
    await scenarios.body_in_many_pieces(http_path)


@over_paths(scenarios.body_byte_by_byte)
async def test_body_byte_by_byte(http_path: Driver) -> None:
    await scenarios.body_byte_by_byte(http_path)


@over_paths(scenarios.body_after_pause)
async def test_body_after_pause(http_path: Driver) -> None:
    await scenarios.body_after_pause(http_path)


@over_paths(scenarios.empty_body)
async def test_empty_body(http_path: Driver) -> None:
    await scenarios.empty_body(http_path)


@over_paths(scenarios.chunked_upload)
async def test_chunked_upload(http_path: Driver) -> None:
    await scenarios.chunked_upload(http_path)


@over_paths(scenarios.large_body)
async def test_large_body(http_path: Driver) -> None:
    await scenarios.large_body(http_path)


@over_paths(scenarios.large_body_held_back)
async def test_large_body_held_back(http_path: Driver) -> None:
    await scenarios.large_body_held_back(http_path)


@over_paths(scenarios.receive_cancelled_at_call)
async def test_receive_cancelled_at_call(http_path: Driver) -> None:
    await scenarios.receive_cancelled_at_call(http_path)


@over_paths(scenarios.receive_after_body)
async def test_receive_after_body(http_path: Driver) -> None:
    await scenarios.receive_after_body(http_path)


@over_paths(scenarios.no_disconnect_while_client_stays)
async def test_no_disconnect_while_client_stays(http_path: Driver) -> None:
    await scenarios.no_disconnect_while_client_stays(http_path)


@over_paths(scenarios.client_gone_before_body)
async def test_client_gone_before_body(http_path: Driver) -> None:
    await scenarios.client_gone_before_body(http_path)


@over_paths(scenarios.client_gone_during_body)
async def test_client_gone_during_body(http_path: Driver) -> None:
    await scenarios.client_gone_during_body(http_path)


@over_paths(scenarios.client_gone_after_body)
async def test_client_gone_after_body(http_path: Driver) -> None:
    await scenarios.client_gone_after_body(http_path)


@over_paths(scenarios.client_gone_while_app_busy)
async def test_client_gone_while_app_busy(http_path: Driver) -> None:
    await scenarios.client_gone_while_app_busy(http_path)


@over_paths(scenarios.client_gone_during_response)
async def test_client_gone_during_response(http_path: Driver) -> None:
    await scenarios.client_gone_during_response(http_path)


@over_paths(scenarios.shutdown_while_waiting)
async def test_shutdown_while_waiting(http_path: Driver) -> None:
    await scenarios.shutdown_while_waiting(http_path)


@over_paths(scenarios.streamed_response_slow_reader)
async def test_streamed_response_slow_reader(http_path: Driver) -> None:
    await scenarios.streamed_response_slow_reader(http_path)


@over_paths(scenarios.app_error_before_start)
async def test_app_error_before_start(http_path: Driver) -> None:
    await scenarios.app_error_before_start(http_path)


@over_paths(scenarios.app_error_after_start)
async def test_app_error_after_start(http_path: Driver) -> None:
    await scenarios.app_error_after_start(http_path)


@over_paths(scenarios.lifespan_state)
async def test_lifespan_state(http_path: Driver) -> None:
    await scenarios.lifespan_state(http_path)


@over_paths(scenarios.pathsend)
async def test_pathsend(http_path: Driver) -> None:
    await scenarios.pathsend(http_path)
