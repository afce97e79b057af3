#!/usr/bin/env python3
"""Soak test: healthy load through real nginx plus hostile clients on the SCGI socket.

Usage: python bench/soak.py [--seconds 60] [--held 2000] [--conns 32] [--no-aioscgi]

Starts nginx (own config in a temp dir) in front of the real ``python -m trioscgi``
on a Unix socket. For ``--seconds``, wrk loads nginx with healthy requests while
hostile clients talk to the SCGI socket directly: garbage and truncated requests,
slowloris heads, idle connections, uploads and downloads aborted half-way.
Reports requests served, errors by kind, RSS and fds at start/end, and the RSS
growth per concurrently held connection (``--held`` idle connections; the same
measurement for aioscgi unless ``--no-aioscgi``). Needs nginx and wrk.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import trio

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent

APP = '''
"""Soak app: / answers hello (reading any body), /stream sends 12.5 MiB in 64 KiB chunks."""

CHUNK = b"s" * 65536


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["path"].endswith("/stream"):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        for _ in range(200):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})
'''

NGINX_CONF = """
daemon off;
master_process off;
pid @DIR@/nginx.pid;
error_log @DIR@/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path @DIR@/body;
    scgi_temp_path @DIR@/scgi;
    proxy_temp_path @DIR@/proxy;
    fastcgi_temp_path @DIR@/fcgi;
    uwsgi_temp_path @DIR@/uwsgi;
    server {
        listen 127.0.0.1:@PORT@;
        location / {
            include @PARAMS@;
            scgi_param SCRIPT_NAME "";
            scgi_param PATH_INFO $uri;
            scgi_pass unix:@DIR@/scgi.sock;
        }
    }
}
"""


# --------------------------------------------------------------------------- processes


class Backend:
    """An SCGI server process listening on a Unix socket."""

    def __init__(self, name: str, argv: list[str], sock: str, workdir: str) -> None:
        self.name = name
        self.sock = sock
        self.stderr_path = os.path.join(workdir, f"{name}.stderr")
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                argv,
                cwd=workdir,
                env={**os.environ, "PYTHONPATH": workdir},
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while not _connectable(sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start:\n{self.stderr()[-2000:]}")
            time.sleep(0.05)

    def stderr(self) -> str:
        return Path(self.stderr_path).read_text(errors="replace")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def wait_fds(self, at_most: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while (n := self.fds()) > at_most and time.monotonic() < deadline:
            time.sleep(0.1)
        return n

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _connectable(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scgi_params() -> str:
    for candidate in ("/etc/nginx/scgi_params", "/usr/local/nginx/conf/scgi_params"):
        if os.path.exists(candidate):
            return candidate
    raise SystemExit("nginx's scgi_params not found")


# --------------------------------------------------------------------------- requests


def scgi_request(path: bytes = b"/", body: bytes = b"", content_length: int | None = None) -> bytes:
    length = len(body) if content_length is None else content_length
    env = [
        (b"CONTENT_LENGTH", b"%d" % length),
        (b"SCGI", b"1"),
        (b"REQUEST_METHOD", b"POST" if length else b"GET"),
        (b"REQUEST_URI", path),
        (b"SCRIPT_NAME", b""),
        (b"PATH_INFO", path),
        (b"QUERY_STRING", b""),
        (b"SERVER_PROTOCOL", b"HTTP/1.1"),
        (b"SERVER_NAME", b"localhost"),
        (b"SERVER_PORT", b"80"),
        (b"REMOTE_ADDR", b"127.0.0.1"),
    ]
    head = b"".join(k + b"\0" + v + b"\0" for k, v in env)
    return b"%d:%s," % (len(head), head) + body


GOOD = scgi_request(b"/", b"hello")


def hostile_request(rnd: random.Random) -> bytes:
    """A malformed, truncated or oversized request (random mutation of a good one)."""
    kind = rnd.randrange(6)
    if kind == 0:
        return rnd.randbytes(rnd.randint(1, 300))
    if kind == 1:
        return GOOD[: rnd.randint(0, len(GOOD) - 1)]
    if kind == 2:
        return rnd.choice([b"-5:", b"05:", b" 5:", b"99999999999999999999:", b"65537:"]) + GOOD
    if kind == 3:
        return scgi_request(b"/", content_length=10**12)[:200]
    data = bytearray(GOOD)
    for _ in range(rnd.randint(1, 4)):
        i = rnd.randrange(len(data))
        if kind == 4:
            data[i] ^= rnd.randint(1, 255)
        else:
            data[i:i] = rnd.choice([b"\0", b"\r\n", b":", b",", b"9" * 8])
    return bytes(data)


def classify(raw: bytes) -> str:
    if not raw:
        return "close"
    m = re.match(rb"Status: (\d{3}) ", raw)
    return m.group(1).decode() if m else "unparsable"


# The server rejected early and closed (or reset): read what it said, if anything.
PEER_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN})

# An exchange that neither answers nor closes within this is a hang: the soak
# server runs with read_timeout 15 s and header_timeout 10 s.
HANG = 40.0


async def exchange(path: str, data: bytes, *, eof: bool = True) -> bytes:
    with trio.fail_after(HANG):
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with sock:
            await sock.connect(path)
            try:
                view = memoryview(data)
                while view:
                    view = view[await sock.send(view) :]
                if eof:
                    sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                if exc.errno not in PEER_GONE:
                    raise
            chunks = []
            while True:
                try:
                    chunk = await sock.recv(65536)
                except OSError as exc:
                    if exc.errno not in PEER_GONE:
                        raise
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)


# --------------------------------------------------------------------------- hostile clients


class Hostile:
    """Hostile clients on the SCGI socket until ``deadline``; counts outcomes by kind."""

    def __init__(self, sock: str, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.counts: Counter[str] = Counter()

    async def garbage(self, seed: int) -> None:
        rnd = random.Random(seed)
        while trio.current_time() < self.deadline:
            data = hostile_request(rnd)
            try:
                raw = await exchange(self.sock, data, eof=rnd.random() < 0.9)
            except trio.TooSlowError:
                self.counts["garbage: HANG"] += 1
                continue
            except OSError as exc:
                self.counts[f"garbage: {type(exc).__name__}"] += 1
                continue
            self.counts[f"garbage: {classify(raw)}"] += 1

    async def slowloris(self, payload: bytes, label: str) -> None:
        """Hold a connection with a partial head (or nothing); reconnect when it is cut."""
        while trio.current_time() < self.deadline:
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with sock:
                await sock.connect(self.sock)
                if payload:
                    await sock.send(payload)
                self.counts[f"{label}: opened"] += 1
                with trio.move_on_at(self.deadline):
                    try:
                        raw = await sock.recv(4096)
                    except ConnectionResetError:
                        raw = b""
                    self.counts[f"{label}: cut ({classify(raw)})"] += 1

    async def abort_upload(self) -> None:
        head = scgi_request(b"/", content_length=1_000_000)
        while trio.current_time() < self.deadline:
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with sock:
                await sock.connect(self.sock)
                await sock.send(head + b"u" * 65536)
            self.counts["upload aborted"] += 1
            await trio.sleep(0.01)

    async def abort_download(self) -> None:
        request = scgi_request(b"/stream")
        while trio.current_time() < self.deadline:
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with sock:
                await sock.connect(self.sock)
                await sock.send(request)
                got = 0
                with trio.move_on_after(10):
                    while got < 262144:
                        chunk = await sock.recv(65536)
                        if not chunk:
                            break
                        got += len(chunk)
            self.counts["download aborted"] += 1
            await trio.sleep(0.01)


async def run_hostile(
    sock: str, seconds: float, samples: list[tuple[int, int]], server: Backend
) -> Counter[str]:
    hostile = Hostile(sock, trio.current_time() + seconds)
    async with trio.open_nursery() as nursery:
        for i in range(16):
            nursery.start_soon(hostile.garbage, i)
        partial = GOOD[:30]
        for _ in range(200):
            nursery.start_soon(hostile.slowloris, partial, "slowloris")
        for _ in range(300):
            nursery.start_soon(hostile.slowloris, b"", "idle")
        for _ in range(2):
            nursery.start_soon(hostile.abort_upload)
            nursery.start_soon(hostile.abort_download)
        while trio.current_time() < hostile.deadline:
            samples.append((server.rss_kib(), server.fds()))
            await trio.sleep(1)
    return hostile.counts


# --------------------------------------------------------------------------- measurements


def held_connection_cost(
    start: Callable[[], Backend], count: int, rounds: int = 3
) -> tuple[float, int, int]:
    """Median RSS growth (KiB) per idle connection held open, over ``rounds`` fresh processes.

    A fresh process each round: a process that already held connections keeps
    the freed memory (pymalloc arenas), so a second round would show ~0.
    """
    per_conn = []
    before = after = 0
    for _ in range(rounds):
        server = start()
        try:
            for _ in range(20):  # warm up the request path
                trio.run(exchange, server.sock, GOOD)
            base_fds = server.fds()
            time.sleep(0.2)
            before = server.rss_kib()
            held = []
            try:
                for _ in range(count):
                    s = socket.socket(socket.AF_UNIX)
                    s.connect(server.sock)
                    held.append(s)
                deadline = time.monotonic() + 30
                while server.fds() < base_fds + count and time.monotonic() < deadline:
                    time.sleep(0.05)
                accepted = server.fds() - base_fds
                time.sleep(0.5)  # let the event loop settle
                after = server.rss_kib()
            finally:
                for s in held:
                    s.close()
            per_conn.append((after - before) / max(accepted, 1))
        finally:
            server.stop()
    return statistics.median(per_conn), before, after


def parse_wrk(out: str) -> dict[str, float | str]:
    def lat(q: str) -> float:
        m = re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s)\b", out)
        if not m:
            return float("nan")
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    total = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockerr = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": int(total.group(1)) if total else 0,
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50": lat("50"),
        "p99": lat("99"),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sockerr.group(1) if sockerr else "none",
    }


def log_levels(text: str) -> Counter[str]:
    levels: Counter[str] = Counter()
    for line in text.splitlines():
        m = re.search(r"\[(DEBUG|INFO|WARNING|ERROR|CRITICAL)\]", line)
        if m:
            levels[m.group(1)] += 1
        if line.startswith("Traceback"):
            levels["Traceback"] += 1
    return levels


def main() -> None:
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            raise SystemExit(f"{tool} is missing: apt-get install -y nginx-light wrk")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--held", type=int, default=2000, help="idle connections for the RSS figure")
    ap.add_argument("--conns", type=int, default=32, help="wrk connections")
    ap.add_argument("--no-aioscgi", action="store_true")
    args = ap.parse_args()

    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.held * 2 + 4096
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    d = tempfile.mkdtemp(prefix="trioscgi-soak-")
    os.chmod(d, 0o755)
    for sub in ("body", "scgi", "proxy", "fcgi", "uwsgi"):
        os.makedirs(f"{d}/{sub}")
    Path(d, "soak_app.py").write_text(APP)
    sock = f"{d}/scgi.sock"
    port = free_port()
    conf = NGINX_CONF.replace("@DIR@", d).replace("@PORT@", str(port))
    Path(d, "nginx.conf").write_text(conf.replace("@PARAMS@", scgi_params()))
    # max_connections above --held + the soak's own held connections; the
    # default (1024) would stop accepting there, which is what it is for.
    trioscgi_argv = [PY, "-m", "trioscgi", "--bind", f"unix:{sock}", "--app-dir", d,
                     "--max-connections", str(args.held + 2048), "--read-timeout", "15",
                     "soak_app:app"]  # fmt: skip

    def start_trioscgi() -> Backend:
        return Backend("trioscgi", trioscgi_argv, sock, d)

    per_conn, held_before, held_after = held_connection_cost(start_trioscgi, args.held)
    aio = None
    aioscgi = shutil.which("aioscgi", path=os.path.dirname(PY))
    if aioscgi and not args.no_aioscgi:
        asock = f"{d}/aioscgi.sock"
        aio = held_connection_cost(
            lambda: Backend("aioscgi", [aioscgi, "--unix-socket", asock, "soak_app:app"], asock, d),
            args.held,
        )
        os.unlink(asock)
    server = start_trioscgi()
    nginx = subprocess.Popen(
        [
            shutil.which("nginx") or "/usr/sbin/nginx",
            "-p",
            d,
            "-c",
            f"{d}/nginx.conf",
            "-e",
            f"{d}/nginx-error.log",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows: list[tuple[str, str]] = []
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("nginx did not start")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/"
        subprocess.run(
            ["wrk", "-t1", "-c8", "-d1s", url], capture_output=True, check=False
        )  # warm-up
        for _ in range(20):
            classify(trio.run(exchange, sock, hostile_request(random.Random(0))))
        fds_start = server.wait_fds(10**6, timeout=0)
        rss_start = server.rss_kib()

        samples: list[tuple[int, int]] = []
        wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{args.conns}", f"-d{args.seconds}s", "--latency", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        counts = trio.run(run_hostile, sock, float(args.seconds), samples, server)
        wrk_out, _ = wrk.communicate(timeout=args.seconds + 60)
        healthy = parse_wrk(wrk_out)
        fds_end = server.wait_fds(fds_start, timeout=30)
        rss_end = server.rss_kib()
        levels = log_levels(server.stderr())
        nginx_errors = Path(d, "nginx-error.log").read_text(errors="replace")
        upstream_errors = sum(1 for line in nginx_errors.splitlines() if "upstream" in line)

        code = server.stop()
    finally:
        with contextlib.suppress(ProcessLookupError):
            nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(10)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait()
        if server.proc.poll() is None:
            server.stop()

    hostile_total = sum(v for k, v in counts.items() if not k.endswith("opened"))
    rows += [
        ("duration", f"{args.seconds} s (wrk -t1 -c{args.conns} through nginx + hostile clients)"),
        ("healthy requests served", f"{healthy['requests']} ({healthy['rps']:.0f} req/s)"),
        ("healthy latency p50 / p99", f"{healthy['p50']:.2f} ms / {healthy['p99']:.2f} ms"),
        ("healthy non-2xx (5xx) responses", str(healthy["non2xx"])),
        ("wrk socket errors", str(healthy["socket_errors"])),
        ("nginx upstream errors (502/504)", str(upstream_errors)),
        ("hostile exchanges", str(hostile_total)),
    ]
    rows += [(f"  {k}", str(v)) for k, v in sorted(counts.items())]
    rows += [
        ("server log lines", ", ".join(f"{k} {v}" for k, v in sorted(levels.items())) or "none"),
        ("RSS start / end", f"{rss_start} KiB / {rss_end} KiB"),
        ("RSS max during soak", f"{max((s[0] for s in samples), default=0)} KiB"),
        (
            "RSS at 1/4, 1/2, 3/4, end of soak",
            " / ".join(
                f"{samples[min(len(samples) - 1, len(samples) * q // 4)][0]}" for q in (1, 2, 3, 4)
            )
            + " KiB"
            if samples
            else "-",
        ),
        ("fds start / end", f"{fds_start} / {fds_end}"),
        ("fds max during soak", str(max((s[1] for s in samples), default=0))),
        ("exit code after SIGTERM", str(code)),
        (
            f"RSS per held idle connection ({args.held})",
            f"trioscgi {per_conn:.2f} KiB ({held_before} -> {held_after} KiB)",
        ),
    ]
    if aio is not None:
        rows.append(("  same for aioscgi 2.3.1", f"{aio[0]:.2f} KiB ({aio[1]} -> {aio[2]} KiB)"))
    print("| what | figure |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
