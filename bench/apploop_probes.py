"""The two other ways of running an asyncio app in trioscgi, for bench/peers_apps.py.

trioscgi runs an asyncio app on a loop driven by a trio task in its own
thread (trioscgi/_apploop.py). These probes run the app named by
``$PROBE_APP`` the two ways the issue asked to measure against it; each is
served as a trio app (``--app-loop trio --lifespan on``), opening its loop in
the lifespan startup:

- :func:`thread_app`: a dedicated asyncio loop (uvloop when installed) in a
  second thread. It reuses trioscgi's per-call bridge; every hand-off
  crosses threads (``call_soon_threadsafe`` one way, the trio token's
  ``run_sync_soon`` the other), batched: one wake-up carries every hand-off
  made before the other side ran.
- :func:`trio_asyncio_app`: trio-asyncio's loop in the trio thread
  (``aio_as_trio`` / ``trio_as_aio``), with the shim asgiref needs: trio-asyncio
  refuses executors other than its own, and ``sync_to_async`` passes its own.

Probes, not products: no lifespan is forwarded to the app, and cancellation is
only as good as needed for a benchmark.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import os
import threading
from collections.abc import Callable
from typing import Any

import trio

from trioscgi._apploop import _Bridge


def _load() -> Any:
    module, _, attr = os.environ["PROBE_APP"].partition(":")
    obj: Any = importlib.import_module(module)
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


APP = _load()


async def _lifespan(receive: Any, send: Any, opened: Callable[[], Any]) -> None:
    """Answer the lifespan ourselves; the loop lives from startup to shutdown."""
    await receive()
    async with opened():
        await send({"type": "lifespan.startup.complete"})
        await receive()
    await send({"type": "lifespan.shutdown.complete"})


# --------------------------------------------------------------------------- thread


class _Batches:
    """Calls handed from one thread to another, one wake-up per batch."""

    def __init__(self, wake: Callable[[Callable[[], None]], Any]) -> None:
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._scheduled = False
        self._wake = wake

    def __call__(self, fn: Callable[[], None]) -> None:
        self._calls.append(fn)
        if not self._scheduled:
            self._scheduled = True
            self._wake(self._run)

    def _run(self) -> None:
        self._scheduled = False
        calls = self._calls
        while calls:
            calls.popleft()()


class ThreadHost:
    """An asyncio loop (uvloop when installed) running in a thread of its own."""

    closed = False

    def __init__(self) -> None:
        try:
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:
            self.loop = asyncio.new_event_loop()
        token = trio.lowlevel.current_trio_token()
        self.to_loop = _Batches(self.loop.call_soon_threadsafe)
        self.to_trio = _Batches(token.run_sync_soon)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def wake(self) -> None:
        pass

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


class _ThreadBridge(_Bridge):
    __slots__ = ()

    def _post(self, item: tuple[Any, ...]) -> None:  # in the loop's thread
        self._host.to_trio(lambda: _Bridge._post(self, item))  # type: ignore[attr-defined]

    def _start(self, app: Any, scope: Any) -> None:
        def start() -> None:
            self._task = task = self._loop.create_task(
                app(scope, self.asyncio_receive, self.asyncio_send)
            )
            task.add_done_callback(self._on_done)

        self._host.to_loop(start)  # type: ignore[attr-defined]
        self._task = _Pending()  # type: ignore[assignment]

    def _cancel(self) -> None:
        task = self._task
        self._host.to_loop(lambda: task.cancel())  # type: ignore[attr-defined, union-attr]  # noqa: PLW0108

    def _settle(self, future: Any, result: Any = None, exc: BaseException | None = None) -> bool:
        def settle() -> None:
            if not future.done():
                if exc is None:
                    future.set_result(result)
                else:
                    future.set_exception(exc)

        self._host.to_loop(settle)  # type: ignore[attr-defined]
        return True


class _Pending:
    """Stands for the task until the loop's thread has created it."""

    def done(self) -> bool:
        return False


_thread_host: ThreadHost | None = None


async def thread_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":

        class Opened:
            async def __aenter__(self) -> None:
                global _thread_host
                _thread_host = ThreadHost()

            async def __aexit__(self, *exc: object) -> None:
                assert _thread_host is not None
                _thread_host.stop()

        await _lifespan(receive, send, Opened)
        return
    assert _thread_host is not None
    bridge = _ThreadBridge(_thread_host, receive, send)  # type: ignore[arg-type]
    await bridge.call(APP, scope)


# --------------------------------------------------------------------------- trio-asyncio

_trio_asyncio_loop: Any = None


async def trio_asyncio_app(scope: Any, receive: Any, send: Any) -> None:
    import trio_asyncio

    if scope["type"] == "lifespan":

        class Opened:
            async def __aenter__(self) -> None:
                global _trio_asyncio_loop
                self._cm = trio_asyncio.open_loop()
                loop = _trio_asyncio_loop = await self._cm.__aenter__()
                own = loop.run_in_executor

                def run_in_executor(executor: Any, func: Any, *args: Any) -> Any:
                    # The shim: an executor of the app's own runs the call, the
                    # result comes back through the loop's thread-safe path.
                    if executor is None:
                        return own(None, func, *args)
                    return asyncio.wrap_future(executor.submit(func, *args), loop=loop)

                loop.run_in_executor = run_in_executor

            async def __aexit__(self, *exc: object) -> None:
                await self._cm.__aexit__(None, None, None)

        await _lifespan(receive, send, Opened)
        return
    loop = _trio_asyncio_loop
    await trio_asyncio.aio_as_trio(APP, loop=loop)(
        scope,
        trio_asyncio.trio_as_aio(receive, loop=loop),
        trio_asyncio.trio_as_aio(send, loop=loop),
    )
