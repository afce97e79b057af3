"""The ASGI lifespan through serve(): auto/on/off, failures, startup and shutdown timeouts."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from scgi_client import request, serving

import trioscgi
from trioscgi._asgi.lifespan import LifespanFailure

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup


def make_config(tmp_path: Path, **kw: Any) -> trioscgi.Config:
    return trioscgi.Config(bind=[f"unix:{tmp_path}/s.sock"], **kw)


async def serve_failure(app: Any, config: trioscgi.Config) -> LifespanFailure:
    """Run serve() to its startup failure; return the LifespanFailure.

    Accepts it wrapped in exception groups too, so that the message and timing
    tests check those things; test_serve_raises_bare_lifespan_failure checks
    the type contract itself.
    """
    try:
        await trioscgi.serve(app, config)
    except LifespanFailure as exc:
        return exc
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        assert len(leaves) == 1, leaves
        assert isinstance(leaves[0], LifespanFailure), leaves
        return leaves[0]
    raise AssertionError("serve() returned instead of failing")


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


class App:
    """An app whose lifespan half does what the test says; HTTP answers with the state."""

    def __init__(
        self,
        *,
        startup: str = "complete",
        shutdown: str = "complete",
        state: dict[str, Any] | None = None,
    ) -> None:
        self.startup = startup
        self.shutdown = shutdown
        self.state = state or {}
        self.lifespan_calls = 0
        self.events: list[tuple[str, float]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            self.lifespan_calls += 1
            await self.lifespan(scope, receive, send)
            return
        body = repr(sorted(scope.get("state", {}).items())).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def lifespan(self, scope: Any, receive: Any, send: Any) -> None:
        if self.startup == "raise":
            raise RuntimeError("no lifespan here")
        msg = await receive()
        assert msg["type"] == "lifespan.startup"
        self.events.append(("startup", trio.current_time()))
        if self.startup == "hang":
            await trio.sleep_forever()
        if self.startup == "failed":
            await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
            return
        scope["state"].update(self.state)
        await send({"type": "lifespan.startup.complete"})
        msg = await receive()
        assert msg["type"] == "lifespan.shutdown"
        self.events.append(("shutdown", trio.current_time()))
        if self.shutdown == "hang":
            await trio.sleep_forever()
        await send({"type": "lifespan.shutdown.complete"})


async def test_auto_with_raising_app_serves_anyway(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioscgi")
    app = App(startup="raise")
    async with serving(app, f"unix:{tmp_path}/s.sock", lifespan="auto") as srv:
        r = await request(srv.address)
    assert r.status == 200
    assert app.lifespan_calls == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_on_with_raising_app_fails(tmp_path: Path) -> None:
    exc = await serve_failure(App(startup="raise"), make_config(tmp_path, lifespan="on"))
    assert "no lifespan here" in str(exc)


async def test_startup_failed_message(tmp_path: Path) -> None:
    exc = await serve_failure(App(startup="failed"), make_config(tmp_path, lifespan="auto"))
    assert "database unreachable" in str(exc)


async def test_serve_raises_bare_lifespan_failure(tmp_path: Path) -> None:
    with pytest.raises(LifespanFailure, match="database unreachable"):
        await trioscgi.serve(App(startup="failed"), make_config(tmp_path))


async def test_startup_failure_through_nursery_start(tmp_path: Path) -> None:
    """The embedding pattern: ``await nursery.start(serve, ...)`` raises the failure."""
    async with trio.open_nursery() as nursery:
        with pytest.raises(LifespanFailure, match="database unreachable"):
            await nursery.start(trioscgi.serve, App(startup="failed"), make_config(tmp_path))


async def test_startup_failure_leaves_no_socket_file(tmp_path: Path) -> None:
    await serve_failure(App(startup="failed"), make_config(tmp_path))
    assert not (tmp_path / "s.sock").exists()


async def test_startup_hang_times_out(tmp_path: Path, autojump_clock: Any) -> None:
    app = App(startup="hang")
    t0 = trio.current_time()
    exc = await serve_failure(app, make_config(tmp_path, startup_timeout=13))
    assert "startup_timeout" in str(exc)
    assert trio.current_time() - t0 == pytest.approx(13)
    assert [e for e, _ in app.events] == ["startup"]


async def test_shutdown_runs_when_serve_is_cancelled(tmp_path: Path, autojump_clock: Any) -> None:
    app = App()
    async with serving(app, f"unix:{tmp_path}/s.sock", lifespan="on") as srv:
        await request(srv.address)
        assert [e for e, _ in app.events] == ["startup"]
    assert [e for e, _ in app.events] == ["startup", "shutdown"]


async def test_shutdown_hang_bounded_by_shutdown_timeout(
    tmp_path: Path, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(shutdown="hang")
    async with serving(app, f"unix:{tmp_path}/s.sock", lifespan="on", shutdown_timeout=17) as srv:
        await request(srv.address)
        t0 = trio.current_time()
        srv.stop()
        await srv.stopped.wait()
    assert srv.stopped_at is not None
    assert srv.stopped_at - t0 == pytest.approx(17)
    assert any("shutdown_timeout" in r.getMessage() for r in caplog.records)


async def test_off_never_calls_lifespan(tmp_path: Path) -> None:
    app = App()
    async with serving(app, f"unix:{tmp_path}/s.sock", lifespan="off") as srv:
        r = await request(srv.address)
    assert r.status == 200
    assert app.lifespan_calls == 0


async def test_off_with_hanging_lifespan_starts_at_once(
    tmp_path: Path, autojump_clock: Any
) -> None:
    app = App(startup="hang")
    t0 = trio.current_time()
    async with serving(app, f"unix:{tmp_path}/s.sock", lifespan="off") as srv:
        assert trio.current_time() == t0
        assert (await request(srv.address)).status == 200


async def test_state_from_startup_visible_in_requests(tmp_path: Path) -> None:
    app = App(state={"answer": 42})
    async with serving(app, f"unix:{tmp_path}/s.sock", lifespan="on") as srv:
        r = await request(srv.address)
    assert r.body == b"[('answer', 42)]"


async def test_app_returning_on_lifespan_under_auto_serves(tmp_path: Path) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with serving(app, f"unix:{tmp_path}/s.sock", lifespan="auto") as srv:
        assert (await request(srv.address)).status == 204


async def test_started_only_after_startup_complete(tmp_path: Path, autojump_clock: Any) -> None:
    """started() comes after lifespan startup; a request that came early is served after it."""
    gate = trio.Event()
    answers: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            assert gate.is_set()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await receive()
        await gate.wait()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    address = f"unix:{tmp_path}/s.sock"

    async def early_client() -> None:
        await trio.sleep(5)
        async with trio.open_nursery() as n:
            n.start_soon(lambda: _ask(address, answers))
            await trio.sleep(5)
            assert answers == []  # not served before startup completed
            gate.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(early_client)
        bound = await nursery.start(trioscgi.serve, app, make_config(tmp_path, lifespan="on"))
        assert gate.is_set()
        assert bound == [address]
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert answers == [204]


async def _ask(address: str, answers: list[int]) -> None:
    answers.append((await request(address)).status)


async def test_cancel_during_startup_stops_promptly(tmp_path: Path, autojump_clock: Any) -> None:
    app = App(startup="hang")
    t0 = trio.current_time()
    with trio.move_on_after(1) as scope:
        await trioscgi.serve(app, make_config(tmp_path, lifespan="on", startup_timeout=60))
    assert scope.cancelled_caught
    assert trio.current_time() - t0 < 10
    assert not (tmp_path / "s.sock").exists()


async def test_failed_then_raised_logs_the_failure_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Starlette sends lifespan.startup.failed and then re-raises: one failure,
    # not an extra "raised after startup" error with a traceback.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})
        raise RuntimeError("no database")

    exc = await serve_failure(app, make_config(tmp_path, lifespan="auto"))
    assert "no database" in str(exc)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not any("after startup" in m for m in errors), errors


async def test_failed_startup_logs_no_shutdown_and_sends_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A startup that failed never completed: no lifespan.shutdown is sent,
    # and its failure is not logged again as a shutdown failure (it was, as
    # "lifespan shutdown failed: ..." before the startup failure's own line).
    received: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.append((await receive())["type"])
        await send({"type": "lifespan.startup.failed", "message": "no database"})
        received.append((await receive())["type"])

    caplog.set_level(logging.DEBUG, "trioscgi")
    exc = await serve_failure(app, make_config(tmp_path, lifespan="auto"))
    assert str(exc) == "lifespan startup failed: no database"
    assert received == ["lifespan.startup"]
    logged = [r.getMessage() for r in caplog.records if r.name == "trioscgi"]
    assert not any("shutdown" in m for m in logged), logged
