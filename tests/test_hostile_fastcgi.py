"""Hostile FastCGI input against the real ``python -m trioscgi`` process.

The FastCGI part of the hostile suite (tests/test_hostile.py is the SCGI part; the
harness is tests/hostile_harness.py, records are built with tests/fcgi_client.py):
bad versions and garbage, oversize PARAMS and STDIN, thousands of request ids on one
connection, ABORT_REQUEST storms, records for ids that are not active, junk management
records, truncated streams, front-ends that stop reading, a stalled request on a
multiplexed connection, idle keep-conn connections at max_connections, and a fuzzer of
mutated record streams. After each, the server is up and answers healthy requests,
logged no ERROR or traceback, and is back to its baseline fds; memory stays bounded.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fcgi_client as fc
import pytest
import trio
from hostile_harness import (
    PROTOCOL_STATUS,
    FcgiResponse,
    FcgiStream,
    HostileServer,
    blocking_exchange,
    fcgi_exchange,
    fcgi_responses,
    log_problems,
    parse_records,
    parse_reply,
    raise_nofile,
    running_server,
    scgi_request,
)

# The shared server: protocol "auto" (the default), so one socket takes both protocols.
FCGI_CONFIG: dict[str, Any] = {
    "header_timeout": 3.0,
    "read_timeout": 5.0,
    "drain_timeout": 2.0,
    "write_timeout": 3.0,
    "idle_timeout": 3.0,
    "graceful_timeout": 5.0,
    "max_body_size": 1 << 20,
}
MAX_REQUESTS = 64  # fastcgi_max_requests, the default
EXCHANGE_TIMEOUT = 15.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileServer]:
    with running_server(tmp_path_factory.mktemp("hostile-fcgi"), FCGI_CONFIG) as s:
        yield s


async def assert_healthy(server: HostileServer, *, scgi: bool = True) -> None:
    """The server is alive and answers a healthy FastCGI (and SCGI) request on both listeners."""
    assert server.alive(), server.stderr()[-3000:]
    for address in (server.unix, server.tcp):
        async with await FcgiStream.connect(address) as s:
            await s.send(fc.request(1, "GET", "/after"))
            response = await s.response(1)
            assert (response.status, response.body) == (200, b"hello"), response
            assert response.protocol_status == 0
            assert await s.closed() == []
        if scgi:
            reply = blocking_exchange(address, scgi_request(b"/after"))
            assert (reply.status, reply.body) == (200, b"hello"), reply


async def baseline_fds(server: HostileServer, *, scgi: bool = True) -> int:
    await assert_healthy(server, scgi=scgi)
    return server.fds()


def assert_fds_back(server: HostileServer, baseline: int) -> None:
    n = server.wait_fds(baseline)
    assert n <= baseline, f"server holds {n} fds, {baseline} before the test: leaked"


def assert_clean_log(server: HostileServer, start: int) -> None:
    problems = log_problems(server.stderr()[start:])
    assert not problems, "client faults logged as errors:\n" + "\n".join(problems[:20])


def log_lines(server: HostileServer, start: int, needle: str) -> list[str]:
    return [ln for ln in server.stderr()[start:].splitlines() if needle in ln]


def wait_lines(server: HostileServer, start: int, needles: tuple[str, ...], n: int) -> list[str]:
    """Poll (bounded) until the log since ``start`` has ``n`` lines with one of ``needles``."""
    deadline = time.monotonic() + 15
    while True:
        lines = [
            ln
            for ln in server.stderr()[start:].splitlines()
            if any(needle in ln for needle in needles)
        ]
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)  # polling interval


def post_params(uri: str, content_length: str, **extra: str) -> list[tuple[bytes, bytes]]:
    """nginx's params for a POST; CONTENT_LENGTH as given ("" for a streamed body)."""
    items = fc.nginx_params("POST", uri, b"", **extra)
    return [(k, content_length.encode()) if k == b"CONTENT_LENGTH" else (k, v) for k, v in items]


async def counts(server: HostileServer) -> Counter[str]:
    """The app's in-memory tallies (/_t/count)."""
    async with await FcgiStream.connect(server.unix) as s:
        await s.send(fc.request(1, "GET", "/_t/counts"))
        response = await s.response(1)
    return Counter(json.loads(response.body))


# --------------------------------------------------------------------------- garbage


GOOD = fc.request(1, "GET", "/g")


def garbage_cases() -> dict[str, bytes]:
    rnd = random.Random(10)
    return {
        "version 0": b"\x00" + GOOD[1:],
        "version 2": b"\x02" + GOOD[1:],
        "version 255": b"\xff" + GOOD[1:],
        "one NUL": b"\x00",
        "a digit, then garbage": b"12x:",
        "HTTP request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "TLS ClientHello": bytes.fromhex("160301020001") + rnd.randbytes(512),
        "1 MB of random bytes": b"\xfe" + rnd.randbytes(2**20),
        "1 MB of NULs": b"\x00" * 2**20,
    }


