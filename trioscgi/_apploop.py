"""Run applications written for asyncio (Django's ASGI handler, Quart…) inside the trio server.

The server stays trio: its connection tasks call the application as a trio
coroutine. For an application that needs asyncio, :func:`open_app_loop`
opens an asyncio event loop that one trio task drives, in the trio thread
(:class:`AsyncioHost`), and returns a trio-callable face of the application
whose requests run as asyncio tasks on that loop (:class:`_Bridge`).

Why this shape and not trio-asyncio or a loop in a second thread:
docs/asyncio.md (measured: the same thread costs no GIL hand-off and no
wake-up between threads per request, and a batch of the asyncio loop runs
every request that became ready in one pass).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import selectors
from collections.abc import AsyncIterator
from typing import Any, Literal

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

from ._types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "AsyncioHost",
    "RequestCancelled",
    "detect_app_loop",
    "open_app_loop",
    "other_framework_hint",
]

log = logging.getLogger("trioscgi")

# Modules (and their submodules) whose ASGI applications run on asyncio only
# (they call asyncio directly, not through anyio): Django's ASGIHandler
# (and its subclasses, e.g. ASGIStaticFilesHandler; not its WSGIHandler),
# Quart, Django Channels (built on asgiref), and asgiref (WsgiToAsgi runs
# the WSGI app through sync_to_async, which needs a running asyncio loop).
# Starlette, FastAPI and Litestar are absent on purpose: they run on anyio,
# which runs on trio, and trio is the cheaper mode.
ASYNCIO_MODULES = ("django.core.handlers.asgi", "quart", "channels", "asgiref")
# How deep auto looks through wrappers (middleware objects' ``.app``,
# ``functools.partial``, ``__wrapped__``) for one of those.
_MAX_WRAPPER_DEPTH = 8
# Iterations of the asyncio loop one pass may run while callbacks are ready,
# before trio tasks get their turn.
_SPINS = 16
# After a cancelled request's asyncio task was told to stop, how long it may
# take to finish before we give up waiting for it (it is then reported, and
# cancelled again when the loop closes).
_CANCEL_GRACE = 5.0
# How long closing the loop waits for the tasks it cancels, the async
# generators it closes and the default executor's threads.
_CLOSE_GRACE = 5.0


class RequestCancelled(OSError):
    """What ``send()`` raises in an asyncio task the server has cancelled.

    An ``OSError``, as ASGI 2.4 asks of a ``send()`` that can't reach the
    client any more: the task was cancelled (``graceful_timeout``, or the
    connection ended) and can't answer.
    """


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
    asgiref), and ``"trio"`` otherwise: Starlette, FastAPI, Litestar and
    plain ASGI functions run on trio directly, and the WSGI adapter is
    trio's own (it is not looked into). Only the objects are looked at;
    nothing is imported.

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
)
_NEEDS_TRIO = (
    "got bad yield",  # an asyncio Task received one of trio's yields
    "must be called from async context",  # trio outside a trio task
)


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
            return (
                "the application (or a library it uses) needs asyncio, and it runs on trio:"
                ' set app_loop = "asyncio" (--app-loop asyncio); see docs/asyncio.md'
            )
        if isinstance(current, RuntimeError) and any(s in text for s in _NEEDS_TRIO):
            return (
                "the application (or a library it uses) needs trio, and it runs on asyncio:"
                ' set app_loop = "trio" (--app-loop trio); see docs/asyncio.md'
            )
        if isinstance(current, sniffio.AsyncLibraryNotFoundError):
            continue
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)
        todo.extend(getattr(current, "exceptions", ()))
    return None


# --------------------------------------------------------------------------------------
# The asyncio loop, driven by a trio task


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


class _Loop(asyncio.SelectorEventLoop):
    """The app's loop: signals belong to the server.

    asyncio's ``add_signal_handler`` would take over the process's wakeup fd
    (``signal.set_wakeup_fd``), which trio's own signal handling (SIGTERM,
    SIGINT…) relies on. It raises ``NotImplementedError`` instead, as on
    loops without signal support; libraries catch that and go on.
    """

    def add_signal_handler(self, sig: int, callback: Any, *args: Any) -> None:  # type: ignore[override]
        raise NotImplementedError("signals belong to the server (trioscgi), not the app's loop")


class AsyncioHost:
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
        self.loop = _Loop(self._selector)
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

    async def drain(self) -> None:
        """Cancel the tasks left, close async generators, shut the default executor down.

        Bounded by ``_CLOSE_GRACE`` for each step; the host task must still
        be running. :meth:`close` comes after the host task ended.
        """
        loop = self.loop
        if self.closed:
            return
        self.closed = True
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in tasks:
            t.cancel()
        self.wake()
        if tasks:
            gathered = asyncio.gather(*tasks, return_exceptions=True)
            with trio.move_on_after(_CLOSE_GRACE):
                await wait_future(self, gathered)
            left = [t for t in tasks if not t.done()]
            if left:
                log.warning(
                    "%d asyncio task(s) still running %g s after being cancelled at shutdown: %s",
                    len(left),
                    _CLOSE_GRACE,
                    ", ".join(repr(t.get_coro()) for t in left[:5]),
                )
            else:
                for t in tasks:
                    exc = None if t.cancelled() else t.exception()
                    if exc is not None:
                        log.error("asyncio task %r raised at shutdown", t, exc_info=exc)
        for what, step in (
            ("closing async generators", loop.shutdown_asyncgens()),
            ("joining the default executor's threads", loop.shutdown_default_executor()),
        ):
            future = asyncio.ensure_future(step, loop=loop)
            self.wake()
            with trio.move_on_after(_CLOSE_GRACE):
                await wait_future(self, future)
            if not future.done():
                future.cancel()
                log.warning("closing the asyncio loop: %s did not finish", what)

    def close(self) -> None:
        """Run a last pass (for what the cancellations scheduled) and close the loop.

        Only once the host task has ended: it waits on the selector's fd.
        """
        self.closed = True
        if not self.loop.is_closed():
            self._pass()
            self.loop.close()


async def wait_future(host: AsyncioHost, future: asyncio.Future[Any]) -> None:
    """In trio, wait until an asyncio future of ``host``'s loop is done."""
    if future.done():
        await trio.lowlevel.checkpoint()
        return
    task = current_task()

    def done(_: asyncio.Future[Any]) -> None:
        reschedule(task)

    future.add_done_callback(done)

    def abort(_: Any) -> Abort:
        future.remove_done_callback(done)
        return Abort.SUCCEEDED

    await wait_task_rescheduled(abort)


