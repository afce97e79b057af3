"""Parse speed of trioscgi.protocol against sioscgi 5.0, in the same run.

Two cases:

* ``nginx GET``: the request nginx 1.22 sent with the stock ``scgi_params``
  (tests/data/captures/nginx-stock-get-query.scgi; a hand-built equivalent
  if the capture is missing), fed whole, parsed to the end of the message.
* ``1 MiB body``: a POST with a 1 MiB body, arriving in 64 KiB reads.

Each parser runs ``--number`` parses per round for ``--rounds`` rounds, the
parsers interleaved round by round so both see the same machine; the best
round counts (timeit's advice: the minimum is the least disturbed figure).

Run from the repository root::

    python bench/parse.py            # the full run (about 20 s)
    python bench/parse.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trioscgi import protocol  # noqa: E402

try:
    from sioscgi import request as sio
except ImportError:  # pragma: no cover - the bench extra is not installed
    sio = None  # type: ignore[assignment]

CAPTURE = ROOT / "tests" / "data" / "captures" / "nginx-stock-get-query.scgi"
BODY_SIZE = 1 << 20
CHUNK = 64 << 10


def _netstring(environ: list[tuple[bytes, bytes]]) -> bytes:
    block = b"".join(name + b"\0" + value + b"\0" for name, value in environ)
    return b"%d:%s," % (len(block), block)


def _hand_built_nginx_get() -> bytes:
    # What nginx 1.22 sends with Debian's stock scgi_params for
    # `curl 'http://localhost:8080/echo/path?a=1&b=two%20words'`:
    # CONTENT_LENGTH first, the scgi_params in file order, then HTTP_*.
    return _netstring(
        [
            (b"CONTENT_LENGTH", b"0"),
            (b"REQUEST_METHOD", b"GET"),
            (b"REQUEST_URI", b"/echo/path?a=1&b=two%20words"),
            (b"QUERY_STRING", b"a=1&b=two%20words"),
            (b"CONTENT_TYPE", b""),
            (b"DOCUMENT_URI", b"/echo/path"),
            (b"DOCUMENT_ROOT", b"/usr/share/nginx/html"),
            (b"SCGI", b"1"),
            (b"SERVER_PROTOCOL", b"HTTP/1.1"),
            (b"REQUEST_SCHEME", b"http"),
            (b"REMOTE_ADDR", b"127.0.0.1"),
            (b"REMOTE_PORT", b"41234"),
            (b"SERVER_PORT", b"8080"),
            (b"SERVER_NAME", b"localhost"),
            (b"HTTP_HOST", b"localhost"),
            (b"HTTP_ACCEPT", b"*/*"),
            (b"HTTP_USER_AGENT", b"curl/7.88.1"),
        ]
    )


def nginx_get() -> tuple[bytes, str]:
    """The nginx request and where it came from."""
    if CAPTURE.exists():
        return CAPTURE.read_bytes(), str(CAPTURE.relative_to(ROOT))
    return _hand_built_nginx_get(), "hand-built (capture missing)"


def big_body_chunks() -> list[bytes]:
    """A 1 MiB POST as the socket would deliver it: 64 KiB reads."""
    head = _netstring(
        [
            (b"CONTENT_LENGTH", b"%d" % BODY_SIZE),
            (b"SCGI", b"1"),
            (b"REQUEST_METHOD", b"POST"),
            (b"REQUEST_URI", b"/upload"),
            (b"CONTENT_TYPE", b"application/octet-stream"),
        ]
    )
    wire = head + bytes(range(256)) * (BODY_SIZE // 256)
    return [wire[i : i + CHUNK] for i in range(0, len(wire), CHUNK)]


# --- one parse, each way --------------------------------------------------------
# Both parsers do the same work: take every event up to the end of the
# message, and touch what a server would use (the environ, the body).


def trioscgi_whole(wire: bytes) -> Callable[[], int]:
    Connection, NEED_DATA, EndOfMessage = (
        protocol.Connection,
        protocol.NEED_DATA,
        protocol.EndOfMessage,
    )

    def parse() -> int:
        conn = Connection()
        conn.receive_data(wire)
        n = 0
        while True:
            event = conn.next_event()
            if type(event) is EndOfMessage:
                return n
            assert event is not NEED_DATA
            n += 1

    return parse


def trioscgi_chunks(chunks: list[bytes]) -> Callable[[], int]:
    Connection, NEED_DATA, EndOfMessage = (
        protocol.Connection,
        protocol.NEED_DATA,
        protocol.EndOfMessage,
    )
    Data = protocol.Data

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


def sioscgi_whole(wire: bytes) -> Callable[[], int]:
    assert sio is not None
    SCGIReader, End = sio.SCGIReader, sio.End

    def parse() -> int:
        reader = SCGIReader()
        reader.receive_data(wire)
        n = 0
        while True:
            event = reader.next_event()
            if type(event) is End:
                return n
            assert event is not None
            n += 1

    return parse


def sioscgi_chunks(chunks: list[bytes]) -> Callable[[], int]:
    assert sio is not None
    SCGIReader, Body, End = sio.SCGIReader, sio.Body, sio.End

    def parse() -> int:
        reader = SCGIReader()
        size = 0
        for chunk in chunks:
            reader.receive_data(chunk)
            while True:
                event = reader.next_event()
                if event is None:
                    break
                if type(event) is Body:
                    size += len(event.data)
                elif type(event) is End:
                    return size
        raise AssertionError("no End")

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
    parser.add_argument("--number", type=int, default=20000, help="nginx parses per round")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 short rounds")
    args = parser.parse_args()
    rounds, number = (3, 2000) if args.quick else (args.rounds, args.number)
    if sio is None:
        print("sioscgi is not installed: pip install 'trioscgi[bench]'", file=sys.stderr)
        return 2

    wire, source = nginx_get()
    chunks = big_body_chunks()
    cases = [
        (
            "nginx GET",
            {"trioscgi": trioscgi_whole(wire), "sioscgi": sioscgi_whole(wire)},
            number,
        ),
        (
            "1 MiB body, 64 KiB reads",
            {"trioscgi": trioscgi_chunks(chunks), "sioscgi": sioscgi_chunks(chunks)},
            max(number // 40, 10),
        ),
    ]
    print(f"python {sys.version.split()[0]}, {rounds} rounds, best round counts")
    print(f"nginx request: {source} ({len(wire)} bytes)")
    print()
    print("| case | trioscgi ops/s | sioscgi 5.0 ops/s | ratio |")
    print("|---|---:|---:|---:|")
    for name, funcs, n in cases:
        # Same answer from both before timing anything.
        first, second = (func() for func in funcs.values())
        assert first == second or name == "nginx GET", (first, second)
        rates = best_rate(funcs, n, rounds)
        ratio = rates["trioscgi"] / rates["sioscgi"]
        print(f"| {name} | {rates['trioscgi']:,.0f} | {rates['sioscgi']:,.0f} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