@pytest.mark.parametrize("protocol", ["fastcgi", "auto"])
async def test_bad_versions_and_garbage_close_the_connection(tmp_path: Path, protocol: str) -> None:
    """A version other than 1 or garbage: closed (auto: SCGI's 400 unless it starts with 1,
    or uwsgi's answer if it starts with 0: 400, 501 for a packet whose modifier2 is not 0, 408
    for a lone NUL, a packet header still short of its 4 bytes at header_timeout).

    Also in the middle of a kept connection, after a request was served.
    """
    with running_server(tmp_path, {**FCGI_CONFIG, "protocol": protocol}) as server:
        fds = await baseline_fds(server, scgi=protocol == "auto")
        log_start = len(server.stderr())
        cases = garbage_cases()
        for name, data in cases.items():
            for address in (server.unix, server.tcp):
                raw, _ = await fcgi_exchange(address, data, timeout=EXCHANGE_TIMEOUT)
                if protocol == "fastcgi":
                    assert raw == b"", (name, raw[:200])
                else:
                    # A first byte other than 1 is not FastCGI: the SCGI parser answers, or
                    # for a 0 the uwsgi one (version 0's record type is uwsgi's modifier2).
                    uwsgi = data[:1] == b"\x00"
                    allowed = (400, 408, 501, None) if uwsgi else (400, None)
                    assert parse_reply(raw).status in allowed, (name, raw[:200])
        if protocol == "fastcgi":
            lines = log_lines(server, log_start, "bad FastCGI input")
            assert len(lines) == 2 * len(cases), "\n".join(lines)
            assert all("[INFO]" in ln for ln in lines)
        # Version 1, then garbage in a later record of a kept connection.
        for address in (server.unix, server.tcp):
            for bad in (b"\x02" + GOOD[1:], b"\x00" * 16, b"\x01\x06\x00\x01\x00\x00\x00\x00"):
                async with await FcgiStream.connect(address) as s:
                    await s.send(fc.request(1, "GET", "/k", keep=True))
                    assert (await s.response(1)).status == 200
                    await s.send(bad)
                    assert await s.closed() == []
        assert_clean_log(server, log_start)
        await assert_healthy(server, scgi=protocol == "auto")
        assert_fds_back(server, fds)


# --------------------------------------------------------------------------- limits


async def test_oversize_params_get_431_and_the_connection_goes_on(server: HostileServer) -> None:
    """PARAMS over max_header_size: 431 at once (before the stream ends), then the next request.

    A connection whose last request was refused is still closed at idle_timeout.
    """
    fds = await baseline_fds(server)
    log_start = len(server.stderr())
    big_record = fc.record(fc.PARAMS, 1, fc.pairs([(b"HTTP_X_A", b"a" * 65000)]))
    for address in (server.unix, server.tcp):
        async with await FcgiStream.connect(address) as s:
            # Two records over the limit together; the stream's end is not sent yet.
            await s.send(fc.begin(1, keep=True) + big_record + big_record)
            with trio.fail_after(1.0):  # far below header_timeout
                response = await s.response(1)
            assert response.status == 431, response
            # The rest of the refused request is dropped; the connection serves the next.
            await s.send(fc.record(fc.PARAMS, 1) + fc.stdin(1, b"late"))
            await s.send(fc.request(2, "GET", "/next", keep=True))
            assert (await s.response(2)).status == 200
        # One header alone over the limit, the only request of its kept connection:
        # the connection idles and the server closes it at idle_timeout.
        async with await FcgiStream.connect(address) as s:
            await s.send(fc.begin(3, keep=True) + fc.params(3, fc.nginx_params(HTTP_X="x" * 70000)))
            assert (await s.response(3)).status == 431
            start = time.monotonic()
            assert await s.closed(timeout=FCGI_CONFIG["idle_timeout"] + 5) == []
            assert time.monotonic() - start > FCGI_CONFIG["idle_timeout"] - 1
    lines = log_lines(server, log_start, "answered 431")
    assert len(lines) == 4 and all("[INFO]" in ln for ln in lines), lines
    # A pair length claiming 2**31 - 1 bytes in a small record is broken framing: closed.
    for address in (server.unix, server.tcp):
        bad_pair = b"\x01\xff\xff\xff\xffA" + b"v" * 10
        data = fc.begin(1) + fc.record(fc.PARAMS, 1, bad_pair) + fc.record(fc.PARAMS, 1)
        raw, _ = await fcgi_exchange(address, data)
        assert raw == b""
    assert_clean_log(server, log_start)
    await assert_healthy(server)
    assert_fds_back(server, fds)


async def test_oversize_stdin_gets_413(server: HostileServer) -> None:
    """STDIN over max_body_size: 413, whether CONTENT_LENGTH says so or the stream does.

    A streamed body (no CONTENT_LENGTH, as nginx sends with fastcgi_request_buffering
    off) goes over while the application already runs: it sees http.disconnect, the
    front-end gets the 413 and the connection serves the next request. When the
    application had started its response, only a cut connection can end it.
    """
    fds = await baseline_fds(server)
    log_start = len(server.stderr())
    limit = FCGI_CONFIG["max_body_size"]
    for family, address in (("unix", server.unix), ("tcp", server.tcp)):
        async with await FcgiStream.connect(address) as s:
            # CONTENT_LENGTH over the limit: 413 before a byte of the body.
            await s.send(fc.begin(1, keep=True) + fc.params(1, post_params("/", str(limit + 1))))
            with trio.fail_after(1.0):
                assert (await s.response(1)).status == 413
            await s.send(fc.stdin(1, b"late"))
            # A streamed body that goes over while the app reads it.
            tag = f"stream-413-{family}"
            await s.send(
                fc.begin(2, keep=True) + fc.params(2, post_params(f"/_t/upload?{tag}", ""))
            )
            await s.send(fc.stdin(2, b"z" * (limit + 1)))
            response = await s.response(2)
            assert (response.status, response.protocol_status) == (413, 0), response
            seen = server.wait_record(tag)
            assert seen["seen"][-1] == "http.disconnect", seen
            assert seen["bytes"] <= limit
            # Nothing more for request 2 (the app's own answer never goes out), and
            # the connection goes on, request id 2 included.
            await s.send(fc.request(2, "GET", "/next", keep=True))
            next_response = await s.response(2)
            assert (next_response.status, next_response.body) == (200, b"hello")
            assert not s.ended.get(2)
        # The response has begun when the body goes over: the connection is cut (the
        # app is cancelled with it; the fds coming back below show it ended).
        async with await FcgiStream.connect(address) as s:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await s.send(
                    fc.begin(1, keep=True)
                    + fc.params(1, post_params(f"/_t/start-then-read?started-{family}", ""))
                    + fc.stdin(1, b"z" * (limit + 1))
                )
            records = await s.closed()
            assert s.reset or family == "unix", "a cut response must not end cleanly over TCP"
            assert all(kind != fc.END_REQUEST for kind, _, _ in records), records
    lines = log_lines(server, log_start, "body over the limit")
    assert len(lines) == 4 and all("[INFO]" in ln for ln in lines), lines
    assert_clean_log(server, log_start)
    await assert_healthy(server)
    assert_fds_back(server, fds)