# --------------------------------------------------------------------------------------
# One call of the application: its asyncio task and the trio task that serves it


_SEND = 1
_RECEIVE = 2
_DONE = 3


class _Bridge:
    """One call of an asyncio application (a request, or the lifespan).

    The application runs as an asyncio task; its ``receive``/``send`` post
    to an inbox that the calling trio task (the connection's own) works
    through with the server's ``receive``/``send``. No task, thread or
    channel is added: the trio task parks until the asyncio side posts,
    and a ``receive`` that must wait (for the body, or for the disconnect)
    is waited for in the trio task under a cancel scope that a post cancels,
    so sends go out meanwhile. The server's ``receive`` loses nothing when
    cancelled while it waits (it is called again after the sends).
    """

    __slots__ = (
        "_host",
        "_inbox",
        "_late_error",
        "_loop",
        "_parked",
        "_receive",
        "_receivers",
        "_send",
        "_stash",
        "_task",
        "_trio_task",
        "_waiting",
    )

    def __init__(self, host: AsyncioHost, receive: Receive, send: Send) -> None:
        self._host = host
        self._loop = host.loop
        self._receive = receive
        self._send = send
        self._inbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self._receivers: collections.deque[asyncio.Future[Message]] = collections.deque()
        self._stash: Message | None = None
        self._late_error: Exception | None = None
        self._parked = False
        self._waiting: trio.CancelScope | None = None
        self._trio_task: Task | None = None
        self._task: asyncio.Task[None] | None = None

    # --- the asyncio side (runs in the host's passes) ---------------------------------

    def _post(self, item: tuple[Any, ...]) -> None:
        self._inbox.append(item)
        if self._parked:
            self._parked = False
            assert self._trio_task is not None
            reschedule(self._trio_task)
        elif self._waiting is not None:
            self._waiting.cancel()

    async def asyncio_receive(self) -> Message:
        stash = self._stash
        if stash is not None and not self._receivers:
            self._stash = None
            return stash
        future: asyncio.Future[Message] = self._loop.create_future()
        self._post((_RECEIVE, future))
        return await future

    async def asyncio_send(self, message: Message) -> None:
        error = self._late_error
        if error is not None:
            self._late_error = None
            raise error
        if message["type"] == "http.response.start":
            # The server holds the head until the first body message anyway
            # (nothing to flush): the app goes on at once, which saves a
            # round between the loops per request. An invalid head raises
            # from the app's next send() (or, if none comes, from the call).
            self._post((_SEND, message, None))
            return
        future: asyncio.Future[None] = self._loop.create_future()
        self._post((_SEND, message, future))
        await future

    def _on_done(self, _: asyncio.Task[None]) -> None:
        self._post((_DONE,))

    # --- the trio side -----------------------------------------------------------------

    async def call(self, app: ASGIApp, scope: Scope) -> None:
        host = self._host
        if host.closed:
            raise RuntimeError("the asyncio event loop is closed")
        self._trio_task = current_task()
        self._start(app, scope)
        try:
            await self._serve()
        except trio.Cancelled:
            self._cancel()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(_CANCEL_GRACE):
                    await self._serve(cancelled=True)
                task = self._task
                assert task is not None
                if not task.done():
                    log.warning(
                        "an asyncio task of the application ignored its cancellation for %g s: %r",
                        _CANCEL_GRACE,
                        task.get_coro(),
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

    def _start(self, app: ASGIApp, scope: Scope) -> None:
        task: asyncio.Task[None] = self._loop.create_task(
            app(scope, self.asyncio_receive, self.asyncio_send)  # type: ignore[arg-type]
        )
        self._task = task
        task.add_done_callback(self._on_done)
        self._host.wake()

    def _cancel(self) -> None:
        assert self._task is not None
        self._task.cancel()
        self._host.wake()

    def _settle(
        self, future: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None
    ) -> bool:
        """Complete an asyncio future from the trio side; False if the app cancelled it."""
        if future.done():
            return False
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)
        self._host.wake()
        return True

    async def _serve(self, *, cancelled: bool = False) -> None:
        """Work through the inbox until the asyncio task is done."""
        inbox = self._inbox
        receivers = self._receivers
        settle = self._settle
        while True:
            while inbox:
                item = inbox.popleft()
                kind = item[0]
                if kind is _SEND:
                    future = item[2]
                    if future is None:
                        if not cancelled:
                            try:
                                await self._send(item[1])
                            except Exception as exc:
                                self._late_error = exc
                        continue
                    if cancelled:
                        settle(future, exc=RequestCancelled("the request was cancelled"))
                        continue
                    try:
                        await self._send(item[1])
                    except trio.Cancelled:
                        settle(future, exc=RequestCancelled("the request was cancelled"))
                        raise
                    except Exception as exc:
                        settle(future, exc=exc)
                    else:
                        settle(future)
                elif kind is _RECEIVE:
                    receivers.append(item[1])
                else:
                    self._fail_receivers()
                    return
            while receivers and receivers[0].done():
                receivers.popleft()  # cancelled by the app while waiting
            if cancelled:
                self._fail_receivers()
                await self._park()
            elif receivers:
                message: Message | None = None
                try:
                    with trio.CancelScope() as self._waiting:
                        try:
                            message = await self._receive()
                        except trio.Cancelled:
                            raise
                        except Exception as exc:
                            settle(receivers.popleft(), exc=exc)
                finally:
                    self._waiting = None
                if message is not None:
                    self._deliver(message)
            else:
                await self._park()

    def _deliver(self, message: Message) -> None:
        receivers = self._receivers
        while receivers:
            if self._settle(receivers.popleft(), message):
                return
        # The application gave up waiting before it came: keep it for its
        # next receive() rather than lose a part of the body.
        self._stash = message

    def _fail_receivers(self) -> None:
        while self._receivers:
            self._settle(self._receivers.popleft(), {"type": "http.disconnect"})

    async def _park(self) -> None:
        self._parked = True

        def abort(_: Any) -> Abort:
            self._parked = False
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)


class AsyncioApp:
    """The trio-callable face of an asyncio application: each call runs as an asyncio task."""

    __slots__ = ("app", "host")

    def __init__(self, host: AsyncioHost, app: ASGIApp) -> None:
        self.host = host
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _Bridge(self.host, receive, send).call(self.app, scope)


@contextlib.asynccontextmanager
async def open_app_loop(app: ASGIApp, mode: str) -> AsyncIterator[ASGIApp]:
    """Open the event loop ``app`` runs on; yield what the server calls.

    ``mode`` ``"trio"``: nothing to open, ``app`` itself. ``"asyncio"``: an
    :class:`AsyncioHost` runs in a nursery of its own until the block ends,
    then its tasks are cancelled and the loop closed (bounded).
    """
    if mode == "trio":
        yield app
        return
    host = AsyncioHost()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            try:
                yield AsyncioApp(host, app)
            finally:
                with trio.CancelScope(shield=True):
                    await host.drain()
                nursery.cancel_scope.cancel()
    finally:
        host.close()
