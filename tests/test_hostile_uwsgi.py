"""Hostile uwsgi input against the real ``python -m trioscgi`` process (``protocol = "uwsgi"``).

The uwsgi part of the hostile suite (tests/test_hostile.py is SCGI's, the harness is
tests/hostile_harness.py): bad sizes, truncated packets, oversize vars, other modifiers,
bad CONTENT_LENGTHs, and a fuzzer of mutated captured packets. Each packet is sent whole
and then the write side is closed (a front-end never does that, but it makes every
truncation an EOF instead of a header_timeout wait). After each: a 4xx or 501 with an
HTTP/1.1 status line, or a close, never a 5xx from us; the server is up and answers
healthy requests, logged no ERROR or traceback, and is back to its baseline fds.
"""

from __future__ import annotations

import random
import re
import socket
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostile_harness import HostileServer, address_family, log_problems, running_server
from uwsgi_client import encode_packet, encode_vars, stock_vars

CAPTURES = Path(__file__).parent / "data" / "captures"
CONFIG: dict[str, Any] = {
    "protocol": "uwsgi",
    "header_timeout": 3.0,
    "read_timeout": 3.0,
    "drain_timeout": 2.0,
    "write_timeout": 3.0,
    "max_header_size": 8192,
    "max_body_size": 1 << 20,
}
_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]+\r\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileServer]:
    with running_server(tmp_path_factory.mktemp("hostile-uwsgi"), CONFIG) as s:
        yield s


def exchange(address: str | tuple[str, int], data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``data``, close our write side, read until EOF (a reset counts as one)."""
    with socket.socket(address_family(address), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        chunks = []
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
    return b"".join(chunks)


def status(raw: bytes) -> int | None:
    """The answer's status, None for a close without one; anything else fails."""
    if not raw:
        return None
    m = _STATUS.match(raw)
    assert m is not None, f"not an HTTP/1.1 status line: {raw[:80]!r}"
    return int(m.group(1))


def healthy(server: HostileServer) -> None:
    assert server.alive(), server.stderr()[-3000:]
    for address in (server.unix, server.tcp):
        raw = exchange(address, encode_packet(stock_vars("GET", "/after")))
        assert status(raw) == 200 and raw.endswith(b"hello"), raw[:200]


def settle(server: HostileServer, baseline: int, log_start: int) -> None:
    healthy(server)
    n = server.wait_fds(baseline)
    assert n <= baseline, f"server holds {n} fds, {baseline} before: leaked"
    problems = log_problems(server.stderr()[log_start:])
    assert not problems, "client faults logged as errors:\n" + "\n".join(problems[:20])


def header(block: bytes, modifier1: int = 0, modifier2: int = 0, size: int | None = None) -> bytes:
    return struct.pack("<BHB", modifier1, len(block) if size is None else size, modifier2)


GET = encode_vars(stock_vars("GET", "/"))


def post(length: str) -> bytes:
    return encode_vars(stock_vars("POST", "/", content_length=length))


# (name, packet, the statuses allowed: None = closed without an answer)
CORPUS: list[tuple[str, bytes, set[int | None]]] = [
    ("one byte", b"\x00", {400, None}),
    ("three bytes", b"\x00\x10\x00", {400, None}),
    ("header only", header(GET), {400, None}),
    ("vars cut short", header(GET) + GET[:-5], {400, None}),
    ("size past the block", header(GET, size=len(GET) + 9) + GET, {400, None}),
    ("name size past the block", header(b"\xff\x00ab") + b"\xff\x00ab", {400}),
    ("value size past the block", header(b"\x01\x00a\xff\x00") + b"\x01\x00a\xff\x00", {400}),
    ("empty name", header(b"\x00\x00\x00\x00") + b"\x00\x00\x00\x00", {400}),
    ("vars over max_header_size", header(b"", size=9000), {431}),
    ("65535-byte block announced", header(b"", size=0xFFFF), {431}),
    ("too many vars", header(b"\x01\x00a\x00\x00" * 1100) + b"\x01\x00a\x00\x00" * 1100, {431}),
    ("modifier1 72 (uWSGI ping etc.)", header(GET, 72) + GET, {501}),
    ("modifier1 255", header(GET, 255) + GET, {501}),
    ("modifier1 1", header(GET, 1) + GET, {501}),
    ("modifier2 1", header(GET, 0, 1) + GET, {501}),
    ("CONTENT_LENGTH not digits", header(post("12a")) + post("12a"), {400}),
    ("CONTENT_LENGTH negative", header(post("-1")) + post("-1"), {400}),
    ("CONTENT_LENGTH 19 digits", header(post("9" * 19)) + post("9" * 19), {400}),
    ("CONTENT_LENGTH over max_body_size", header(post("2000000")) + post("2000000"), {413}),
    (
        "CONTENT_LENGTH twice",
        header(post("1") + encode_vars([("CONTENT_LENGTH", "5")]))
        + post("1")
        + encode_vars([("CONTENT_LENGTH", "5")])
        + b"x",
        {400},
    ),
    ("body cut short", header(post("100")) + post("100") + b"x" * 10, {None, 200}),
    ("no REQUEST_METHOD", header(b"\x01\x00a\x00\x00") + b"\x01\x00a\x00\x00", {400}),
    ("ascii garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", {501}),
    ("zeros", b"\x00" * 64, {400}),
]


@pytest.mark.parametrize(("packet", "allowed"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_fixed_corpus(server: HostileServer, packet: bytes, allowed: set[int | None]) -> None:
    baseline, start = server.fds(), len(server.stderr())
    for address in (server.unix, server.tcp):
        got = status(exchange(address, packet))
        assert got in allowed, (got, allowed)
    settle(server, baseline, start)


def mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(("flip", "cut", "insert", "size"))
        at = rng.randrange(len(data)) if data else 0
        if op == "flip" and data:
            data[at] = rng.randrange(256)
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == "size" and len(data) >= 4:
            # Sizes are where the parser's trust lies: the header's and the vars'.
            data[1:3] = rng.randrange(0x10000).to_bytes(2, "little")
    return bytes(data)


def test_mutated_captures(server: HostileServer) -> None:
    rng = random.Random(22)
    seeds = [p.read_bytes() for p in sorted(CAPTURES.glob("*.uwsgi"))]
    baseline, start = server.fds(), len(server.stderr())
    seen: Counter[int | None] = Counter()
    for i in range(400):
        address = server.unix if i % 2 else server.tcp
        got = status(exchange(address, mutate(rng, rng.choice(seeds))))
        # The app answers what parses (200, or its own 404); we answer the rest with a
        # 4xx or 501, or close. Never a 5xx of ours, never a hang (the exchange's timeout).
        assert got is None or got < 500 or got == 501, got
        seen[got] += 1
    print(dict(seen))
    assert seen[400] and seen[200], seen  # both kinds were reached
    settle(server, baseline, start)