# --------------------------------------------------------------------------- 3,000 ids


HEADER_TIMEOUT_3000 = 10.0


@pytest.mark.hostile
async def test_three_thousand_request_ids_on_one_connection(tmp_path: Path) -> None:
    """3,000 BEGIN_REQUESTs left open: 64 served, the rest OVERLOADED, memory bounded.

    With PARAMS (the applications run and wait for their bodies), then without (the
    ids wait in the core), then alone on a connection (cut at header_timeout).
    """
    # Its own server: the 64 requests wait for their bodies while 10 MB of records
    # go in, which on a loaded machine can take longer than the shared read_timeout;
    # and the 64 ids begun without PARAMS (a head on its way) wait while 2,936
    # OVERLOADED records are read, which under load took longer than the shared 3 s
    # (the connection was then cut before the ABORT_REQUESTs could go in).
    config = {**FCGI_CONFIG, "read_timeout": 60.0, "header_timeout": HEADER_TIMEOUT_3000}
    with running_server(tmp_path, config) as server:
        fds = await baseline_fds(server)
        log_start = len(server.stderr())
        before = await counts(server)
        ids = range(1, 3001)
        # Each request's PARAMS about 3.4 KB: 10 MB in all.
        items = post_params("/_t/count", "5", HTTP_X_PAD="p" * 3000)
        rss0 = server.rss_kib()
        overloaded: list[int] = []
        async with await FcgiStream.connect(server.unix) as s:

            async def collect_overloaded(n: int) -> None:
                while len(overloaded) < n:
                    record = await s.next_record()
                    assert record is not None, "closed"
                    kind, rid, content = record
                    assert kind == fc.END_REQUEST, record
                    assert struct.unpack(">IB3x", content) == (0, fc.OVERLOADED), record
                    overloaded.append(rid)

            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(collect_overloaded, len(ids) - MAX_REQUESTS)
                    for i in ids:
                        await s.send(fc.begin(i, keep=True) + fc.params(i, items))
            assert overloaded == list(range(MAX_REQUESTS + 1, 3001))
            grown = server.rss_kib() - rss0
            print(f"RSS growth with {MAX_REQUESTS} requests open and 3,000 begun: {grown} KiB")
            assert grown < 16 * 1024, f"RSS grew by {grown} KiB"
            # The 64 that got in are served once their bodies come.
            s.ended.clear()
            await s.send(b"".join(fc.stdin(i, b"hello") for i in range(1, MAX_REQUESTS + 1)))
            for i in range(1, MAX_REQUESTS + 1):
                response = await s.response(i)
                assert (response.status, response.body) == (200, b"5"), (i, response)
            # Now 3,000 BEGIN_REQUESTs alone: 64 ids wait in their PARAMS, the rest are
            # OVERLOADED; ABORT_REQUEST frees the 64; the connection serves on.
            overloaded.clear()
            await s.send(b"".join(fc.begin(i, keep=True) for i in ids))
            with trio.fail_after(10):
                await collect_overloaded(len(ids) - MAX_REQUESTS)
            await s.send(
                b"".join(fc.record(fc.ABORT_REQUEST, i) for i in range(1, MAX_REQUESTS + 1))
            )
            for i in range(1, MAX_REQUESTS + 1):
                response = await s.response(i)
                assert (response.stdout, response.protocol_status) == (b"", 0)
            await s.send(fc.request(7, "GET", "/", keep=True))
            assert (await s.response(7)).status == 200
        after = await counts(server)
        assert after["http.request"] - before["http.request"] == MAX_REQUESTS
        # Alone on a fresh connection, ids that never finish their PARAMS: cut at header_timeout.
        async with await FcgiStream.connect(server.tcp) as s:
            await s.send(b"".join(fc.begin(i, keep=True) for i in ids))
            start = time.monotonic()
            records = await s.closed(timeout=HEADER_TIMEOUT_3000 + 10)
            assert time.monotonic() - start > HEADER_TIMEOUT_3000 - 1
            assert len(records) == len(ids) - MAX_REQUESTS
        assert len(wait_lines(server, log_start, ("not received within",), 1)) == 1
        assert_clean_log(server, log_start)
        await assert_healthy(server)
        assert_fds_back(server, fds)


# --------------------------------------------------------------------------- aborts


