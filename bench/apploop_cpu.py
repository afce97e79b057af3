#!/usr/bin/env python3
"""Server CPU time per request for an asyncio app, served each way (no nginx, no wrk).

Usage::

    python bench/apploop_cpu.py APP N [BACKEND ...]

Each backend serves ``APP`` (``MODULE:ATTR`` under bench/, e.g.
``asyncio_apps.quart_hello:app``) on a Unix socket; eight client threads send
``N`` SCGI GET requests, one connection each. Printed: the backend process's
CPU time (user + system, from /proc) per request, which includes every thread
of the process (the loop's thread, executors) and moves far less with the
machine's load than req/s does. Backends: ``aioscgi``, ``trioscgi`` (as
shipped), ``thread``, ``driven`` and ``trio-asyncio``
(bench/apploop_probes.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))

from scgi_client import encode_request, environ  # noqa: E402

REQUEST = encode_request(environ("GET", "/", extra={"SCRIPT_NAME": "", "PATH_INFO": "/"}))


def command(name: str, sock: str, spec: str) -> list[str]:
    trioscgi = [sys.executable, "-m", "trioscgi", "--bind", f"unix:{sock}"]
    probe = [*trioscgi, "--app-loop", "trio", "--lifespan", "on"]
    return {
        "aioscgi": [os.path.join(os.path.dirname(sys.executable), "aioscgi"), "-u", sock, spec],
        "trioscgi": [*trioscgi, spec],
        "thread": [*probe, "apploop_probes:thread_app"],
        "driven": [*probe, "apploop_probes:driven_app"],
        "trio-asyncio": [*probe, "apploop_probes:trio_asyncio_app"],
    }[name]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client(path: str, count: int, failures: list[bytes]) -> None:
    for _ in range(count):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(REQUEST)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        if b"200 OK" not in data:
            failures.append(data[:200])


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    spec, count = sys.argv[1], int(sys.argv[2])
    names = sys.argv[3:] or ["aioscgi", "trioscgi", "thread", "driven", "trio-asyncio"]
    folder = tempfile.mkdtemp(prefix="apploop-cpu-")
    env = dict(os.environ, PYTHONPATH=HERE, PROBE_APP=spec)
    for name in names:
        path = f"{folder}/{name}.sock"
        with open(f"{folder}/{name}.err", "w") as err:
            proc = subprocess.Popen(command(name, path, spec), env=env, cwd=HERE, stderr=err)
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(path):
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit(f"{name} did not start; see {folder}/{name}.err")
                time.sleep(0.05)
            failures: list[bytes] = []
            client(path, 200, failures)  # warm-up
            before, start = cpu_seconds(proc.pid), time.monotonic()
            threads = [
                threading.Thread(target=client, args=(path, count // 8, failures)) for _ in range(8)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            used, elapsed = cpu_seconds(proc.pid) - before, time.monotonic() - start
            done = count // 8 * 8
            print(
                f"{name:14s} {used / done * 1e6:8.1f} us CPU/request"
                f"  {done / elapsed:7.0f} req/s  failures {len(failures)}"
            )
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(10)


if __name__ == "__main__":
    main()
