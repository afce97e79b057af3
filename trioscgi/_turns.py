"""Turns for tasks that share one socket: one writer at a time, one reader the others wait on.

A FastCGI connection (its requests, multiplexed or not) and a WebSocket session (the
application's ``receive()`` and ``send()``, a keeper, a pinger) are each many tasks on
one socket. Records and frames must never interleave, so writers take a :class:`WriteTurn`;
whoever needs input reads it for all, so readers take a :class:`ReadTurn` and the others
wait for its news. A leaf: ``_wire`` and ``_asgi`` both use it, and ``_asgi`` is below
``_wire``.

Why not ``trio.Lock`` and ``trio.Event``: ``trio.Lock.acquire`` passes a schedule point
even when the lock is free (``cancel_shielded_checkpoint``), and every caller here has
just checked for cancellation itself and reaches a schedule point in its write anyway.
Counted with ``bench/instructions.py --wire fastcgi-keep examples.hello:app`` (one
response write per request): ``WriteTurn`` 260,987 instructions per request, the same
code on ``trio.Lock`` (``await lock.acquire()``) 308,159, +18 %: the schedule point. A
``trio.Event`` for the news is single-use: one more object per read to wake readers who
are mostly not there; a ``ParkingLot`` with a count of its waiters wakes nobody for free.
"""

from __future__ import annotations

from trio.lowlevel import ParkingLot

__all__ = ["ReadTurn", "WriteTurn"]


class _Waiters:
    """Tasks parked until another wakes them, counted: on the hot path, asking whether
    anyone waits is then an attribute, not a call to the lot's ``__len__``."""

    __slots__ = ("_lot", "_waiters")

    def __init__(self) -> None:
        self._lot = ParkingLot()
        self._waiters = 0

    async def wait(self) -> None:
        """Park until woken (:class:`WriteTurn`: as the holder; :class:`ReadTurn`: by
        news). Cancelled meanwhile, the task leaves the lot and nothing is lost."""
        self._waiters += 1
        try:
            await self._lot.park()
        finally:
            self._waiters -= 1


class WriteTurn(_Waiters):
    """A lock for writers, handed on as :class:`trio.Lock` is, without its schedule point.

    Released, the turn passes straight to the first waiter, in order (no barging: a
    writer that keeps writing can't starve the others). A task cancelled while it waits
    never had the turn and loses nothing: the lot forgets it, nothing is written for it.
    Taking a free turn is no checkpoint: the caller checks for cancellation itself, before
    it frames what it writes (once framed, a record or a WebSocket frame counts as sent).
    The free case is a plain call, no coroutine::

        if not turn.take_now():
            await turn.wait()  # woken as the holder
        try:
            ...
        finally:
            turn.release()
    """

    __slots__ = ("held",)

    def __init__(self) -> None:
        super().__init__()
        self.held = False

    def take_now(self) -> bool:
        """Take the turn if it is free; ``False``: :meth:`wait` for it."""
        if self.held:
            return False
        self.held = True
        return True

    def release(self) -> None:
        """Hand the turn to the first waiter, or free it."""
        # (A waiter just cancelled may still be counted, its lot slot gone: unpark()
        # then wakes nobody, and the turn is free.)
        if not (self._waiters and self._lot.unpark()):
            self.held = False


class ReadTurn(_Waiters):
    """One task reads the socket for all; the others wait for the news it brings.

    ``reading`` says a task holds the turn. Whoever holds it calls :meth:`done` however
    its read ends (data, an error, its own cancellation): the waiters wake, look at what
    it brought, and one of them reads next if it still needs input. So a reader cancelled
    mid-read (its own deadline) passes the turn on rather than leaving the others parked.
    :meth:`news` wakes the waiters for news that came without a read (a request ended, a
    buffer drained, the peer is gone).
    """

    __slots__ = ("reading",)

    def __init__(self) -> None:
        super().__init__()
        self.reading = False

    def take(self) -> None:
        """Start reading (the caller saw ``reading`` false; no await in between)."""
        self.reading = True

    def done(self) -> None:
        """The read is over, whatever its outcome: the turn is free, the waiters look."""
        self.reading = False
        if self._waiters:
            self._lot.unpark_all()

    def news(self) -> None:
        """Something changed without a read: the waiters look again."""
        if self._waiters:
            self._lot.unpark_all()