@pytest.mark.hostile
async def test_abort_request_storm(server: HostileServer) -> None:
    """Thousands of BEGIN + ABORT on kept connections: each app sees http.disconnect,
    END_REQUEST comes back for each, the connections and the server go on."""
    fds = await baseline_fds(server)
    log_start = len(server.stderr())
    before = await counts(server)
    connections, rounds, width = 16, 40, 4
    rss0 = server.rss_kib()
    items = post_params("/_t/count", "1000")

    async def storm(address: str | tuple[str, int]) -> None:
        async with await FcgiStream.connect(address) as s:
            for _ in range(rounds):
                batch = b"".join(
                    fc.begin(i, keep=True)
                    + fc.params(i, items)
                    + fc.record(fc.STDIN, i, b"x" * 100)
                    for i in range(1, width + 1)
                )
                batch += b"".join(fc.record(fc.ABORT_REQUEST, i) for i in range(1, width + 1))
                await s.send(batch)
                for i in range(1, width + 1):
                    response = await s.response(i)
                    assert (response.stdout, response.protocol_status) == (b"", 0), response
            # Aborted before its PARAMS ended (the app never hears of it), twice, and
            # for ids that are not active: one END_REQUEST for the first, nothing else.
            await s.send(
                fc.begin(9, keep=True)
                + fc.record(fc.PARAMS, 9, fc.pairs(items[:3]))
                + fc.record(fc.ABORT_REQUEST, 9)
                + fc.record(fc.ABORT_REQUEST, 9)
                + fc.record(fc.ABORT_REQUEST, 10)
                + fc.record(fc.ABORT_REQUEST, 1)
            )
            assert (await s.response(9)).stdout == b""
            await s.send(fc.request(1, "GET", "/", keep=True))
            assert (await s.response(1)).status == 200
            assert not s.ended.get(9) and not s.ended.get(10), s.ended

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for n in range(connections):
                nursery.start_soon(storm, server.unix if n % 2 else server.tcp)
    aborted = connections * rounds * width
    deadline = time.monotonic() + 10
    while True:
        tally = await counts(server) - before
        if tally["send-raised"] >= aborted or time.monotonic() > deadline:
            break
        await trio.sleep(0.05)  # polling interval
    assert tally == Counter({"http.disconnect": aborted, "send-raised": aborted}), tally
    grown = server.rss_kib() - rss0
    print(f"{aborted} aborted requests; RSS growth {grown} KiB")
    assert grown < 8 * 1024, f"RSS grew by {grown} KiB"
    assert_clean_log(server, log_start)
    await assert_healthy(server)
    assert_fds_back(server, fds)


async def test_a_reused_id_refused_while_its_aborted_app_runs(server: HostileServer) -> None:
    """After ABORT_REQUEST the id is free at once, though its app may still run: a new
    request on that id refused for its head (431, 413) gets its answer; the connection,
    and the old app, go on."""
    fds = await baseline_fds(server)
    log_start = len(server.stderr())
    limit = FCGI_CONFIG["max_body_size"]
    refused = {
        431: fc.begin(1, keep=True) + fc.params(1, fc.nginx_params(HTTP_X="x" * 70000)),
        413: fc.begin(1, keep=True) + fc.params(1, post_params("/", str(limit + 1))),
    }
    for status, data in refused.items():
        tag = f"reused-{status}"
        async with await FcgiStream.connect(server.unix) as s:
            # Two requests at once: each runs in a task of its own.
            await s.send(
                fc.request(1, "GET", f"/_t/start-then-hold?{tag}", keep=True)
                + fc.request(3, "GET", "/", keep=True)
            )
            assert (await s.response(3)).status == 200
            while not s.partial_stdout.get(1):
                assert await s.next_record() is not None
            # Aborted: END_REQUEST at once, while the app still holds its response.
            await s.send(fc.record(fc.ABORT_REQUEST, 1))
            assert (await s.response(1)).body == b"started\n"
            await s.send(data)
            assert (await s.response(1)).status == status
            await s.send(fc.request(2, "GET", "/", keep=True))
            assert (await s.response(2)).status == 200
            async with await FcgiStream.connect(server.tcp) as other:
                await other.send(fc.request(1, "GET", f"/_t/release?{tag}"))
                assert (await other.response(1)).status == 200
            assert server.wait_record(tag) == {"send": "raised"}
            await s.send(fc.request(2, "GET", "/", keep=True))
            assert (await s.response(2)).status == 200
    assert_clean_log(server, log_start)
    await assert_healthy(server)
    assert_fds_back(server, fds)


# --------------------------------------------------------------------------- stray records


