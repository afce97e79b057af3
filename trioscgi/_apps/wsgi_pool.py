"""A pool of long-lived worker threads for trio, fed by a queue, bounded by a limiter.

The WSGI adapter runs each request's view here (:class:`ThreadPool`); nothing in
this module knows about WSGI, requests or sockets.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

import trio

__all__ = ["ThreadPool"]

# A worker thread with nothing to do for this long ends (as trio's own thread cache does).
_IDLE_TIMEOUT = 10.0


class _Job:
    """One call handed to a worker thread; ``task`` is ``None`` once nobody waits for it.

    It also stands for the call in the limiter (``acquire_on_behalf_of``).
    """

    __slots__ = ("args", "context", "error", "fn", "result", "task")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], task: trio.lowlevel.Task
    ) -> None:
        self.fn = fn
        self.args = args
        self.context: contextvars.Context | None = contextvars.copy_context()
        self.task: trio.lowlevel.Task | None = task
        self.result: Any = None
        self.error: BaseException | None = None


class _PoolRun:
    """The threads of one ``trio.run``: they belong to its token and die with it."""

    def __init__(self, token: trio.lowlevel.TrioToken, size: int) -> None:
        self.token = token
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.lock = threading.Lock()  # guards idle, done and wakeup_pending
        self.idle = 0  # alive, between jobs and not promised to a queued one
        self.done: list[_Job] = []  # finished, not yet handed back to their tasks
        self.wakeup_pending = False  # a _deliver is scheduled and will see ``done``
        # Only for to_thread.run_sync's bookkeeping: the pool never has more threads.
        self.thread_limiter = trio.CapacityLimiter(size)


class ThreadPool:
    """Long-lived worker threads fed by a queue, one per token of ``limiter`` at most.

    ``trio.to_thread.run_sync`` per request costs a thread wake, two OS thread renames
    and a write to trio's wakeup socket each way, and on a VM whose threads run on
    different CPUs the wakes and the GIL hand-offs around them are most of a small
    request's cost. Here:

    - a job goes to a thread that is already running when one is free: a worker that
      finishes a job takes the next queued one without sleeping; each job is promised
      a thread (an idle one, or a new one up to ``size``), so a view that blocks never
      holds up another request;
    - results are handed back in batches: the first thread to finish asks the trio loop
      (one ``run_sync_soon``, one wakeup-socket write) to reschedule every task whose
      job is done by the time it runs, and the threads finishing meanwhile write
      nothing.

    The threads are started by ``trio.to_thread.run_sync`` (from system tasks), so
    ``trio.from_thread.run`` works in the app as it does in any trio worker thread.
    """

    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self.limiter = limiter
        self._run: _PoolRun | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in a worker thread, in a copy of the task's context.

        Each call holds a token of the limiter from before the job is queued until
        ``fn`` returns, even if the caller is cancelled meanwhile: a cancelled caller
        stops waiting at once (a thread can't be interrupted) but its thread stays busy,
        as with ``trio.to_thread.run_sync(abandon_on_cancel=True)``.
        """
        token = trio.lowlevel.current_trio_token()
        state = self._run
        if state is None or state.token is not token:
            state = self._run = _PoolRun(token, int(self.limiter.total_tokens))
        job = _Job(fn, args, trio.lowlevel.current_task())
        await self.limiter.acquire_on_behalf_of(job)
        with state.lock:
            if state.idle:
                state.idle -= 1
                spawn = False
            else:
                spawn = True
            state.jobs.put(job)
        if spawn:
            trio.lowlevel.spawn_system_task(self._thread, state, name="trioscgi WSGI worker")

        def abort(_: Any) -> trio.lowlevel.Abort:
            job.task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        error = job.error
        if error is not None:
            try:
                raise error
            finally:
                del error
                job.error = None
        return job.result

    async def _thread(self, state: _PoolRun) -> None:
        try:
            await trio.to_thread.run_sync(
                self._work,
                state,
                abandon_on_cancel=True,
                limiter=state.thread_limiter,
                thread_name="trioscgi WSGI worker",
            )
        except BaseException:
            # The run is ending (system tasks are cancelled): the thread ends after
            # its current job, if it has one.
            state.jobs.put(None)
            raise

    def _work(self, state: _PoolRun) -> None:
        jobs = state.jobs
        lock = state.lock
        while True:
            try:
                job = jobs.get(timeout=_IDLE_TIMEOUT)
            except queue.Empty:
                with lock:
                    if not jobs.empty():
                        continue  # a job was promised to an idle thread: maybe this one
                    state.idle -= 1
                return
            if job is None:
                return
            context = job.context
            job.context = None
            if job.task is not None and context is not None:  # else cancelled while queued
                try:
                    job.result = context.run(job.fn, *job.args)
                except BaseException as exc:  # handed to the waiting task
                    job.error = exc
            del context
            with lock:
                state.idle += 1  # before the hand-back: the next job needs no new thread
                state.done.append(job)
                wake = not state.wakeup_pending
                state.wakeup_pending = True
            del job
            if wake:
                try:
                    state.token.run_sync_soon(self._deliver, state)
                except trio.RunFinishedError:
                    pass

    def _deliver(self, state: _PoolRun) -> None:
        with state.lock:
            done = state.done
            state.done = []
            state.wakeup_pending = False
        for job in done:
            self.limiter.release_on_behalf_of(job)
            if job.task is not None:
                trio.lowlevel.reschedule(job.task)
