"""Choosing the app's event loop and the wrong-loop hint (``trioscgi._apps.apploop``).

What an app hosted on the asyncio loop gets (the bridge): test_asynciohost.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
import sniffio
import trio
from scgi_client import request, serving

import trioscgi
from trioscgi._apps.apploop import detect_app_loop, other_framework_hint
from trioscgi._config import ConfigError

# --- choosing the loop ------------------------------------------------------------------


def _bare(cls: type) -> Any:
    # An instance without running __init__ (Django's needs configured settings);
    # auto looks at the class only.
    return object.__new__(cls)


class Middleware:
    """A generic ASGI middleware object, as most wrap an app: ``self.app``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


async def plain(scope: Any, receive: Any, send: Any) -> None:
    pass


def test_auto_puts_django_asgi_handler_on_asyncio() -> None:
    from django.core.handlers.asgi import ASGIHandler

    class ProjectHandler(ASGIHandler):  # type: ignore[misc]  # Django is untyped: ASGIHandler is Any
        pass

    assert detect_app_loop(_bare(ASGIHandler), "auto") == "asyncio"
    assert detect_app_loop(_bare(ProjectHandler), "auto") == "asyncio"
    # Wrapped in middleware objects, a partial, a decorator.
    wrapped = Middleware(Middleware(_bare(ASGIHandler)))
    assert detect_app_loop(wrapped, "auto") == "asyncio"
    assert detect_app_loop(functools.partial(_bare(ASGIHandler)), "auto") == "asyncio"

    @functools.wraps(_bare(ASGIHandler).__call__)
    async def decorated(scope: Any, receive: Any, send: Any) -> None:
        pass

    assert detect_app_loop(decorated, "auto") == "asyncio"


def test_auto_puts_quart_and_asgiref_on_asyncio() -> None:
    from asgiref.wsgi import WsgiToAsgi
    from quart import Quart

    assert detect_app_loop(Quart("t"), "auto") == "asyncio"
    # asgiref leaves WsgiToAsgi.__init__ unannotated.
    app = WsgiToAsgi(lambda e, s: [])  # type: ignore[no-untyped-call]
    assert detect_app_loop(app, "auto") == "asyncio"


def test_auto_puts_sanic_blacksheep_and_aiohttp_apps_on_asyncio() -> None:
    from blacksheep import Application
    from sanic import Sanic

    # Sanic's ASGI startup fails on trio ("Cannot finalize signals outside
    # of event loop"); BlackSheep calls asyncio in its body and response paths.
    assert detect_app_loop(Sanic("trioscgi_auto_test"), "auto") == "asyncio"
    assert detect_app_loop(Middleware(Application()), "auto") == "asyncio"

    # An ASGI face of an aiohttp application (not installed here): its module
    # is what auto looks at.
    class AiohttpASGI:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            pass

    AiohttpASGI.__module__ = "aiohttp.web_asgi"
    assert detect_app_loop(AiohttpASGI(), "auto") == "asyncio"


def test_auto_keeps_anyio_apps_plain_apps_and_wsgi_on_trio() -> None:
    from django.core.handlers.wsgi import WSGIHandler
    from fastapi import FastAPI
    from starlette.applications import Starlette

    from trioscgi._apps.wsgi import wrap_wsgi

    assert detect_app_loop(Starlette(), "auto") == "trio"
    assert detect_app_loop(FastAPI(), "auto") == "trio"
    assert detect_app_loop(Middleware(FastAPI()), "auto") == "trio"
    assert detect_app_loop(plain, "auto") == "trio"
    # WSGI apps reach the server wrapped in trioscgi's trio adapter, Django's too.
    wsgi = wrap_wsgi(_bare(WSGIHandler), trioscgi.Config())
    assert detect_app_loop(wsgi, "auto") == "trio"


def test_declared_loop_wins_and_bad_values_are_refused() -> None:
    from quart import Quart

    assert detect_app_loop(Quart("t"), "trio") == "trio"
    assert detect_app_loop(plain, "asyncio") == "asyncio"
    with pytest.raises(ValueError, match="app_loop"):
        detect_app_loop(plain, "uvloop")
    with pytest.raises(ConfigError, match="'app_loop' must be one of"):
        trioscgi.Config(app_loop="uvloop").validate()  # type: ignore[arg-type]


# --- the hint ---------------------------------------------------------------------------