async def test_records_for_inactive_ids_and_junk_management_records(server: HostileServer) -> None:
    """Records for ids never begun are ignored; id-0 records get UNKNOWN_TYPE or
    GET_VALUES_RESULT (only the names asked); broken ones close the connection."""
    fds = await baseline_fds(server)
    log_start = len(server.stderr())
    stray = (
        fc.record(fc.STDIN, 7, b"stray")
        + fc.record(fc.STDIN, 7)
        + fc.record(fc.PARAMS, 8, fc.pairs([(b"A", b"b")]))
        + fc.record(fc.PARAMS, 8)
        + fc.record(fc.ABORT_REQUEST, 9)
        + fc.record(8, 10, b"DATA for a FILTER")
        + fc.record(12, 11, b"a type 1.0 doesn't define")
        + fc.record(255, 12)
        + fc.record(fc.GET_VALUES, 13, fc.pairs([(b"FCGI_MAX_REQS", b"")]))
    )
    get_values = fc.pairs(
        [
            (b"NOPE", b""),
            (b"FCGI_MAX_REQS", b"junk"),
            (b"FCGI_MAX_REQS", b""),
            (b"\xff" * 200, b""),
            (b"FCGI_MPXS_CONNS", b""),
        ]
    )
    for address in (server.unix, server.tcp):
        async with await FcgiStream.connect(address) as s:
            await s.send(stray + fc.request(1, "GET", "/", keep=True))
            assert (await s.response(1)).status == 200
            assert set(s.ended) == {1} and not s.management, (s.ended, s.management)
            # Management records (id 0) of types it does not understand, junk inside.
            kinds = (0, 12, 100, 255, fc.BEGIN_REQUEST, fc.ABORT_REQUEST, fc.PARAMS, fc.STDIN, 8)
            for kind in kinds:
                await s.send(fc.record(kind, 0, b"\x01junk\xff", padding=5))
            await s.send(fc.record(fc.GET_VALUES, 0, get_values, padding=3))
            await s.send(fc.record(fc.GET_VALUES, 0))
            await s.send(fc.request(2, "GET", "/", keep=True))
            assert (await s.response(2)).status == 200
            expected = [(fc.UNKNOWN_TYPE, bytes([kind]) + bytes(7)) for kind in kinds]
            expected += [
                (
                    fc.GET_VALUES_RESULT,
                    fc.pairs([(b"FCGI_MAX_REQS", b"64"), (b"FCGI_MPXS_CONNS", b"1")]),
                ),
                (fc.GET_VALUES_RESULT, b""),
            ]
            assert s.management == expected
    # Broken framing or records only an application sends: the connection closes.
    begun = fc.begin(1, keep=True)
    closing = {
        "GET_VALUES pair running past its record": fc.record(fc.GET_VALUES, 0, b"\x05\x00AB"),
        "GET_VALUES with a 2**31 length": fc.record(fc.GET_VALUES, 0, b"\xff\xff\xff\xff\x00"),
        "BEGIN_REQUEST of 9 bytes": fc.record(fc.BEGIN_REQUEST, 1, bytes(9)),
        "BEGIN_REQUEST for an active id": begun + begun,
        "PARAMS after their end": begun + fc.params(1, fc.nginx_params()) + fc.params(1, []),
        "STDIN before the end of PARAMS": begun + fc.record(fc.STDIN, 1, b"x"),
        **{
            f"type {kind} from the front-end": fc.record(kind, 1, bytes(8))
            for kind in (fc.END_REQUEST, fc.STDOUT, fc.STDERR, 10, 11)
        },
    }
    before_bad = len(log_lines(server, 0, "bad FastCGI input"))
    for data in closing.values():
        for address in (server.unix, server.tcp):
            raw, _ = await fcgi_exchange(address, data)
            assert raw == b"", (data, raw)
    bad = log_lines(server, 0, "bad FastCGI input")[before_bad:]
    assert len(bad) == 2 * len(closing) and all("[INFO]" in ln for ln in bad), bad
    # Management records, then gone before all the answers are written: nothing at ERROR.
    query = fc.record(fc.GET_VALUES, 0, fc.pairs([(b"FCGI_MAX_CONNS", b"")]), padding=255)
    for _ in range(20):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw_sock:
            raw_sock.connect(server.unix)
            raw_sock.sendall(query * 200)

    # Management records from a peer that never reads the answers: once they fill the
    # socket, the server stops reading, and a timeout ends the connection: write_timeout
    # while a request waits for its body, else header_timeout (or idle_timeout after a
    # request, a silent close). The waiting request sees http.disconnect.
    async def flood(with_request: bool) -> None:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with sock:
            await sock.connect(server.unix)
            if with_request:
                await FcgiStream(sock).send(
                    fc.begin(1, keep=True)
                    + fc.params(1, post_params("/_t/upload?flooded", "10"))
                    + fc.record(fc.STDIN, 1, b"12345")
                )
            sent = 0
            block = query * 256
            view = memoryview(block)
            with trio.fail_after(FCGI_CONFIG["write_timeout"] + 10):
                try:
                    while sent < 64 << 20:
                        n = await sock.send(view)
                        sent += n
                        view = view[n:] or memoryview(block)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            assert sent < 64 << 20, "the server read on while its answers were not read"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood, False)
        nursery.start_soon(flood, True)
    lines = wait_lines(server, log_start, ("(write_timeout)", "(header_timeout)"), 2)
    assert len(lines) == 2 and all("[INFO]" in ln for ln in lines), lines
    assert server.wait_record("flooded")["seen"][-1] == "http.disconnect"
    assert_fds_back(server, fds)
    assert_clean_log(server, log_start)
    await assert_healthy(server)
    assert_fds_back(server, fds)


# --------------------------------------------------------------------------- truncation


def _truncations(tag: str) -> dict[str, tuple[bytes, bool]]:
    """Prefixes of a POST to /_t/upload: (bytes, whether the app gets to read its body)."""
    body = b"b" * 3000
    begin = fc.begin(1)
    params_records = fc.params(1, post_params(f"/_t/upload?{tag}", str(len(body))))
    head = begin + params_records
    first_stdin = fc.record(fc.STDIN, 1, body[:1000])
    padded_stdin = fc.record(fc.STDIN, 1, body[:1000], padding=7)
    return {
        "mid-header": (begin[:4], False),
        "after BEGIN_REQUEST": (begin, False),
        "mid-PARAMS record": (begin + params_records[:30], False),
        "before the end of PARAMS": (head[:-8], False),
        "mid-STDIN record": (head + first_stdin[:500], True),
        "mid-STDIN padding": (head + padded_stdin[:-3], True),
        "between STDIN records": (head + first_stdin, True),
        "before the end of STDIN": (head + fc.record(fc.STDIN, 1, body), True),
    }


@pytest.mark.parametrize("family", ["unix", "tcp"])
async def test_truncated_streams(server: HostileServer, family: str) -> None:
    """EOF (and, over TCP, a reset) mid-record, mid-PARAMS, mid-STDIN: the application
    sees http.disconnect, the server logs one INFO line and carries on."""
    fds = await baseline_fds(server)
    log_start = len(server.stderr())
    address = server.unix if family == "unix" else server.tcp
    endings = ["eof", "reset"] if family == "tcp" else ["eof"]
    cases = 0
    for ending in endings:
        for name in _truncations(""):
            tag = f"trunc-{family}-{ending}-{name.replace(' ', '-')}"
            data, app_reads = _truncations(tag)[name]
            with socket.socket(
                socket.AF_UNIX if family == "unix" else socket.AF_INET, socket.SOCK_STREAM
            ) as s:
                s.connect(address)
                s.sendall(data)
                if ending == "reset":
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            cases += 1
            if app_reads:
                seen = server.wait_record(tag)
                assert seen["seen"][-1] == "http.disconnect", (name, seen)
            else:
                assert not (server.record_dir / f"{tag}.json").exists()
    # One line per case, at INFO, says what was cut (a reset adds "connection lost").
    lines = wait_lines(server, log_start, ("closed the connection mid-request",), cases)
    assert len(lines) == cases and all("[INFO]" in ln for ln in lines), lines
    assert_clean_log(server, log_start)
    await assert_healthy(server)
    assert_fds_back(server, fds)


