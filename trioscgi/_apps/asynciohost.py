"""The asyncio side of an asyncio application: the loop's host and the per-call bridge.

Imported only when an application runs on asyncio (trioscgi/_apps/apploop.py
decides), so that a server of trio apps never imports asyncio.
:class:`DrivenHost` runs the loop in the trio thread, in passes driven by a
trio task; :class:`_Bridge` is one call of the application (a request, or the
lifespan). The bridge reaches the loop only through its host's ``to_loop`` /
``to_trio``, so other hosts can be measured against this one
(bench/apploop_probes.py has a loop in a thread of its own).
docs/asyncio.md has the design and the figures.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import logging
import selectors
from collections.abc import Callable
from typing import Any

import sniffio
import trio
from trio.lowlevel import (
    Abort,
    Task,
    current_task,
    reschedule,
    wait_readable,
    wait_task_rescheduled,
)

from .._errors import RequestCancelled
from .._types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AsyncioApp", "DrivenHost"]

log = logging.getLogger("trioscgi")

# Iterations of the driven loop one pass may run while there is work, before
# trio tasks get their turn.
_SPINS = 16
# After a cancelled request's asyncio task was told to stop, how long it may
# take to finish before we give up waiting for it (it is then reported, and
# cancelled again when the loop closes).
_CANCEL_GRACE = 5.0
# How long closing the loop waits for the tasks it cancels, the async
# generators it closes and the default executor's threads.
_CLOSE_GRACE = 5.0


class _Host:
    """What the bridge needs of a loop's host: the loop and the two ways across."""

    loop: asyncio.AbstractEventLoop
    closed = False

    def to_loop(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop's side (soon, in order)."""
        raise NotImplementedError

    def to_trio(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the trio thread (soon, in order); called from the loop's side."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop the loop and close it (after :meth:`drain`)."""
        raise NotImplementedError

    async def drain(self) -> None:
        """Cancel the tasks left, close async generators, join the default executor.

        Each step bounded by ``_CLOSE_GRACE``; no new call starts after this.
        The loop must still be running.
        """
        self.closed = True
        done = trio.Event()
        future = asyncio.run_coroutine_threadsafe(self._drain(), self.loop)
        future.add_done_callback(lambda _: self.to_trio(done.set))
        with trio.move_on_after(4 * _CLOSE_GRACE):
            await done.wait()
        if not future.done():
            log.warning("closing the asyncio loop took longer than %g s", 4 * _CLOSE_GRACE)

    async def _drain(self) -> None:
        this = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not this]
        for t in tasks:
            t.cancel()
        if tasks:
            done, left = await asyncio.wait(tasks, timeout=_CLOSE_GRACE)
            if left:
                log.warning(
                    "%d asyncio task(s) still running %g s after being cancelled at shutdown: %s",
                    len(left),
                    _CLOSE_GRACE,
                    ", ".join(repr(t.get_coro()) for t in list(left)[:5]),
                )
            for t in done:
                exc = None if t.cancelled() else t.exception()
                if exc is not None:
                    log.error("asyncio task %r raised at shutdown", t, exc_info=exc)
        loop = asyncio.get_running_loop()
        for what, step in (
            ("closing async generators", loop.shutdown_asyncgens()),
            ("joining the default executor's threads", loop.shutdown_default_executor()),
        ):
            try:
                await asyncio.wait_for(step, _CLOSE_GRACE)
            except asyncio.TimeoutError:
                log.warning("closing the asyncio loop: %s did not finish", what)


class _Selector(selectors.DefaultSelector):
    """The driven loop's selector: polls without blocking; ends the pass when idle.

    asyncio computes how long it may sleep (0 when callbacks are ready, the
    time to the next timer, or forever) and passes it here. While callbacks
    are ready or events come in, the loop goes on to its next iteration (at
    most ``spins`` times a pass: tasks that hand each other work finish it in
    one pass). Once it would sleep, we note for how long and stop the loop
    after this iteration; the trio task then does the sleeping, on the
    selector's own fd (an epoll fd is readable when any fd registered in it
    is), so trio tasks run meanwhile.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.wanted: float | None = 0.0
        self.spins = 0

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        events: list[tuple[Any, int]] = super().select(0)
        if (timeout == 0 or events) and self.spins > 0:
            self.spins -= 1
            return events
        self.wanted = 0.0 if events else timeout
        assert self.loop is not None
        self.loop.stop()
        return events


class DrivenHost(_Host):
    """An asyncio event loop in the trio thread, run in passes by one trio task.

    :meth:`run` is that task. Each pass is a ``run_forever`` that the
    selector stops once the loop would sleep (or after ``_SPINS``
    iterations): every callback that is ready runs, with the loop set as the
    running loop, asyncio's async generator hooks installed and sniffio
    saying ``"asyncio"``. Between passes the task sleeps until an fd the loop
    watches is ready (its self-pipe too, which ``call_soon_threadsafe``
    writes), its next timer is due, or trio code hands it work. Hand-offs
    are plain calls: asyncio code never runs at the same time as trio code.
    """

    def __init__(self) -> None:
        self._selector = _Selector()
        self.loop = _DrivenLoop(self._selector)
        self._selector.loop = self.loop
        self._waiting: trio.CancelScope | None = None
        self._woken = False
        self._scope = trio.CancelScope()
        self._ended = trio.Event()

    def to_loop(self, fn: Callable[[], None]) -> None:
        # The loop is between passes (or this runs inside one): change it now.
        fn()
        self._woken = True
        waiting = self._waiting
        if waiting is not None:
            waiting.cancel()

    def to_trio(self, fn: Callable[[], None]) -> None:
        fn()

    def _pass(self) -> None:
        self._selector.spins = _SPINS
        previous = sniffio.thread_local.name
        sniffio.thread_local.name = "asyncio"
        try:
            self.loop.run_forever()
        finally:
            sniffio.thread_local.name = previous

    async def run(self) -> None:
        """Drive the loop until :meth:`close`."""
        selector = self._selector
        fd = selector.fileno()
        try:
            with self._scope:
                await self._drive(selector, fd)
        finally:
            self._ended.set()

    async def _drive(self, selector: _Selector, fd: int) -> None:
        while True:
            self._woken = False
            self._pass()
            wanted = selector.wanted
            if wanted == 0 or self._woken:
                # More is ready already: let the trio tasks run first (they
                # hand over more work, and the next pass takes it all).
                await trio.lowlevel.checkpoint()
                continue
            with trio.CancelScope() as self._waiting:
                if wanted is not None:
                    self._waiting.deadline = trio.current_time() + wanted
                await wait_readable(fd)
            self._waiting = None

    async def close(self) -> None:
        """End the driving task, run a last pass and close the loop."""
        self.closed = True
        self._scope.cancel()
        # The driving task waits on the selector's fd: the fd stays open
        # until the task has left.
        await self._ended.wait()
        if not self.loop.is_closed():
            self._pass()
            self.loop.close()


class _DrivenLoop(asyncio.SelectorEventLoop):
    """The driven loop: the main thread's signals belong to the server.

    asyncio's ``add_signal_handler`` would take over the process's wakeup fd
    (``signal.set_wakeup_fd``), which trio's signal handling (SIGTERM,
    SIGINT…) relies on. It raises ``NotImplementedError`` instead, as on
    loops without signal support; libraries catch that and go on.
    """

    def add_signal_handler(self, sig: int, callback: Any, *args: Any) -> None:  # type: ignore[override]
        raise NotImplementedError("signals belong to the server (trioscgi), not the app's loop")


# --------------------------------------------------------------------------------------
# One call of the application: its asyncio task and the trio task that serves it


_SEND = 1
_RECEIVE = 2
_DONE = 3


class _Bridge:
    """One call of an asyncio application (a request, or the lifespan).

    The application runs as an asyncio task on the host's loop. Its
    ``receive``/``send`` post to an inbox that the calling trio task (the
    connection's own) works through with the server's ``receive``/``send``;
    results go back as completed asyncio futures. No task, thread or channel
    is added per call: the trio task parks until something is posted, and a
    ``receive`` that must wait (for the body, or for the disconnect) is
    waited for under a cancel scope that the next post cancels, so sends go
    out meanwhile. The server's ``receive`` loses nothing when cancelled
    while it waits (it is called again after the sends).

    Each side's state belongs to its side: the inbox and the waiting to
    trio, the futures and the stash of early messages to the loop; they meet
    only through the host's ``to_loop``/``to_trio`` (plain calls on the
    driven host, which runs both in one thread).
    """

    __slots__ = (
        "_finished",
        "_host",
        "_inbox",
        "_late_error",
        "_loop",
        "_parked",
        "_pending",
        "_receive",
        "_send",
        "_stash",
        "_task",
        "_trio_task",
        "_waiting",
        "_wanted",
        "_websocket",
    )

    def __init__(self, host: _Host, receive: Receive, send: Send) -> None:
        self._host = host
        self._loop = host.loop
        self._receive = receive
        self._send = send
        # trio thread
        self._inbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wanted = 0
        self._late_error: Exception | None = None
        self._parked = False
        self._waiting: trio.CancelScope | None = None
        self._trio_task: Task | None = None
        self._finished = False
        # (_websocket is set by call())
        # loop thread
        self._pending: collections.deque[asyncio.Future[Message]] = collections.deque()
        self._stash: collections.deque[Message | BaseException] = collections.deque()
        self._task: asyncio.Task[None] | None = None

    # --- the loop's thread ----------------------------------------------------------------

    def _start_task(self, app: ASGIApp, scope: Scope, context: contextvars.Context) -> None:
        coro = app(scope, self.asyncio_receive, self.asyncio_send)
        task: asyncio.Task[None] = context.run(self._loop.create_task, coro)  # type: ignore[arg-type]
        self._task = task
        task.add_done_callback(self._on_done)

    def _on_done(self, _: asyncio.Task[None]) -> None:
        self._post((_DONE,))

    def _post(self, item: tuple[Any, ...]) -> None:
        self._host.to_trio(functools.partial(self._arrive, item))

    async def asyncio_receive(self) -> Message:
        if self._stash:
            # What an earlier, cancelled receive() asked for. Hand it over only
            # after a point where this call too can be cancelled, as trio's
            # receive() checks first: an app that calls receive() in a scope
            # cancelled beforehand (Starlette's is_disconnected()) drops what
            # it gets, and the body would lose it.
            await asyncio.sleep(0)
            if self._stash:  # (not taken meanwhile by a concurrent receive())
                message = self._stash.popleft()
                if isinstance(message, BaseException):
                    raise message
                return message
        future: asyncio.Future[Message] = self._loop.create_future()
        self._pending.append(future)
        self._post((_RECEIVE,))
        return await future

    async def asyncio_send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            # The server holds the head until the first body message anyway
            # (nothing to flush): the app goes on at once, which saves a
            # round between the threads per request. An invalid head raises
            # from the app's next send() (or, if none comes, from the call).
            self._post((_SEND, message, None))
            return
        future: asyncio.Future[None] = self._loop.create_future()
        self._post((_SEND, message, future))
        await future

    def _give(self, message: Message | BaseException) -> None:
        pending = self._pending
        while pending:
            future = pending.popleft()
            if not future.done():
                if isinstance(message, BaseException):
                    future.set_exception(message)
                else:
                    future.set_result(message)
                return
        # The application gave up waiting before it came: keep it for its
        # next receive() rather than lose a part of the body.
        self._stash.append(message)

    # --- the trio thread ------------------------------------------------------------------

    def _arrive(self, item: tuple[Any, ...]) -> None:
        self._inbox.append(item)
        if self._parked:
            self._parked = False
            assert self._trio_task is not None
            reschedule(self._trio_task)
        elif self._waiting is not None:
            self._waiting.cancel()

    def _settle(self, future: asyncio.Future[Any], exc: BaseException | None = None) -> None:
        def settle() -> None:
            if not future.done():
                if exc is None:
                    future.set_result(None)
                else:
                    future.set_exception(exc)

        self._host.to_loop(settle)

    def _deliver(self, message: Message | BaseException) -> None:
        self._wanted -= 1
        self._host.to_loop(functools.partial(self._give, message))

    async def call(self, app: ASGIApp, scope: Scope) -> None:
        host = self._host
        if host.closed:
            raise RuntimeError("the asyncio event loop is closed")
        self._trio_task = current_task()
        self._websocket = scope["type"] == "websocket"
        context = contextvars.copy_context()
        host.to_loop(functools.partial(self._start_task, app, scope, context))
        try:
            await self._serve()
        except trio.Cancelled:
            host.to_loop(self._cancel_task)
            with trio.CancelScope(shield=True):
                with trio.move_on_after(_CANCEL_GRACE):
                    await self._serve(cancelled=True)
                if not self._finished:
                    log.warning(
                        "an asyncio task of the application ignored its cancellation for %g s: %r",
                        _CANCEL_GRACE,
                        self._task,
                    )
            raise
        task = self._task
        assert task is not None
        if task.cancelled():
            # Not by us: something in the application cancelled its own task.
            raise RuntimeError("the application's asyncio task was cancelled")
        exc = task.exception()
        if exc is not None:
            raise exc
        if self._late_error is not None:
            raise self._late_error

    def _cancel_task(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _serve(self, *, cancelled: bool = False) -> None:
        """Work through the inbox until the asyncio task is done."""
        inbox = self._inbox
        settle = self._settle
        while True:
            while inbox:
                item = inbox.popleft()
                kind = item[0]
                if kind is _SEND:
                    future = item[2]
                    if cancelled:
                        if future is not None:
                            settle(future, RequestCancelled("the request was cancelled"))
                        continue
                    late = self._late_error
                    if late is not None and future is not None:
                        # The head was refused: its error is this send's.
                        self._late_error = None
                        settle(future, late)
                        continue
                    try:
                        await self._send(item[1])
                    except trio.Cancelled:
                        if future is not None:
                            settle(future, RequestCancelled("the request was cancelled"))
                        raise
                    except Exception as exc:
                        if future is None:
                            self._late_error = exc
                        else:
                            settle(future, exc)
                    else:
                        if future is not None:
                            settle(future)
                elif kind is _RECEIVE:
                    self._wanted += 1
                else:
                    self._finished = True
                    return
            # Cut (graceful_timeout), an HTTP request is over: its receive() gets
            # http.disconnect at once. A WebSocket session's end has a code that only
            # the server's receive() knows (the close that went out, the client's
            # answer): it is asked, within the grace, as a trio app asking from a
            # shielded scope would.
            if self._wanted and (not cancelled or self._websocket):
                message: Message | BaseException | None = None
                try:
                    # The app's next post (a send, its end) cancels this wait;
                    # the server's receive() loses nothing when cancelled, and
                    # is called again once the sends are out. The whole call
                    # runs inside the scope: the wire enters scopes of its own
                    # (read_timeout) that must nest within this one.
                    with trio.CancelScope() as self._waiting:
                        message = await self._receive()
                except trio.Cancelled:
                    raise
                except Exception as exc:
                    # As on trio: the app's receive() raises what the server's raised.
                    message = exc
                finally:
                    self._waiting = None
                if message is not None:
                    self._deliver(message)
            else:
                while self._wanted:
                    self._deliver({"type": "http.disconnect"})
                await self._park()

    async def _park(self) -> None:
        self._parked = True

        def abort(_: Any) -> Abort:
            self._parked = False
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)


class AsyncioApp:
    """The trio-callable face of an asyncio application: each call runs as an asyncio task."""

    __slots__ = ("app", "host")

    def __init__(self, host: _Host, app: ASGIApp) -> None:
        self.host = host
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _Bridge(self.host, receive, send).call(self.app, scope)
