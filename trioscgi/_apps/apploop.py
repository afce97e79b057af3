"""Run applications written for asyncio (Django's ASGI handler, Quart…) inside the trio server.

The server stays trio: its connection tasks call the application as a trio
coroutine. For an application that needs asyncio, :func:`open_app_loop`
opens an asyncio event loop and returns a trio-callable face of the
application whose calls run as asyncio tasks on that loop (``_Bridge``).
The loop runs in the trio thread, in passes driven by a trio task
(``DrivenHost`` in asynciohost.py, imported only then, so that a server of
trio apps never imports asyncio).

Why this shape and not trio-asyncio or a loop in a thread of its own:
docs/asyncio.md (measured on Django, Quart and trio apps).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Literal

import sniffio
import trio

from .._types import ASGIApp

__all__ = [
    "detect_app_loop",
    "open_app_loop",
    "other_framework_hint",
    "other_framework_hint_in_text",
]

# Modules (and their submodules) whose ASGI applications run on asyncio only
# (they call asyncio directly, not through anyio): Django's ASGIHandler
# (and its subclasses, e.g. ASGIStaticFilesHandler; not its WSGIHandler),
# Quart, Django Channels (built on asgiref), asgiref (WsgiToAsgi runs
# the WSGI app through sync_to_async, which needs a running asyncio loop),
# and the frameworks that call themselves asyncio ones: Sanic (its ASGI
# startup finalizes its signal router on the running asyncio loop, and
# fails on trio with "Cannot finalize signals outside of event loop"),
# BlackSheep (asyncio.sleep, create_task and get_running_loop in its
# request and response paths), and aiohttp (an ASGI face of an aiohttp
# application runs on aiohttp's asyncio machinery).
# Starlette, FastAPI and Litestar are absent on purpose: they run on anyio,
# which runs on trio, and trio is the cheaper mode.
ASYNCIO_MODULES = (
    "django.core.handlers.asgi",
    "quart",
    "channels",
    "asgiref",
    "sanic",
    "blacksheep",
    "aiohttp",
)
# How deep auto looks through wrappers (middleware objects' ``.app``,
# ``functools.partial``, ``__wrapped__``) for one of those.
_MAX_WRAPPER_DEPTH = 8


# --------------------------------------------------------------------------------------
# Choosing the loop


def _module(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    return module if isinstance(module, str) else ""


def _is_asyncio_module(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in ASYNCIO_MODULES)


def _asyncio_framework(app: Any) -> str | None:
    """The asyncio-only module ``app`` (or something it wraps) comes from, or None."""
    seen: set[int] = set()
    todo = [(app, 0)]
    while todo:
        obj, depth = todo.pop()
        if id(obj) in seen or depth > _MAX_WRAPPER_DEPTH:
            continue
        seen.add(id(obj))
        if _module(type(obj)).partition(".")[0] == "trioscgi":
            # Ours, trio-native (the WSGI adapter): what it wraps is not an
            # ASGI app of the loop's concern.
            continue
        # The object's class and its bases (a subclass of ASGIHandler
        # defined in the project is still Django's handler)...
        for cls in type(obj).__mro__:
            if _is_asyncio_module(_module(cls)):
                return _module(cls)
        # ... or, for a function or bound method, where it was defined.
        if not isinstance(obj, type) and _is_asyncio_module(_module(obj)):
            return _module(obj)
        for attr in ("app", "func", "__wrapped__", "__self__"):
            try:
                inner = getattr(obj, attr, None)
            except Exception:  # a property that raises: not a wrapper we know
                continue
            if inner is not None and callable(inner) and inner is not obj:
                todo.append((inner, depth + 1))
    return None


def detect_app_loop(app: Any, declared: str) -> Literal["trio", "asyncio"]:
    """Decide which event loop the application runs on.

    ``declared`` ``"trio"`` or ``"asyncio"`` is the answer. ``"auto"`` says
    ``"asyncio"`` when the application object, its class or one of its bases,
    or what it wraps (``.app`` of a middleware object, ``functools.partial``,
    ``__wrapped__``, a bound method's object; up to 8 levels) comes from one
    of :data:`ASYNCIO_MODULES` (Django's ASGIHandler, Quart, Channels,
    asgiref, Sanic, BlackSheep, aiohttp), and ``"trio"`` otherwise:
    Starlette, FastAPI, Litestar and plain ASGI functions run on trio
    directly, and the WSGI adapter is trio's own (it is not looked into).
    Only the objects are looked at; nothing is imported.

    Raises:
        ValueError: ``declared`` is not one of the three.
    """
    if declared in ("trio", "asyncio"):
        return declared  # type: ignore[return-value]
    if declared != "auto":
        raise ValueError(f"app_loop must be 'auto', 'trio' or 'asyncio', not {declared!r}")
    return "asyncio" if _asyncio_framework(app) is not None else "trio"


# What trio, asyncio and sniffio-based libraries say when an application
# meets the wrong event loop.
_NEEDS_ASYNCIO = (
    "unrecognized yield message",  # trio.run received an asyncio future
    "written for some other framework",
    "no running event loop",  # asyncio.get_running_loop() on trio
    "no current event loop",  # asyncio.get_event_loop() (3.12+) on trio
    "outside of event loop",  # Sanic's startup ("Cannot finalize signals ...")
)
_NEEDS_TRIO = (
    "got bad yield",  # an asyncio Task received one of trio's yields
    "must be called from async context",  # trio outside a trio task
)


_HINT_ASYNCIO = (
    "the application (or a library it uses) needs asyncio, and it runs on trio:"
    ' set app_loop = "asyncio" (--app-loop asyncio); see docs/asyncio.md'
)
_HINT_TRIO = (
    "the application (or a library it uses) needs trio, and it runs on asyncio:"
    ' set app_loop = "trio" (--app-loop trio); see docs/asyncio.md'
)


def other_framework_hint_in_text(text: str) -> str | None:
    """The hint of :func:`other_framework_hint` for an error known only as text.

    For the ``message`` of a ``lifespan.startup.failed``: Starlette and others
    catch the exception and send its traceback as text.
    """
    lowered = text.lower()
    if any(s in lowered for s in _NEEDS_ASYNCIO):
        return _HINT_ASYNCIO
    if any(s in lowered for s in _NEEDS_TRIO):
        return _HINT_TRIO
    return None


def other_framework_hint(exc: BaseException) -> str | None:
    """A one-line hint when ``exc`` says the application needs the other event loop.

    Looks at the exception, its causes and contexts, and the members of an
    exception group. Returns None when nothing there is a wrong-loop error.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 32:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        text = str(current).lower()
        wrong_kind = isinstance(current, (TypeError, RuntimeError))
        if wrong_kind and any(s in text for s in _NEEDS_ASYNCIO):
            return _HINT_ASYNCIO
        if isinstance(current, RuntimeError) and any(s in text for s in _NEEDS_TRIO):
            return _HINT_TRIO
        if isinstance(current, sniffio.AsyncLibraryNotFoundError):
            continue
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)
        todo.extend(getattr(current, "exceptions", ()))
    return None


# --------------------------------------------------------------------------------------
# The asyncio loop, driven by a trio task


@contextlib.asynccontextmanager
async def open_app_loop(app: ASGIApp, mode: str) -> AsyncIterator[ASGIApp]:
    """Open the event loop ``app`` runs on; yield what the server calls.

    ``mode`` ``"trio"``: nothing to open, ``app`` itself. ``"asyncio"``: an
    asyncio loop driven by a task in a nursery of its own until the block
    ends; then its tasks are cancelled and the loop closed (bounded).
    """
    if mode == "trio":
        yield app
        return
    from .asynciohost import AsyncioApp, DrivenHost  # noqa: PLC0415 - asyncio only then

    async with trio.open_nursery() as nursery:
        host = DrivenHost()
        nursery.start_soon(host.run)
        try:
            yield AsyncioApp(host, app)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await host.drain()
                finally:
                    await host.close()