# --------------------------------------------------------------------------- stop reading


@pytest.mark.parametrize("family", ["unix", "tcp"])
async def test_frontend_that_never_reads_a_multiplexed_connection(
    tmp_path: Path, family: str
) -> None:
    """An endless download, an upload that stalls and a stream of GET_VALUES on one
    connection whose peer never reads: write_timeout cuts it, the download's send()
    raises, the upload sees http.disconnect; nothing at ERROR, every fd comes back.

    The upload's END_REQUEST and the GET_VALUES answers wait behind the stuck write
    and learn that the connection broke.
    """
    config = {**FCGI_CONFIG, "write_timeout": 1.0, "read_timeout": 0.5}
    with running_server(tmp_path, config) as server:
        fds = await baseline_fds(server)
        log_start = len(server.stderr())
        address = server.unix if family == "unix" else server.tcp
        sock = socket.socket(
            socket.AF_UNIX if family == "unix" else socket.AF_INET, socket.SOCK_STREAM
        )
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(address)
            sock.sendall(
                fc.request(1, "GET", f"/_t/download?never-{family}-1", keep=True)
                + fc.begin(2, keep=True)
                + fc.params(2, post_params(f"/_t/upload?never-{family}-2", "10"))
                + fc.record(fc.STDIN, 2, b"12345")
            )
            # The upload stalls past read_timeout before the download's write_timeout.
            seen = server.wait_record(f"never-{family}-2", timeout=10)
            assert seen["seen"][-1] == "http.disconnect", seen
            # Management records keep coming: their answers queue behind the stuck write.
            sock.setblocking(False)
            query = fc.record(fc.GET_VALUES, 0, fc.pairs([(b"FCGI_MAX_REQS", b"")]))
            queries = memoryview(query * 2000)
            deadline = time.monotonic() + 5
            while queries and time.monotonic() < deadline:
                try:
                    queries = queries[sock.send(queries) :]
                except BlockingIOError:
                    time.sleep(0.01)  # polling interval
                except OSError:
                    break
            seen = server.wait_record(f"never-{family}-1", timeout=10)
            assert seen["oserror"] is True, seen
            assert_fds_back(server, fds)
        assert_clean_log(server, log_start)
        await assert_healthy(server)
        assert_fds_back(server, fds)


async def test_a_request_in_the_connections_task_learns_that_a_neighbour_broke_it(
    tmp_path: Path,
) -> None:
    """The first request of a connection runs in the connection's own task; when a request
    multiplexed beside it breaks the connection (its write times out), the first one is
    not cancelled: its next send() raises, and the connection is cut all the same."""
    config = {**FCGI_CONFIG, "write_timeout": 1.0}
    with running_server(tmp_path, config) as server:
        fds = await baseline_fds(server)
        log_start = len(server.stderr())
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(server.tcp)
            sock.settimeout(EXCHANGE_TIMEOUT)
            sock.sendall(fc.request(1, "GET", "/_t/start-then-hold?first", keep=True))
            seen = b""
            while b"started" not in seen:  # its response began: it holds, alone
                chunk = sock.recv(65536)
                assert chunk, seen
                seen += chunk
            # A second request beside it, read by the reader the sweep gives a busy
            # request; its endless download fills the socket that nobody reads.
            sock.sendall(fc.request(2, "GET", "/_t/download?second", keep=True))
            outcome = server.wait_record("second", timeout=10)
            assert outcome["oserror"] is True, outcome
            async with await FcgiStream.connect(server.unix) as other:
                await other.send(fc.request(1, "GET", "/_t/release?first"))
                assert (await other.response(1)).status == 200
            assert server.wait_record("first", timeout=10) == {"send": "raised"}
            assert_fds_back(server, fds)
        assert_clean_log(server, log_start)
        await assert_healthy(server)
        assert_fds_back(server, fds)


# --------------------------------------------------------------------------- stalled requests


