#!/usr/bin/env python3
"""WebSocket echo through one real nginx: trioscgi (SCGI tunnel) vs uvicorn and hypercorn.

Usage: bench/ws.py [--conns N] [--messages M] [--size BYTES] [--rounds R] [BACKEND ...]

Each round starts every backend in turn on a Unix socket behind the same nginx (SCGI for
trioscgi, proxy_pass with the Upgrade headers for the HTTP servers), then one client
process (the ``websockets`` library, compression off for every server) opens N
connections that each send M messages and wait for each echo. Prints messages/s per
backend (median of the rounds), the ratio to uvicorn --ws wsproto, and the server
process's CPU time per message (user + system, from /proc; less noisy than the rate on a
busy machine, since it does not count the time the server waited for a core).

``bare-ws``, run only when named, is a ceiling rather than a product: a trio echo on
wsproto with no ASGI layer (``probes/bare_ws.py``).

Needs: nginx, pip install 'trioscgi[websocket]' websockets uvicorn hypercorn.
The app is ``app`` below: a raw ASGI echo, the same for every server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    """Echo every WebSocket message (the benchmark's app); lifespan accepted, HTTP 404."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        message["type"] = "websocket.send"
        await send(message)


NGINX_CONF = """\
daemon off;
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    scgi_temp_path {d}/scgi;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi;
    server {{
        listen 127.0.0.1:{port};
        location /scgi/ {{
            include /etc/nginx/scgi_params;
            scgi_pass unix:{d}/backend.sock;
        }}
        location /http/ {{
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_pass http://unix:{d}/backend.sock:/;
        }}
    }}
}}
"""


def backends(d: str) -> dict[str, tuple[str, list[str]]]:
    sock = f"{d}/backend.sock"
    quiet = ["--log-level", "warning", "ws:app"]
    return {
        "trioscgi": (
            "/scgi/",
            [PY, "-m", "trioscgi", "--bind", f"unix:{sock}", "--log-level", "warning", "ws:app"],
        ),
        "uvicorn-wsproto": (
            "/http/",
            [PY, "-m", "uvicorn", "--uds", sock, "--ws", "wsproto", "--no-access-log", *quiet],
        ),
        "uvicorn-websockets": (
            "/http/",
            [PY, "-m", "uvicorn", "--uds", sock, "--ws", "websockets", "--no-access-log", *quiet],
        ),
        "hypercorn-trio": (
            "/http/",
            [PY, "-m", "hypercorn", "-k", "trio", "-b", f"unix:{sock}", *quiet],
        ),
        # A ceiling, not a product (asked for by name only): trio + wsproto, no ASGI.
        "bare-ws": ("/scgi/", [PY, os.path.join(HERE, "probes", "bare_ws.py"), sock]),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and its live descendants (hypercorn
    serves in a child process) so far (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(child) for child in f.read().split()]
    except FileNotFoundError:  # it exited meanwhile
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) for child in children)


def wait_socket(path: str, proc: subprocess.Popen[bytes], limit: float = 15.0) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end and proc.poll() is None:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(path)
                return True
            except OSError:
                time.sleep(0.05)
    return False


async def drive(url: str, conns: int, messages: int, size: int) -> float:
    """Messages echoed per second over ``conns`` connections x ``messages`` each."""
    from websockets.asyncio.client import connect

    payload = os.urandom(size)

    async def one() -> None:
        async with connect(url, compression=None, max_size=None) as ws:
            for _ in range(messages):
                await ws.send(payload)
                assert await ws.recv() == payload

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(conns)))
    return conns * messages / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "names", nargs="*", default=[n for n in backends("") if not n.startswith("bare")]
    )
    args = parser.parse_args()
    if not shutil.which("nginx"):
        sys.exit("nginx is missing")
    d = tempfile.mkdtemp(prefix="wsbench")
    for sub in ("body", "scgi", "proxy", "fcgi", "uwsgi"):
        os.makedirs(f"{d}/{sub}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(NGINX_CONF.format(d=d, port=port))
    nginx = subprocess.Popen(["nginx", "-c", f"{d}/nginx.conf", "-p", d], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    cmds = backends(d)
    results: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    try:
        for _ in range(args.rounds):
            for name in args.names:
                prefix, argv = cmds[name]
                with open(f"{d}/{name}.err", "w") as err:
                    proc = subprocess.Popen(argv, cwd=HERE, stdout=subprocess.DEVNULL, stderr=err)
                try:
                    if not wait_socket(f"{d}/backend.sock", proc):
                        with open(f"{d}/{name}.err") as err:
                            print(f"{name} did not start:", err.read()[-2000:])
                        continue
                    url = f"ws://127.0.0.1:{port}{prefix}ws"
                    asyncio.run(drive(url, 5, 20, args.size))  # warm-up
                    cpu = cpu_seconds(proc.pid)
                    rate = asyncio.run(drive(url, args.conns, args.messages, args.size))
                    cpu = cpu_seconds(proc.pid) - cpu
                    results.setdefault(name, []).append(rate)
                    cpus.setdefault(name, []).append(cpu / (args.conns * args.messages))
                finally:
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                    if os.path.exists(f"{d}/backend.sock"):
                        os.unlink(f"{d}/backend.sock")
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait()
    medians = {name: statistics.median(rates) for name, rates in results.items()}
    base = medians.get("uvicorn-wsproto")
    print(
        f"{args.conns} connections x {args.messages} messages of {args.size} bytes,"
        f" median of {args.rounds} round(s)"
    )
    for name, rate in medians.items():
        ratio = f"{rate / base:.2f}x uvicorn-wsproto" if base else ""
        cpu = statistics.median(cpus[name]) * 1e6
        rounds = " ".join(f"{r:.0f}" for r in results[name])
        print(f"{name:20s} {rate:10.0f} msg/s  {cpu:6.1f} us CPU/msg  {ratio:22s} ({rounds})")


if __name__ == "__main__":
    main()
