#!/usr/bin/env python3
"""Instructions the server executes per request, counted by callgrind: a figure that
machine load hardly moves, unlike req/s (docs/benchmarks.md).

Usage::

    python bench/instructions.py [--wire scgi|uwsgi|fastcgi-keep] [--python PY] APP [N1 N2]

Starts ``PY -m trioscgi`` (default: this interpreter) serving ``APP`` (``MODULE:ATTR``
importable from bench/ or the repository's root, e.g. ``examples.hello:app`` or
``asyncio_apps.django_hello:application``) under
``valgrind --tool=callgrind`` with ``PYTHONHASHSEED=0``, sends ``N1`` GETs one after
the other, stops it, then does the same with ``N2``; prints the difference of the two
totals divided by ``N2 - N1``: start-up, warm-up and shutdown cancel out. ``scgi``: a
connection per request; ``uwsgi``: the same, the packet nginx's stock ``uwsgi_params``
makes; ``fastcgi-keep``: one FCGI_KEEP_CONN connection for all, as
nginx's upstream keepalive. ``--python`` points at another tree's virtualenv to
compare two commits on the same machine the same day.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))

import fcgi_client  # noqa: E402
from scgi_client import encode_request, environ  # noqa: E402
from uwsgi_client import encode_packet, stock_vars  # noqa: E402

SCGI_GET = encode_request(environ("GET", "/", extra={"SCRIPT_NAME": "", "PATH_INFO": "/"}))
UWSGI_GET = encode_packet(stock_vars("GET", "/"))
FCGI_GET = fcgi_client.request(1, keep=True)


def _one_per_connection(path: str, count: int, request: bytes) -> None:
    for _ in range(count):
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(path)
            c.sendall(request)
            data = b""
            while chunk := c.recv(65536):
                data += chunk
            if b" 200 " not in data[:40]:
                sys.exit(f"unexpected answer: {data[:200]!r}")


def _fastcgi_keep(path: str, count: int) -> None:
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(path)
        for _ in range(count):
            c.sendall(FCGI_GET)
            data = b""
            # Until END_REQUEST (type 3), whose 8-byte body ends the answer.
            while not _ended(data):
                chunk = c.recv(65536)
                if not chunk:
                    sys.exit(f"EOF before END_REQUEST: {data[:200]!r}")
                data += chunk


def _ended(data: bytes) -> bool:
    offset = 0
    while offset + 8 <= len(data):
        kind = data[offset + 1]
        offset += 8 + int.from_bytes(data[offset + 4 : offset + 6], "big") + data[offset + 6]
        if kind == fcgi_client.END_REQUEST:
            return offset <= len(data)
    return False


def count(python: str, app: str, wire: str, requests: int) -> int:
    folder = tempfile.mkdtemp(prefix="instructions-")
    sock, out = f"{folder}/s.sock", f"{folder}/callgrind.out"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    # The repository's root comes in by --app-dir, after trioscgi is imported:
    # on PYTHONPATH it would shadow the trioscgi of --python's tree.
    argv += [os.path.abspath(python), "-m", "trioscgi", "--bind", f"unix:{sock}"]
    argv += ["--app-dir", os.path.dirname(HERE), app]
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=HERE)
    proc = subprocess.Popen(argv, env=env, cwd=HERE, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(sock):
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit("the server did not start under valgrind")
            time.sleep(0.1)
        if wire == "fastcgi-keep":
            _fastcgi_keep(sock, requests)
        else:
            _one_per_connection(sock, requests, UWSGI_GET if wire == "uwsgi" else SCGI_GET)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(300)
    with open(out) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    sys.exit("no total in callgrind's output")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wire", choices=["scgi", "uwsgi", "fastcgi-keep"], default="scgi")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("app")
    ap.add_argument("n1", type=int, nargs="?", default=200)
    ap.add_argument("n2", type=int, nargs="?", default=1200)
    args = ap.parse_args()
    low = count(args.python, args.app, args.wire, args.n1)
    high = count(args.python, args.app, args.wire, args.n2)
    print(f"{args.wire} {args.app}: {(high - low) / (args.n2 - args.n1):,.0f} instructions/request")


if __name__ == "__main__":
    main()
