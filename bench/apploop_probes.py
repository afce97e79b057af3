"""Ways of running an asyncio app in trioscgi, measured against each other.

trioscgi runs an asyncio app's loop in the trio thread, in passes driven by a
trio task (trioscgi/_apps/asynciohost.py). These probes run the app named by
``$PROBE_APP`` on that host or on the two designs it was measured against;
each is served as a trio app (``--app-loop trio --lifespan on``) that opens
its loop in the lifespan startup (bench/peers_apps.py, bench/apploop_cpu.py):

- :func:`driven_app`: trioscgi's :class:`DrivenHost`, as shipped (without
  the app's own lifespan);
- :func:`thread_app`: :class:`ThreadHost` below, an asyncio loop (uvloop when
  installed) in a thread of its own, with trioscgi's per-call bridge and
  hand-offs batched both ways;
- :func:`trio_asyncio_app`: trio-asyncio's loop in the trio thread
  (``aio_as_trio`` / ``trio_as_aio``), with the shim asgiref needs: trio-asyncio
  refuses executors other than its own, and ``sync_to_async`` passes its own.

Probes, not products: no lifespan is forwarded to the app.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import trio

from trioscgi._apps.asynciohost import DrivenHost, _Bridge, _Host

log = logging.getLogger("trioscgi")


def _load() -> Any:
    module, _, attr = os.environ["PROBE_APP"].partition(":")
    obj: Any = importlib.import_module(module)
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


APP = _load() if "PROBE_APP" in os.environ else None


# --------------------------------------------------------------------------- a loop in a thread

_CLOSE_GRACE = 5.0


class _Handoff:
    """Calls handed to another thread's event loop, one wake-up per batch.

    ``wake(run)`` is the thread-safe way in (``loop.call_soon_threadsafe``,
    a trio token's ``run_sync_soon``); it is called only when no batch is
    already on its way, so a busy side wakes the other once for many calls.
    Appending to a deque and the flag are atomic under the GIL; the flag is
    cleared before the batch is taken, so a call is never left behind.
    """

    __slots__ = ("_calls", "_scheduled", "_wake")

    def __init__(self, wake: Callable[[Callable[[], None]], object]) -> None:
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._scheduled = False
        self._wake = wake

    def __call__(self, fn: Callable[[], None]) -> None:
        self._calls.append(fn)
        if not self._scheduled:
            self._scheduled = True
            try:
                self._wake(self._run)
            except (RuntimeError, trio.RunFinishedError):
                # The other side is gone (its loop closed, its run over):
                # nothing is waiting for these calls any more.
                self._scheduled = False
                self._calls.clear()

    def _run(self) -> None:
        self._scheduled = False
        calls = self._calls
        while calls:
            try:
                calls.popleft()()
            except Exception:  # pragma: no cover - a bug of ours, not the app's
                log.exception("error in a hand-off between the trio and asyncio loops")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class ThreadHost(_Host):
    """An asyncio event loop (uvloop when installed) in a thread of its own.

    The loop runs in a daemon thread named ``trioscgi-asyncio`` from
    :meth:`start` until :meth:`close`. Hand-offs both ways are batched
    (:class:`_Handoff`).
    """

    def __init__(self) -> None:
        self.loop = _new_loop()
        self._to_loop = _Handoff(self.loop.call_soon_threadsafe)
        self._to_trio = _Handoff(_not_started)
        self._thread = threading.Thread(target=self._run, name="trioscgi-asyncio", daemon=True)

    def to_loop(self, fn: Callable[[], None]) -> None:
        self._to_loop(fn)

    def to_trio(self, fn: Callable[[], None]) -> None:
        self._to_trio(fn)

    def start(self) -> None:
        """Start the loop's thread (from the trio thread: hand-offs come back to this run)."""
        self._to_trio = _Handoff(trio.lowlevel.current_trio_token().run_sync_soon)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            asyncio.set_event_loop(None)

    async def close(self) -> None:
        """Stop the loop, join its thread (bounded) and close it."""
        self.closed = True
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.loop.stop)
            await trio.to_thread.run_sync(self._thread.join, _CLOSE_GRACE)
            if self._thread.is_alive():
                log.warning("the asyncio loop's thread did not stop within %g s", _CLOSE_GRACE)
                return
        if not self.loop.is_closed():
            self.loop.close()


def _not_started(fn: Callable[[], None]) -> None:
    raise RuntimeError("the asyncio loop's host is not started")


async def _lifespan(receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "lifespan.startup.complete"})
    await receive()
    await send({"type": "lifespan.shutdown.complete"})


# --------------------------------------------------------------------------- trioscgi's hosts

_host: _Host | None = None


async def _hosted(kind: str, scope: Any, receive: Any, send: Any) -> None:
    global _host
    if scope["type"] == "lifespan":
        async with trio.open_nursery() as nursery:
            if kind == "thread":
                thread_host = ThreadHost()
                thread_host.start()
                _host = thread_host
            else:
                driven_host = DrivenHost()
                nursery.start_soon(driven_host.run)
                _host = driven_host
            await _lifespan(receive, send)
            await _host.drain()
            await _host.close()
        return
    assert _host is not None
    await _Bridge(_host, receive, send).call(APP, scope)


async def thread_app(scope: Any, receive: Any, send: Any) -> None:
    await _hosted("thread", scope, receive, send)


async def driven_app(scope: Any, receive: Any, send: Any) -> None:
    await _hosted("driven", scope, receive, send)


# --------------------------------------------------------------------------- trio-asyncio

_trio_asyncio_loop: Any = None


async def trio_asyncio_app(scope: Any, receive: Any, send: Any) -> None:
    import trio_asyncio

    global _trio_asyncio_loop
    if scope["type"] == "lifespan":
        async with trio_asyncio.open_loop() as loop:
            own = loop.run_in_executor

            def run_in_executor(executor: Any, func: Any, *args: Any) -> Any:
                # The shim: an executor of the app's own runs the call, the
                # result comes back through the loop's thread-safe path.
                if executor is None:
                    return own(None, func, *args)
                return asyncio.wrap_future(executor.submit(func, *args), loop=loop)

            loop.run_in_executor = run_in_executor
            _trio_asyncio_loop = loop
            await _lifespan(receive, send)
        return
    loop = _trio_asyncio_loop
    await trio_asyncio.aio_as_trio(APP, loop=loop)(
        scope,
        trio_asyncio.trio_as_aio(receive, loop=loop),
        trio_asyncio.trio_as_aio(send, loop=loop),
    )
