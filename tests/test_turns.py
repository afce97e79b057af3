"""trioscgi._turns: one writer at a time, handed on in order; a reader whose end wakes all."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from trioscgi._turns import ReadTurn, WriteTurn


async def test_the_write_turn_passes_in_order_and_a_cancelled_waiter_loses_nothing(
    autojump_clock: Any,
) -> None:
    turn = WriteTurn()
    order: list[str] = []

    async def writer(name: str, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            if not turn.take_now():
                await turn.wait()
            try:
                order.append(name)
                await trio.sleep(0)
            finally:
                turn.release()

    assert turn.take_now()  # free: taken at once, no schedule point
    cancelled = trio.CancelScope()
    with trio.fail_after(10):  # (a turn lost to the cancelled waiter: a deadlock)
        async with trio.open_nursery() as nursery:
            for name in ("a", "b"):
                nursery.start_soon(writer, name)
                await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(writer, "gone", cancelled)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(writer, "c")
            await trio.testing.wait_all_tasks_blocked()
            cancelled.cancel()  # it waited for the turn: it never had it
            await trio.testing.wait_all_tasks_blocked()
            turn.release()
    assert order == ["a", "b", "c"]
    assert not turn.held  # the last one freed it: nobody waits
    # Cancelled and released in the same tick: still counted, already out of the lot.
    assert turn.take_now()
    late = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer, "late", late)
        await trio.testing.wait_all_tasks_blocked()
        late.cancel()
        turn.release()
    assert not turn.held
    assert turn.take_now()


async def test_a_reader_cancelled_mid_read_wakes_the_others(autojump_clock: Any) -> None:
    turn = ReadTurn()
    woken: list[str] = []

    async def reader(scope: trio.CancelScope) -> None:
        turn.take()
        try:
            with scope:
                await trio.sleep_forever()  # a read that never completes
        finally:
            turn.done()

    async def waiter(name: str) -> None:
        await turn.wait()
        woken.append(name)

    scope = trio.CancelScope()
    with trio.fail_after(10):  # (waiters left parked: a deadlock)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, scope)
            await trio.testing.wait_all_tasks_blocked()
            assert turn.reading
            nursery.start_soon(waiter, "x")
            nursery.start_soon(waiter, "y")
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()  # its own deadline, say
    assert sorted(woken) == ["x", "y"]
    assert not turn.reading


async def test_news_without_a_read_wakes_the_waiters_and_nobody_is_fine() -> None:
    turn = ReadTurn()
    turn.news()  # nobody waits: nothing happens
    woken = trio.Event()

    async def waiter() -> None:
        await turn.wait()
        woken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        turn.news()
    assert woken.is_set()
