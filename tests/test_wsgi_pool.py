"""The worker-thread pool on its own (trioscgi._apps.wsgi_pool): plain functions, no WSGI.

The threads are real; every wait on them is an Event with a bound, never a sleep.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from trioscgi._apps import wsgi_pool as _wsgi_pool
from trioscgi._apps.wsgi_pool import ThreadPool

TIMEOUT = 10  # seconds: an upper bound for a stuck thread, never a timing assumption


def bounded(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """A test that gives up after TIMEOUT: a pool that loses a call hangs otherwise."""

    @functools.wraps(test)
    async def wrapper(*args: Any, **kwargs: Any) -> None:
        with trio.fail_after(TIMEOUT):
            await test(*args, **kwargs)

    return wrapper


def make_pool(size: int) -> ThreadPool:
    return ThreadPool(trio.CapacityLimiter(size))


async def wait_until_tokens_free(pool: ThreadPool) -> None:
    # The token is released by the hand-back on the trio side, after the thread
    # finished: wait for it with a bound (the polling only yields to trio).
    with trio.fail_after(TIMEOUT):
        while pool.limiter.borrowed_tokens:
            await trio.sleep(0.01)


@bounded
async def test_runs_in_a_worker_thread_and_returns_the_result() -> None:
    pool = make_pool(2)
    ident, total = await pool.run(lambda a, b: (threading.get_ident(), a + b), 2, 3)
    assert total == 5
    assert ident != threading.get_ident()


@bounded
async def test_an_exception_reaches_the_caller_with_its_traceback() -> None:
    def fails() -> None:
        raise KeyError("from the thread")

    pool = make_pool(1)
    with pytest.raises(KeyError, match="from the thread") as info:
        await pool.run(fails)
    assert info.traceback[-1].name == "fails"
    # The thread survived the exception and serves the next call.
    assert await pool.run(lambda: "next") == "next"


@bounded
async def test_the_call_runs_in_a_copy_of_the_callers_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("caller")

    def read_and_set() -> str:
        seen = var.get()
        var.set("thread")  # in the copy: the caller's value stays
        return seen

    pool = make_pool(1)
    assert await pool.run(read_and_set) == "caller"
    assert var.get() == "caller"


@bounded
async def test_from_thread_run_works_in_a_call() -> None:
    async def on_trio_side() -> str:
        await trio.lowlevel.checkpoint()
        return "trio"

    pool = make_pool(1)
    assert await pool.run(trio.from_thread.run, on_trio_side) == "trio"


@bounded
async def test_a_free_thread_takes_the_next_call() -> None:
    # One call after the other: the same long-lived thread serves them all.
    pool = make_pool(4)
    idents = {await pool.run(threading.get_ident) for _ in range(5)}
    assert len(idents) == 1
    assert threading.get_ident() not in idents


@bounded
async def test_a_blocked_call_does_not_hold_up_the_next() -> None:
    # Each call is promised its own thread: the second runs while the first still
    # blocks (it waits for the second).
    second_ran = threading.Event()
    results: list[bool] = []
    pool = make_pool(2)

    async def first() -> None:
        results.append(await pool.run(second_ran.wait, TIMEOUT))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()
        await pool.run(second_ran.set)
    assert results == [True]


@bounded
async def test_the_limiter_bounds_the_calls_in_progress() -> None:
    entered_send, entered_receive = trio.open_memory_channel[None](10)
    gate = threading.Event()
    lock = threading.Lock()
    running = peak = 0

    def job() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        trio.from_thread.run(entered_send.send, None)
        gate.wait(TIMEOUT)
        with lock:
            running -= 1

    pool = make_pool(2)
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(pool.run, job)
        await entered_receive.receive()
        await entered_receive.receive()
        await trio.testing.wait_all_tasks_blocked()
        stats = pool.limiter.statistics()
        assert (stats.borrowed_tokens, stats.tasks_waiting) == (2, 3)
        gate.set()
    assert peak == 2


@bounded
async def test_a_cancelled_caller_stops_waiting_but_keeps_its_token() -> None:
    started = threading.Event()
    gate = threading.Event()

    def hang() -> None:
        started.set()
        gate.wait(TIMEOUT)

    pool = make_pool(1)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run, hang)
            assert await trio.to_thread.run_sync(started.wait, TIMEOUT)
            scope.cancel()
    assert scope.cancelled_caught
    # The caller is gone; the thread can't be interrupted and still holds the token.
    assert pool.limiter.borrowed_tokens == 1
    gate.set()
    await wait_until_tokens_free(pool)
    assert await pool.run(lambda: "after") == "after"


@bounded
async def test_a_call_cancelled_while_waiting_for_a_token_never_runs() -> None:
    gate = threading.Event()
    ran: list[str] = []
    cancelled: list[bool] = []
    pool = make_pool(1)

    async def second(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await pool.run(ran.append, "second")
        cancelled.append(scope.cancelled_caught)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pool.run, gate.wait, TIMEOUT)
        await trio.testing.wait_all_tasks_blocked()
        scope = await nursery.start(second)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.limiter.statistics().tasks_waiting == 1
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    await wait_until_tokens_free(pool)
    assert cancelled == [True]
    assert ran == []
    assert await pool.run(lambda: "after") == "after"


@bounded
async def test_an_idle_thread_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    # A thread idle for _IDLE_TIMEOUT ends; the next call starts a new one.
    monkeypatch.setattr(_wsgi_pool, "_IDLE_TIMEOUT", 0.01)
    pool = make_pool(1)
    await pool.run(lambda: None)
    state = pool._run
    assert state is not None
    with trio.fail_after(TIMEOUT):
        while state.idle:
            await trio.sleep(0.01)
    assert await pool.run(lambda: "new thread") == "new thread"


def test_one_pool_in_two_trio_runs() -> None:
    # The threads belong to one trio.run; a later run gets its own.
    pool = make_pool(2)

    async def one() -> int:
        # Were the first run's threads (gone with it) reused, the call would never run.
        with trio.fail_after(TIMEOUT):
            return int(await pool.run(threading.get_ident))

    assert trio.run(one) != threading.get_ident()
    assert trio.run(one) != threading.get_ident()