async def _pump(stream: trio.SocketStream, record: bytes, limit: int) -> tuple[int, bytes]:
    """Send ``record`` over and over until the server has taken nothing for 2 s.

    Returns how many bytes went, and the unsent rest of the record cut last.
    """
    sock = stream.socket
    block = record * max(1, 65536 // len(record))
    sent = 0
    while sent < limit:
        with trio.move_on_after(2.0):
            # Whole blocks from a record boundary: what a send left is sent next.
            view = memoryview(block)[sent % len(record) :] if sent % len(record) else block
            sent += await sock.send(view)
            continue
        break
    return sent, record[sent % len(record) :] if sent % len(record) else b""


@pytest.mark.hostile
async def test_stalled_request_on_multiplexed_connections_keeps_memory_bounded(
    tmp_path: Path,
) -> None:
    """Requests whose application never reads its body while the front-end keeps sending
    STDIN: each connection holds about 1 MiB, whatever the record size, then stops reading.

    Tiny records matter: two bytes of body cost ~60 bytes of Python objects each.
    """
    config = {k: v for k, v in FCGI_CONFIG.items() if k != "max_body_size"}
    config.update(read_timeout=60.0, header_timeout=30.0)
    conns_per_size, sizes = 4, (65535, 2)
    with running_server(tmp_path, config) as server:
        fds = await baseline_fds(server)
        log_start = len(server.stderr())
        streams: list[tuple[trio.SocketStream, str, bytes]] = []
        results: dict[str, tuple[int, bytes]] = {}

        async def pump(stream: trio.SocketStream, tag: str, record: bytes) -> None:
            results[tag] = await _pump(stream, record, 256 << 20)

        try:
            for size in sizes:
                batch = []
                # Measured from before the connections (their requests' cost included).
                rss0 = server.rss_kib()
                for k in range(conns_per_size):
                    stream = await trio.open_unix_socket(server.unix)
                    tag = f"hold-{size}-{k}"
                    # Two requests: the connection multiplexes (a task each); neither reads.
                    await stream.send_all(
                        b"".join(
                            fc.begin(i, keep=True)
                            + fc.params(i, post_params(f"/_t/hold?{tag}", ""))
                            for i in (1, 2)
                        )
                    )
                    batch.append((stream, tag, fc.record(fc.STDIN, 1, b"s" * size)))
                streams += batch
                with trio.fail_after(60):
                    async with trio.open_nursery() as nursery:
                        for stream, tag, record in batch:
                            nursery.start_soon(pump, stream, tag, record)
                per_connection = (server.rss_kib() - rss0) / conns_per_size
                sent = [results[tag][0] for _, tag, _ in batch]
                print(
                    f"{size}-byte STDIN records: {per_connection:.0f} KiB of RSS per stalled"
                    f" connection; bytes taken per connection: {sent}"
                )
                assert per_connection < 2048, f"{per_connection:.0f} KiB per stalled connection"
                assert all(n < 16 << 20 for n in sent), sent
            # Released, the applications answer; their unread bodies are dropped and the
            # connections serve on.
            for _, tag, _ in streams:
                async with await FcgiStream.connect(server.tcp) as s:
                    await s.send(fc.request(1, "GET", f"/_t/release?{tag}"))
                    assert (await s.response(1)).status == 200
            for stream, tag, _ in streams:
                s = FcgiStream(stream.socket)
                with trio.fail_after(15):
                    await s.send(results[tag][1] + fc.record(fc.STDIN, 1) + fc.stdin(2, b""))
                    for i in (1, 2):
                        response = await s.response(i)
                        assert (response.status, response.body) == (200, b"held")
                    await s.send(fc.request(3, "GET", "/", keep=True))
                    assert (await s.response(3)).status == 200
        finally:
            for stream, _, _ in streams:
                stream.socket.close()
        assert_clean_log(server, log_start)
        await assert_healthy(server)
        assert_fds_back(server, fds)


# --------------------------------------------------------------------------- idle connections


@pytest.mark.hostile
async def test_idle_keep_conn_connections_count_in_max_connections(tmp_path: Path) -> None:
    """Kept-alive idle connections hold slots: at max_connections a new connection waits
    until idle_timeout closes them, then it is served."""
    limit, idle = 200, 4.0
    raise_nofile(4 * limit)
    config = {**FCGI_CONFIG, "max_connections": limit, "idle_timeout": idle, "header_timeout": 30.0}
    with running_server(tmp_path, config) as server:
        fds = await baseline_fds(server)
        log_start = len(server.stderr())
        rss0 = server.rss_kib()
        held: list[tuple[FcgiStream, float]] = []
        try:
            for n in range(limit):
                s = await FcgiStream.connect(server.unix if n % 2 else server.tcp)
                await s.send(fc.request(1, "GET", "/", keep=True))
                assert (await s.response(1)).status == 200
                held.append((s, time.monotonic()))
            per_connection = (server.rss_kib() - rss0) / limit
            print(f"RSS per idle keep-conn connection: {per_connection:.1f} KiB")
            async with await FcgiStream.connect(server.unix) as waiting:
                await waiting.send(fc.request(1, "GET", "/waited"))
                with trio.move_on_after(1.0) as scope:
                    await waiting.next_record()
                assert scope.cancelled_caught, "served while every slot was held"
                assert time.monotonic() - held[-1][1] < idle, "too slow to check before the cut"
                with trio.fail_after(idle + 10):
                    response = await waiting.response(1)
                assert (response.status, response.body) == (200, b"hello")
            # Every idle connection was closed, after idle_timeout and not long after.
            for s, served_at in held:
                assert await s.closed(timeout=10) == []
                waited = time.monotonic() - served_at
                assert waited > idle - 0.5, waited
        finally:
            for s, _ in held:
                s.sock.close()
        assert_clean_log(server, log_start)
        await assert_healthy(server)
        assert_fds_back(server, fds)


# --------------------------------------------------------------------------- fuzzing


def _seeds() -> list[bytes]:
    """Valid FastCGI streams the fuzzer mutates."""
    interleaved = (
        fc.begin(1)
        + fc.begin(2, keep=True)
        + fc.params(2, post_params("/m", "4"))
        + fc.params(1, fc.nginx_params("GET", "/m?x=1"))
        + fc.stdin(2, b"body")
        + fc.stdin(1, b"")
    )
    return [
        fc.request(1, "GET", "/m?x=1"),
        fc.request(1, "POST", "/m", b"body" * 50),
        fc.request(1, "GET", "/m", keep=True) + fc.request(2, "POST", "/m", b"x" * 10),
        interleaved,
        fc.record(fc.GET_VALUES, 0, fc.pairs([(b"FCGI_MAX_CONNS", b"")])) + fc.request(3),
        fc.begin(1, keep=True)
        + fc.params(1, fc.nginx_params())
        + fc.record(fc.ABORT_REQUEST, 1)
        + fc.request(1),
        fc.begin(1, role=fc.AUTHORIZER) + fc.request(2),
    ]


def _boundaries(data: bytes) -> list[int]:
    """Where each record header starts in a valid stream."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        out.append(pos)
        pos += 8 + (data[pos + 4] << 8 | data[pos + 5]) + data[pos + 6]
    return out


def fuzzed_streams(count: int, seed: int = 10) -> list[tuple[str, bytes, bool]]:
    """Seeded mutations of valid streams: (name, bytes, half-close after sending).

    Half of the mutations hit a record header (version, type, id, lengths), where a
    FastCGI parser goes wrong; the rest are anywhere.
    """
    rnd = random.Random(seed)
    seeds = _seeds()
    out = []
    for n in range(count):
        base = rnd.choice(seeds)
        heads = _boundaries(base)
        data = bytearray(base)
        for _ in range(rnd.randint(1, 3)):
            if rnd.random() < 0.5 and heads:
                i = min(rnd.choice(heads) + rnd.randint(0, 7), len(data))
            else:
                i = rnd.randint(0, len(data))
            op = rnd.choice(["truncate", "flip", "set", "insert", "delete", "duplicate"])
            if op == "truncate":
                del data[i:]
            elif op == "flip" and i < len(data):
                data[i] ^= rnd.randint(1, 255)
            elif op == "set" and i < len(data):
                data[i] = rnd.choice([0, 1, 2, 3, 7, 8, 11, 12, 127, 128, 255])
            elif op == "insert":
                data[i:i] = rnd.choice([rnd.randbytes(rnd.randint(1, 8)), bytes(8), b"\x01"])
            elif op == "delete":
                del data[i : i + rnd.randint(1, 8)]
            elif op == "duplicate":
                data[i:i] = data[i : i + rnd.randint(1, 64)]
        eof = rnd.random() < 0.2
        out.append((f"fuzz {seed}/{n}: {bytes(data[:48])!r}", bytes(data), eof))
    return out


def classify(raw: bytes, reset: bool) -> list[str]:
    """What one connection got: per-request outcomes, management answers, how it ended.

    Anything a front-end must never see is a 'BAD: ...' entry.
    """
    try:
        records, trailing = parse_records(raw)
        responses = fcgi_responses(records)
    except ValueError as exc:
        return [f"BAD: {exc}"]
    out = []
    if trailing and not reset:
        out.append(f"BAD: a partial record, then a clean close: {trailing[:40]!r}")
    for _, response in responses:
        out.append(_outcome(response))
    for kind, rid, _ in records:
        if rid == 0:
            out.append("GET_VALUES_RESULT" if kind == fc.GET_VALUES_RESULT else "UNKNOWN_TYPE")
    out.append("reset" if reset else "close")
    return out


def _outcome(response: FcgiResponse) -> str:
    if response.app_status != 0:
        return f"BAD: app status {response.app_status}"
    if response.protocol_status != 0:
        return PROTOCOL_STATUS.get(response.protocol_status, f"BAD: {response.protocol_status}")
    try:
        status = response.status
    except ValueError as exc:
        return f"BAD: {exc}"
    if status is None:
        return "empty"
    if status >= 500:
        return f"BAD: {status}"
    return str(status)


@pytest.mark.hostile
async def test_two_thousand_mutated_record_streams(tmp_path: Path) -> None:
    """Mutated FastCGI streams: each gets whole records with a 2xx/4xx or a refusal, an
    empty answer or a close; never a 5xx, a broken record or a hang. Nothing leaks."""
    config = {
        **FCGI_CONFIG,
        "protocol": "fastcgi",
        "header_timeout": 1.0,
        "read_timeout": 1.0,
        "idle_timeout": 1.0,
        "drain_timeout": 1.0,
    }
    raise_nofile(2048)
    with running_server(tmp_path, config) as server:
        fds = await baseline_fds(server, scgi=False)
        log_start = len(server.stderr())
        cases = [(f"seed {i}", data, False) for i, data in enumerate(_seeds())]
        cases += fuzzed_streams(2000)
        outcomes: Counter[str] = Counter()
        by_name: dict[str, list[str]] = {}
        failures: list[str] = []
        limiter = trio.CapacityLimiter(384)

        async def one(i: int, name: str, data: bytes, eof: bool) -> None:
            address = server.unix if i % 2 else server.tcp
            async with limiter:
                try:
                    raw, reset = await fcgi_exchange(
                        address, data, eof=eof, timeout=EXCHANGE_TIMEOUT
                    )
                except trio.TooSlowError:
                    failures.append(f"{name}: no close within {EXCHANGE_TIMEOUT} s")
                    return
            kinds = classify(raw, reset)
            by_name[name] = kinds
            outcomes.update(kinds)
            bad = [k for k in kinds if k.startswith("BAD")]
            if bad:
                failures.append(f"{name}: {bad} {raw[:200]!r}")

        start = time.monotonic()
        async with trio.open_nursery() as nursery:
            for i, (name, data, eof) in enumerate(cases):
                nursery.start_soon(one, i, name, data, eof)
        print(
            f"{len(cases)} FastCGI streams in {time.monotonic() - start:.1f} s:"
            f" {sorted(outcomes.items())}"
        )
        assert not failures, f"{len(failures)} failures, e.g.:\n" + "\n".join(failures[:20])
        # The seeds themselves are served.
        assert by_name["seed 0"] == ["200", "close"]
        assert by_name["seed 3"].count("200") == 2
        assert by_name["seed 6"] == ["UNKNOWN_ROLE", "200", "close"]
        assert outcomes["200"] > 100 and outcomes["close"] + outcomes["reset"] == len(cases)
        assert_clean_log(server, log_start)
        await assert_healthy(server, scgi=False)
        assert_fds_back(server, fds)