async def test_hint_for_asyncio_code_run_on_trio() -> None:
    with pytest.raises(RuntimeError) as no_loop:
        await asyncio.sleep(0.1)
    hint = other_framework_hint(no_loop.value)
    assert hint is not None
    assert 'app_loop = "asyncio"' in hint
    assert "\n" not in hint

    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(TypeError) as foreign:
            await loop.create_future()
    finally:
        loop.close()
    assert "unrecognized yield message" in str(foreign.value)
    assert other_framework_hint(foreign.value) == hint

    # Found through causes, contexts and exception groups too.
    try:
        try:
            raise no_loop.value
        except RuntimeError as exc:
            raise ValueError("the library's own error") from exc
    except ValueError as exc:
        chained = exc
    assert other_framework_hint(chained) == hint
    if sys.version_info >= (3, 11):
        group = BaseExceptionGroup("several", [KeyError("x"), foreign.value])  # noqa: F821
        assert other_framework_hint(group) == hint


def test_no_hint_for_other_errors() -> None:
    assert other_framework_hint(RuntimeError("boom")) is None
    assert other_framework_hint(TypeError("unsupported operand")) is None
    assert other_framework_hint(KeyError("no running event loop")) is None


async def test_hint_for_trio_code_run_on_asyncio(tmp_path: Path) -> None:
    seen: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await trio.sleep(0)
        except BaseException as exc:
            seen.append(exc)
            raise

    async with serving(app, f"unix:{tmp_path}/s.sock", app_loop="asyncio") as srv:
        r = await request(srv.address)
    assert r.status == 500
    hint = other_framework_hint(seen[0])
    assert hint is not None
    assert 'app_loop = "trio"' in hint


async def test_lifespan_on_the_wrong_loop_logs_the_hint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            asyncio.get_running_loop()
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    caplog.set_level(logging.INFO, "trioscgi")
    async with serving(app, f"unix:{tmp_path}/s.sock", lifespan="auto") as srv:
        assert (await request(srv.address)).status == 204
    lines = [r.getMessage() for r in caplog.records if "lifespan" in r.getMessage()]
    assert any('set app_loop = "asyncio"' in line for line in lines), lines


async def test_lifespan_startup_failed_on_the_wrong_loop_gets_the_hint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # FastAPI (Starlette) catches the TypeError that trio throws into a
    # coroutine awaiting an asyncio future, and sends its traceback as the
    # lifespan.startup.failed message: the hint is found in that text.
    import contextlib

    from fastapi import FastAPI

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        loop = asyncio.new_event_loop()
        try:
            await loop.create_future()  # what aiosqlite.connect() awaits
        finally:
            loop.close()
        yield

    config = trioscgi.Config(bind=[f"unix:{tmp_path}/s.sock"], lifespan="auto")
    with pytest.raises(trioscgi.LifespanFailure) as failure:
        await trioscgi.serve(FastAPI(lifespan=lifespan), config)
    message = str(failure.value)
    assert message.startswith("lifespan startup failed: ")
    assert "unrecognized yield message" in message
    assert message.splitlines()[-1] == other_framework_hint(TypeError("unrecognized yield message"))


async def test_sanic_that_auto_cannot_see_fails_startup_with_the_hint(tmp_path: Path) -> None:
    # Sanic behind a plain function: auto sees a function and picks trio; the
    # startup fails with Sanic's own words, and the hint says what to do.
    from sanic import Sanic
    from sanic.response import text

    sanic_app = Sanic("trioscgi_hidden_sanic")

    @sanic_app.get("/")
    async def hello(request: Any) -> Any:
        return text("hi")

    async def hidden(scope: Any, receive: Any, send: Any) -> None:
        await sanic_app(scope, receive, send)

    config = trioscgi.Config(bind=[f"unix:{tmp_path}/s.sock"], lifespan="auto")
    with pytest.raises(trioscgi.LifespanFailure) as failure:
        await trioscgi.serve(hidden, config)
    message = str(failure.value)
    assert "Cannot finalize signals outside of event loop" in message
    assert message.endswith('set app_loop = "asyncio" (--app-loop asyncio); see docs/asyncio.md')


async def test_a_request_on_the_wrong_loop_logs_the_hint_with_its_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await asyncio.sleep(0)  # an asyncio-only library, under trio

    async with serving(app, f"unix:{tmp_path}/s.sock", app_loop="trio") as srv:
        assert (await request(srv.address)).status == 500
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert line.startswith("exception in ASGI application before the response started: ")
    assert 'set app_loop = "asyncio" (--app-loop asyncio)' in line


# --- trio: no loop of its own -------------------------------------------------------------


async def test_trio_mode_app_is_called_directly(tmp_path: Path) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert sniffio.current_async_library() == "trio"
        await trio.sleep(0)
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"trio"})

    async with serving(app, f"unix:{tmp_path}/s.sock") as srv:
        r = await request(srv.address)
    assert r.body == b"trio"
