"""The server's FastCGI sweep (idle kept connections, readers beside busy requests) and
the first-byte sniff of ``protocol = "auto"``, through a real in-process server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fcgi_client as fc
import pytest
import trio
import trio.lowlevel
from scgi_client import connect, parse_response, read_all, request, serving

from trioscgi._wire.fastcgi import INLINE_LOOK


@pytest.fixture
def bind(tmp_path: Path) -> str:
    return f"unix:{tmp_path}/s.sock"


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def busy(scope: Any, receive: Any, send: Any) -> None:
    # Busy for 60 s without touching receive() (a slow query, say), then answers.
    await trio.sleep(60)
    await hello(scope, receive, send)


class SweepSteps(trio.abc.Instrument):
    """Counts the steps the sweep task runs: each one is a wake-up."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("_sweep_fastcgi_connections"):
            self.steps += 1


@pytest.fixture
async def sweep_steps() -> Any:
    steps = SweepSteps()
    trio.lowlevel.add_instrument(steps)
    yield steps
    trio.lowlevel.remove_instrument(steps)


# --- idle_timeout = 0 -----------------------------------------------------------------


async def test_idle_timeout_zero_never_closes_a_kept_connection(
    bind: str, autojump_clock: Any
) -> None:
    # 0 means never, as for worker_timeout: before, the sweep closed every new connection
    # before its first request (idle 0 s >= 0 s) and woke at every scheduler pass.
    async with (
        serving(hello, bind, protocol="fastcgi", idle_timeout=0) as srv,
        await connect(srv.address) as s,
    ):
        reader = fc.Reader(s)
        for _ in range(20):  # the front-end's request comes after a sweep or two
            await trio.lowlevel.checkpoint()
        await s.send_all(fc.request(1, keep=True))
        assert (await reader.until_ended(1)).body == b"hello"
        await trio.sleep(3600)
        await s.send_all(fc.request(2, keep=True))
        assert (await reader.until_ended(2)).body == b"hello"


async def test_idle_timeout_zero_does_not_spin(
    bind: str, autojump_clock: Any, sweep_steps: SweepSteps
) -> None:
    async with (
        serving(hello, bind, protocol="fastcgi", idle_timeout=0) as srv,
        await connect(srv.address) as s,
    ):
        reader = fc.Reader(s)
        await s.send_all(fc.request(1, keep=True))
        await reader.until_ended(1)
        before = sweep_steps.steps
        for _ in range(200):  # bounded: a spinning sweep runs at each of these passes
            await trio.lowlevel.checkpoint()
        assert sweep_steps.steps - before <= 2


# --- the sweep sleeps while there is nothing to sweep -------------------------------


async def test_the_sweep_sleeps_with_no_fastcgi_connection(
    bind: str, autojump_clock: Any, sweep_steps: SweepSteps
) -> None:
    async with serving(hello, bind, protocol="fastcgi", idle_timeout=7) as srv:
        await trio.sleep(3600)
        assert sweep_steps.steps <= 3  # was one every INLINE_LOOK: 7200
        # The first connection wakes it: its idle kept connection still closes on time.
        async with await connect(srv.address) as s:
            reader = fc.Reader(s)
            await s.send_all(fc.request(1, keep=True))
            await reader.until_ended(1)
            start = trio.current_time()
            await reader.until_eof()
            assert trio.current_time() - start == pytest.approx(7, abs=INLINE_LOOK)
        # Once it is gone, the sweep sleeps again.
        await trio.sleep(INLINE_LOOK * 3)
        steps = sweep_steps.steps
        await trio.sleep(3600)
        assert sweep_steps.steps - steps <= 1


async def test_a_busy_request_is_aborted_promptly_during_a_graceful_shutdown(
    bind: str, autojump_clock: Any
) -> None:
    # The sweep lives as long as the FastCGI connections: a graceful shutdown does not
    # end it, so an ABORT_REQUEST for a busy request is still read within a look or two,
    # not at graceful_timeout.
    async with (
        serving(busy, bind, protocol="fastcgi", graceful_timeout=30) as srv,
        await connect(srv.address) as s,
    ):
        reader = fc.Reader(s)
        await s.send_all(fc.request(1, "GET", "/busy", keep=True))
        await trio.sleep(0.1)
        srv.stop()
        await trio.sleep(0.1)
        start = trio.current_time()
        await s.send_all(fc.record(fc.ABORT_REQUEST, 1))
        aborted = await reader.until_ended(1)
        assert aborted.stdout == b""
        assert trio.current_time() - start <= 2 * INLINE_LOOK


# --- protocol = "auto": one header_timeout for the whole head, sniff included ---------


async def test_auto_sniff_and_scgi_head_share_one_header_timeout(
    bind: str, autojump_clock: Any
) -> None:
    async with (
        serving(hello, bind, protocol="auto", header_timeout=1) as srv,
        await connect(srv.address) as s,
    ):
        start = trio.current_time()
        await trio.sleep(0.9)
        await s.send_all(b"7")  # the first byte of an SCGI netstring, then nothing
        response = parse_response(await read_all(s))
        assert response.status == 408
        assert trio.current_time() - start == pytest.approx(1, abs=0.05)  # was 1.9


async def test_auto_sniff_and_fastcgi_head_share_one_header_timeout(
    bind: str, autojump_clock: Any
) -> None:
    async with (
        serving(hello, bind, protocol="auto", header_timeout=1) as srv,
        await connect(srv.address) as s,
    ):
        start = trio.current_time()
        await trio.sleep(0.9)
        await s.send_all(fc.request(1)[:3])  # a FastCGI record begun, then nothing
        assert await read_all(s) == b""
        assert trio.current_time() - start == pytest.approx(1, abs=0.05)  # was 1.9


# --- max_requests: one count, whatever the wire ----------------------------------------


@pytest.mark.parametrize("protocol", ["scgi", "fastcgi", "auto"])
async def test_max_requests_stops_the_server_after_that_many_requests(
    bind: str, protocol: str, autojump_clock: Any
) -> None:
    async with serving(hello, bind, protocol=protocol, max_requests=3) as srv:
        if protocol == "scgi":
            for _ in range(3):
                assert (await request(srv.address)).status == 200
        else:
            async with await connect(srv.address) as s:
                reader = fc.Reader(s)
                for rid in (1, 2, 3):
                    await s.send_all(fc.request(rid, keep=True))
                    assert (await reader.until_ended(rid)).body == b"hello"
                await reader.until_eof()  # closed right after the third response
        with trio.fail_after(1):
            await srv.stopped.wait()
