#!/usr/bin/env python3
"""What one executor round trip costs an asyncio task on each of trioscgi's loop hosts.

Usage: ``python bench/apploop_hops.py [N]`` (the loop in a thread is
bench/apploop_probes.py's).

A task awaits ``loop.run_in_executor(executor, f)`` N times (asgiref's
``sync_to_async`` is that, and Django's hello makes 15 of them); printed: CPU
and wall time per round trip on a plain ``asyncio.run`` loop, on the loop
driven from the trio thread and on the loop in a thread of its own. The CPU
column counts the whole process (the executor's thread too).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import time
from collections.abc import Callable

import trio
from apploop_probes import ThreadHost

from trioscgi._apps.asynciohost import DrivenHost, _Host

EXECUTOR = concurrent.futures.ThreadPoolExecutor(1)


def noop() -> int:
    return 1


async def round_trips(n: int) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(n):
        await loop.run_in_executor(EXECUTOR, noop)


async def on_host(kind: str, n: int) -> None:
    host: _Host
    async with trio.open_nursery() as nursery:
        if kind == "thread":
            thread_host = ThreadHost()
            thread_host.start()
            host = thread_host
        else:
            driven_host = DrivenHost()
            nursery.start_soon(driven_host.run)
            host = driven_host
        future = asyncio.run_coroutine_threadsafe(round_trips(n), host.loop)
        await trio.to_thread.run_sync(future.result)
        await host.drain()
        await host.close()


def measure(label: str, n: int, run: Callable[[], object]) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{label:24s} {cpu / n * 1e6:6.1f} us CPU  {wall / n * 1e6:6.1f} us wall per round trip")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    measure("asyncio.run", n, lambda: asyncio.run(round_trips(n)))
    measure("driven from trio", n, lambda: trio.run(on_host, "driven", n))
    measure("own thread", n, lambda: trio.run(on_host, "thread", n))


if __name__ == "__main__":
    main()
