"""Two other ways of running an asyncio app in trioscgi, for bench/peers_apps.py.

trioscgi runs an asyncio app on a loop (uvloop when installed) in a thread of
its own, with batched hand-offs (trioscgi/_apploop.py). These probes run the
app named by ``$PROBE_APP`` the other ways measured against it; each is served
as a trio app (``--app-loop trio --lifespan on``) that opens its loop in the
lifespan startup:

- :func:`driven_app`: an asyncio ``SelectorEventLoop`` in the trio thread,
  run in passes by a trio task (the loop's selector polls without blocking and
  stops the loop once it would sleep; the trio task sleeps on the selector's
  epoll fd). It reuses trioscgi's per-call bridge with hand-offs that are plain
  calls.
- :func:`trio_asyncio_app`: trio-asyncio's loop in the trio thread
  (``aio_as_trio`` / ``trio_as_aio``), with the shim asgiref needs: trio-asyncio
  refuses executors other than its own, and ``sync_to_async`` passes its own.

Probes, not products: no lifespan is forwarded to the app, and the loops are
closed without draining their tasks.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import selectors
from collections.abc import Callable
from typing import Any

import sniffio
import trio
from trio.lowlevel import wait_readable

from trioscgi._apploop import _Bridge

_SPINS = 16


def _load() -> Any:
    module, _, attr = os.environ["PROBE_APP"].partition(":")
    obj: Any = importlib.import_module(module)
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


APP = _load()


async def _lifespan(receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "lifespan.startup.complete"})
    await receive()
    await send({"type": "lifespan.shutdown.complete"})


# --------------------------------------------------------------------------- driven


class _Selector(selectors.DefaultSelector):
    """The loop's selector: polls without blocking, and ends the pass when idle.

    asyncio computes how long it may sleep (0 when callbacks are ready, the
    time to the next timer, or forever) and passes it here. While callbacks
    are ready, the loop goes on to its next iteration (at most ``spins``
    times a pass: asyncio tasks that hand each other work finish it in one
    pass). Once it would sleep, we note for how long, poll with a zero
    timeout instead and stop the loop after this iteration; the trio task
    then does the sleeping, on the selector's own fd (an epoll fd is
    readable when any fd registered in it is), so trio tasks run meanwhile.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.wanted: float | None = 0.0
        self.got_events = False
        self.spins = 0

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if timeout == 0 and self.spins > 0:
            self.spins -= 1
        else:
            self.wanted = timeout
            assert self.loop is not None
            self.loop.stop()
        events: list[tuple[Any, int]] = super().select(0)
        self.got_events = bool(events)
        return events


class DrivenHost:
    """An asyncio event loop in the trio thread, run in passes by one trio task.

    :meth:`run` is that task. Each pass is a ``run_forever`` that the
    selector stops once the loop would sleep (or after ``_SPINS``
    iterations): every callback that is ready runs, with the loop set as the
    running loop,
    asyncio's async generator hooks installed and sniffio saying
    ``"asyncio"``. Between passes the task sleeps until an fd the loop
    watches is ready (its self-pipe too, which ``call_soon_threadsafe``
    writes), its next timer is due, or :meth:`wake` is called by trio code
    that handed the loop work.
    """

    def __init__(self) -> None:
        self._selector = _Selector()
        self.loop = asyncio.SelectorEventLoop(self._selector)
        self._selector.loop = self.loop
        self._waiting: trio.CancelScope | None = None
        self._woken = False
        self.closed = False

    def wake(self) -> None:
        """Make the host run a pass soon (trio code gave the loop work)."""
        self._woken = True
        waiting = self._waiting
        if waiting is not None:
            waiting.cancel()

    def _pass(self) -> None:
        self._selector.spins = _SPINS
        previous = sniffio.thread_local.name
        sniffio.thread_local.name = "asyncio"
        try:
            self.loop.run_forever()
        finally:
            sniffio.thread_local.name = previous

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drive the loop until cancelled (:meth:`drain` and :meth:`close` end it)."""
        selector = self._selector
        fd = selector.fileno()
        task_status.started()
        while True:
            self._woken = False
            self._pass()
            wanted = selector.wanted
            if wanted == 0 or selector.got_events or self._woken:
                # More is ready already: let the trio tasks run first (they
                # hand over more work, and the next pass takes it all).
                await trio.lowlevel.checkpoint()
                continue
            with trio.CancelScope() as self._waiting:
                if wanted is not None:
                    self._waiting.deadline = trio.current_time() + wanted
                await wait_readable(fd)
            self._waiting = None

    closed = False

    def to_loop(self, fn: Callable[[], None]) -> None:
        # Same thread: the loop is between passes (or this runs inside one).
        fn()
        self.wake()

    def to_trio(self, fn: Callable[[], None]) -> None:
        fn()

    def close(self) -> None:
        if not self.loop.is_closed():
            self._pass()
            self.loop.close()


_driven: DrivenHost | None = None


async def driven_app(scope: Any, receive: Any, send: Any) -> None:
    global _driven
    if scope["type"] == "lifespan":
        host = _driven = DrivenHost()
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            await _lifespan(receive, send)
            nursery.cancel_scope.cancel()
        host.close()
        return
    assert _driven is not None
    await _Bridge(_driven, receive, send).call(APP, scope)  # type: ignore[arg-type]


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
