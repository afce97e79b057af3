"""Parse speed of trioscgi.fastcgi against fcgisgi 0.2.3's sansio parser, in the same run.

Three cases, each parser doing the same work (every event up to the end of
the request body, and touching what a server would use: the params, the
body):

* ``nginx GET, new connection``: what nginx 1.22 sends with the stock
  ``fastcgi_params`` for a GET (tests/data/captures/nginx-stock-get-query.fcgi;
  a hand-built equivalent if the capture is missing): BEGIN_REQUEST, one
  PARAMS record, the empty PARAMS and the empty STDIN in one read. A new
  parser per request, as without keep-conn.
* ``nginx GET, keep-conn``: the same request with FCGI_KEEP_CONN, over and
  over on one parser, each request ended as a server would (trioscgi's
  ``end_request``; fcgisgi's empty STDOUT record and ``send_end_request``).
* ``POST 1 MiB``: a 1 MiB body in STDIN records of 32 KiB (as nginx cuts
  them), arriving in 64 KiB reads.

Each parser runs ``--number`` parses per round for ``--rounds`` rounds, the
parsers interleaved round by round so both see the same machine; the best
round counts (timeit's advice: the minimum is the least disturbed figure).

Run from the repository root::

    python bench/parse_fcgi.py            # the full run (about 30 s)
    python bench/parse_fcgi.py --quick    # a smoke run

Timings move with whatever else the machine does. For a figure that does
not, count instructions with callgrind: one parser, one case, two numbers
of parses, and the difference over the difference::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        python bench/parse_fcgi.py --only trioscgi --case get --number 200
    # ... and again with --number 1200: (Ir(1200) - Ir(200)) / 1000 per parse
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trioscgi import fastcgi  # noqa: E402

try:
    from fcgisgi import sansio as fcgisgi
except ImportError:  # pragma: no cover - the bench extra is not installed
    fcgisgi = None  # type: ignore[assignment]

CAPTURE = ROOT / "tests" / "data" / "captures" / "nginx-stock-get-query.fcgi"
BODY_SIZE = 1 << 20
STDIN_RECORD = 32 << 10
CHUNK = 64 << 10


def _record(rtype: int, request_id: int, content: bytes = b"") -> bytes:
    # Padded to 8 as nginx pads.
    pad = -len(content) & 7
    return struct.pack("!BBHHBx", 1, rtype, request_id, len(content), pad) + content + bytes(pad)


def _pairs(params: list[tuple[bytes, bytes]]) -> bytes:
    out = b""
    for name, value in params:
        for length in (len(name), len(value)):
            out += bytes([length]) if length < 128 else struct.pack("!L", length | 1 << 31)
        out += name + value
    return out


def _begin(keep_conn: bool) -> bytes:
    return _record(fastcgi.BEGIN_REQUEST, 1, struct.pack("!HB5x", 1, int(keep_conn)))


# What nginx 1.22 sends with Debian's stock fastcgi_params for
# `curl 'http://127.0.0.1:8080/echo/path?a=1&b=two%20words'`, in its order.
NGINX_GET_PARAMS = [
    (b"QUERY_STRING", b"a=1&b=two%20words"),
    (b"REQUEST_METHOD", b"GET"),
    (b"CONTENT_TYPE", b""),
    (b"CONTENT_LENGTH", b""),
    (b"SCRIPT_NAME", b"/echo/path"),
    (b"REQUEST_URI", b"/echo/path?a=1&b=two%20words"),
    (b"DOCUMENT_URI", b"/echo/path"),
    (b"DOCUMENT_ROOT", b"/usr/share/nginx/html"),
    (b"SERVER_PROTOCOL", b"HTTP/1.1"),
    (b"REQUEST_SCHEME", b"http"),
    (b"GATEWAY_INTERFACE", b"CGI/1.1"),
    (b"SERVER_SOFTWARE", b"nginx/1.22.1"),
    (b"REMOTE_ADDR", b"127.0.0.1"),
    (b"REMOTE_PORT", b"59386"),
    (b"REMOTE_USER", b""),
    (b"SERVER_ADDR", b"127.0.0.1"),
    (b"SERVER_PORT", b"8080"),
    (b"SERVER_NAME", b""),
    (b"REDIRECT_STATUS", b"200"),
    (b"HTTP_HOST", b"127.0.0.1"),
    (b"HTTP_USER_AGENT", b"curl/7.88.1"),
    (b"HTTP_ACCEPT", b"*/*"),
]


def _request(params: list[tuple[bytes, bytes]], body: bytes, keep_conn: bool) -> bytes:
    stdin = b"".join(
        _record(fastcgi.STDIN, 1, body[i : i + STDIN_RECORD])
        for i in range(0, len(body), STDIN_RECORD)
    )
    return (
        _begin(keep_conn)
        + _record(fastcgi.PARAMS, 1, _pairs(params))
        + _record(fastcgi.PARAMS, 1)
        + stdin
        + _record(fastcgi.STDIN, 1)
    )


def nginx_get(keep_conn: bool = False) -> tuple[bytes, str]:
    """The nginx GET and where it came from."""
    if CAPTURE.exists():
        wire = CAPTURE.read_bytes()
        if keep_conn:
            # The capture is without keep-conn: set the flag in its BEGIN_REQUEST.
            wire = _begin(True) + wire[16:]
        return wire, str(CAPTURE.relative_to(ROOT))
    return _request(NGINX_GET_PARAMS, b"", keep_conn), "hand-built (capture missing)"


def big_body_chunks() -> list[bytes]:
    """A 1 MiB POST as the socket would deliver it: 64 KiB reads."""
    params = [
        (b"REQUEST_METHOD", b"POST"),
        (b"CONTENT_TYPE", b"application/octet-stream"),
        (b"CONTENT_LENGTH", b"%d" % BODY_SIZE),
        (b"REQUEST_URI", b"/upload"),
    ]
    wire = _request(params, bytes(range(256)) * (BODY_SIZE // 256), False)
    return [wire[i : i + CHUNK] for i in range(0, len(wire), CHUNK)]


# --- one parse, each way --------------------------------------------------------


def trioscgi_new(wire: bytes) -> Callable[[], int]:
    Connection, EndOfMessage, Request = (
        fastcgi.Connection,
        fastcgi.EndOfMessage,
        fastcgi.Request,
    )

    def parse() -> int:
        conn = Connection()
        conn.receive_data(wire)
        n = 0
        while True:
            event = conn.next_event()
            if type(event) is Request:
                n += len(event.params)
            elif type(event) is EndOfMessage:
                return n

    return parse


def trioscgi_keep(wire: bytes) -> Callable[[], int]:
    EndOfMessage, Request = fastcgi.EndOfMessage, fastcgi.Request
    conn = fastcgi.Connection()

    def parse() -> int:
        conn.receive_data(wire)
        n = 0
        while True:
            event = conn.next_event()
            if type(event) is Request:
                n += len(event.params)
            elif type(event) is EndOfMessage:
                conn.end_request(1)
                return n

    return parse


def trioscgi_chunks(chunks: list[bytes]) -> Callable[[], int]:
    Connection, NEED_DATA, Data, EndOfMessage = (
        fastcgi.Connection,
        fastcgi.NEED_DATA,
        fastcgi.Data,
        fastcgi.EndOfMessage,
    )

    def parse() -> int:
        conn = Connection()
        size = 0
        for chunk in chunks:
            conn.receive_data(chunk)
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                if type(event) is Data:
                    size += len(event.data)
                elif type(event) is EndOfMessage:
                    return size
        raise AssertionError("no EndOfMessage")

    return parse


def fcgisgi_new(wire: bytes) -> Callable[[], int]:
    assert fcgisgi is not None
    FastCGIConnection, ParamsReceived = fcgisgi.FastCGIConnection, fcgisgi.ParamsReceived

    def parse() -> int:
        n = 0
        for event in FastCGIConnection().feed_data(wire):
            if type(event) is ParamsReceived:
                n += len(event.params)
        return n

    return parse


def fcgisgi_keep(wire: bytes) -> Callable[[], int]:
    assert fcgisgi is not None
    ParamsReceived = fcgisgi.ParamsReceived
    conn = fcgisgi.FastCGIConnection()

    def parse() -> int:
        n = 0
        for event in conn.feed_data(wire):
            if type(event) is ParamsReceived:
                n += len(event.params)
        conn.send_stdout(1, b"")
        conn.send_end_request(1, 0, fcgisgi.FCGI_REQUEST_COMPLETE)
        return n

    return parse


def fcgisgi_chunks(chunks: list[bytes]) -> Callable[[], int]:
    assert fcgisgi is not None
    FastCGIConnection, StdinReceived, EndOfStdin = (
        fcgisgi.FastCGIConnection,
        fcgisgi.StdinReceived,
        fcgisgi.EndOfStdin,
    )

    def parse() -> int:
        conn = FastCGIConnection()
        size = 0
        for chunk in chunks:
            for event in conn.feed_data(chunk):
                if type(event) is StdinReceived:
                    size += len(event.data)
                elif type(event) is EndOfStdin:
                    return size
        raise AssertionError("no EndOfStdin")

    return parse


def best_rate(funcs: dict[str, Callable[[], int]], number: int, rounds: int) -> dict[str, float]:
    """Best-of-``rounds`` operations per second for each function, interleaved."""
    best = dict.fromkeys(funcs, float("inf"))
    for _ in range(rounds):
        for name, func in funcs.items():
            loop = range(number)
            start = time.perf_counter()
            for _ in loop:
                func()
            elapsed = time.perf_counter() - start
            best[name] = min(best[name], elapsed)
    return {name: number / seconds for name, seconds in best.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=25, help="rounds (best one counts)")
    parser.add_argument("--number", type=int, default=20000, help="GET parses per round")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 short rounds")
    parser.add_argument(
        "--only",
        choices=["trioscgi", "fcgisgi"],
        help="run just this parser, --number times, once, and print nothing (for callgrind)",
    )
    parser.add_argument("--case", choices=["get", "keep", "post"], default="get")
    args = parser.parse_args()
    rounds, number = (3, 2000) if args.quick else (args.rounds, args.number)
    if fcgisgi is None:
        print("fcgisgi is not installed: pip install 'trioscgi[bench]'", file=sys.stderr)
        return 2

    wire, source = nginx_get()
    keep_wire, _ = nginx_get(keep_conn=True)
    chunks = big_body_chunks()
    if args.only:
        makers = {
            "trioscgi": {"get": trioscgi_new, "keep": trioscgi_keep, "post": trioscgi_chunks},
            "fcgisgi": {"get": fcgisgi_new, "keep": fcgisgi_keep, "post": fcgisgi_chunks},
        }
        inputs: dict[str, Any] = {"get": wire, "keep": keep_wire, "post": chunks}
        func = makers[args.only][args.case](inputs[args.case])
        for _ in range(args.number):
            func()
        return 0
    cases = [
        (
            "nginx GET, new connection",
            {"trioscgi": trioscgi_new(wire), "fcgisgi": fcgisgi_new(wire)},
            number,
        ),
        (
            "nginx GET, keep-conn",
            {"trioscgi": trioscgi_keep(keep_wire), "fcgisgi": fcgisgi_keep(keep_wire)},
            number,
        ),
        (
            "POST 1 MiB, 32 KiB records, 64 KiB reads",
            {"trioscgi": trioscgi_chunks(chunks), "fcgisgi": fcgisgi_chunks(chunks)},
            max(number // 100, 10),
        ),
    ]
    print(f"python {sys.version.split()[0]}, {rounds} rounds, best round counts")
    print(f"nginx request: {source} ({len(wire)} bytes)")
    print()
    print("| case | trioscgi ops/s | fcgisgi 0.2.3 ops/s | ratio |")
    print("|---|---:|---:|---:|")
    for name, funcs, n in cases:
        # The same answer from both before timing anything.
        first, second = (func() for func in funcs.values())
        assert first == second, (name, first, second)
        rates = best_rate(funcs, n, rounds)
        ratio = rates["trioscgi"] / rates["fcgisgi"]
        print(f"| {name} | {rates['trioscgi']:,.0f} | {rates['fcgisgi']:,.0f} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
