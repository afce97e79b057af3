#!/usr/bin/env python3
"""Soak under reloads: mixed load through nginx while workers are reloaded and killed.

Usage: python bench/soak_reload.py [--seconds 600] [--hup-every 60] [--kill-every 300]
                                    [--conns 8]

Starts ``python -m trioscgi`` (``workers = 2``, ``protocol = auto``, a Unix socket)
behind nginx with three locations on the same socket: SCGI, FastCGI with
``fastcgi_keep_conn`` (an upstream ``keepalive``), and WebSocket over SCGI. For
``--seconds``: wrk on the SCGI and the FastCGI location (``--conns`` each), hashed
uploads (the app answers the body's SHA-256) and 1 MiB streams (length checked) on both
wires, and WebSocket echo sessions; the supervisor gets a SIGHUP every ``--hup-every``
seconds and one worker a SIGKILL every ``--kill-every`` seconds (half a reload period
off the SIGHUPs). Prints requests served, errors by kind, errors within 5 s of a signal
against elsewhere (per signal, too), and RSS (the supervisor, and the supervisor plus
its workers) at start and end with its slope per 10 minutes.

Error times come from the clients (uploads, streams, WebSocket) and from nginx, which
logs every non-1xx/2xx/3xx answer with its time (wrk only counts). Needs nginx, wrk and
``pip install websockets``. Not a test: nothing here fails a build. bench/soak.py is
the hostile-clients soak; this reuses its pieces.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from soak import PY, Backend, free_port, log_levels, parse_wrk, scgi_params

APP = '''
"""Soak app: /hello, /upload (answers the body's SHA-256), /stream (1 MiB), WebSocket echo."""
import hashlib

CHUNK = b"s" * 65536


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "bytes": message.get("bytes"),
                        "text": message.get("text")})
    path = scope["path"]
    if path.endswith("/stream"):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        for _ in range(16):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    digest = hashlib.sha256()
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        digest.update(message.get("body", b""))
        more = message.get("more_body", False)
    body = digest.hexdigest().encode() if path.endswith("/upload") else b"Hello, world!"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''

NGINX_CONF = """
daemon off;
master_process off;
pid @DIR@/nginx.pid;
error_log @DIR@/nginx-error.log warn;
events { worker_connections 4096; }
http {
    log_format soak '$msec $status $request_uri';
    map $status $soak_failed { ~^[123] 0; default 1; }
    access_log @DIR@/failed.log soak if=$soak_failed;
    client_body_temp_path @DIR@/body;
    scgi_temp_path @DIR@/scgi;
    proxy_temp_path @DIR@/proxy;
    fastcgi_temp_path @DIR@/fcgi;
    uwsgi_temp_path @DIR@/uwsgi;
    client_max_body_size 4m;
    client_body_buffer_size 1100k;  # the uploads (<= 1 MiB) stay in memory
    upstream fcgi_keep { server unix:@DIR@/app.sock; keepalive 8; }
    server {
        listen 127.0.0.1:@PORT@;
        location /scgi/ {
            include @SCGI_PARAMS@;
            scgi_pass unix:@DIR@/app.sock;
        }
        location /ws/ {
            include @SCGI_PARAMS@;
            scgi_pass unix:@DIR@/app.sock;
        }
        location /fcgi/ {
            include @FASTCGI_PARAMS@;
            fastcgi_keep_conn on;
            fastcgi_pass fcgi_keep;
        }
    }
}
"""

NEAR = 5.0  # seconds after a signal whose errors count as "near" it
STREAM_SIZE = 16 * 65536


def fastcgi_params() -> str:
    for candidate in ("/etc/nginx/fastcgi_params", "/usr/local/nginx/conf/fastcgi_params"):
        if os.path.exists(candidate):
            return candidate
    raise SystemExit("nginx's fastcgi_params not found")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Record:
    """What the clients and the signaller saw; appended from several threads."""

    ok: Counter[str] = field(default_factory=Counter)
    errors: list[tuple[float, str]] = field(default_factory=list)  # (when it failed, kind)
    signals: list[tuple[float, str]] = field(default_factory=list)  # (when, what)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def good(self, kind: str) -> None:
        with self.lock:
            self.ok[kind] += 1

    def bad(self, when: float, kind: str) -> None:
        with self.lock:
            self.errors.append((when, kind))


def http_client(port: int, stop: threading.Event, rec: Record, seed: int) -> None:
    """Hashed uploads and 1 MiB streams, alternating between the SCGI and FastCGI locations."""
    rnd = random.Random(seed)
    conn: http.client.HTTPConnection | None = None
    while not stop.is_set():
        wire = rnd.choice(("scgi", "fcgi"))
        upload = rnd.random() < 0.5
        kind = f"{'upload' if upload else 'stream'} {wire}"
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            if upload:
                body = rnd.randbytes(rnd.randint(1, 1 << 20))
                conn.request("POST", f"/{wire}/upload", body=body)
            else:
                conn.request("GET", f"/{wire}/stream")
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                rec.bad(time.time(), f"{kind}: {response.status}")
            elif upload and data.decode() != hashlib.sha256(body).hexdigest():
                rec.bad(time.time(), f"{kind}: wrong digest")
            elif not upload and len(data) != STREAM_SIZE:
                rec.bad(time.time(), f"{kind}: {len(data)} of {STREAM_SIZE} bytes")
            else:
                rec.good(kind)
        except (OSError, http.client.HTTPException) as exc:
            rec.bad(time.time(), f"{kind}: {type(exc).__name__}")
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


def ws_client(port: int, stop: threading.Event, rec: Record) -> None:
    """WebSocket sessions of 200 echoed messages each, one after the other."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    payload = b"w" * 1000
    while not stop.is_set():
        try:
            with connect(f"ws://127.0.0.1:{port}/ws/echo", compression=None) as ws:
                for _ in range(200):
                    ws.send(payload)
                    if ws.recv(timeout=30) != payload:
                        rec.bad(time.time(), "websocket: wrong echo")
                        break
                    rec.good("websocket message")
                    if stop.is_set():
                        break
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            # 1001 (going away) is a reload closing the session, by design: the
            # client reconnects. Reported apart from the errors.
            rec.bad(time.time(), f"websocket: closed {code}")
        except Exception as exc:  # every failure is a figure here
            rec.bad(time.time(), f"websocket: {type(exc).__name__}")


def signaller(pid: int, args: argparse.Namespace, rec: Record, stop: threading.Event) -> None:
    seconds, hup_every, kill_every = args.seconds, args.hup_every, args.kill_every
    began = time.monotonic()
    hups = [hup_every * k for k in range(1, int(seconds / hup_every) + 1)] if hup_every else []
    kills = (
        [kill_every * k - hup_every / 2 for k in range(1, int(seconds / kill_every) + 1)]
        if kill_every
        else []
    )
    plan = sorted([(t, "SIGHUP") for t in hups] + [(t, "SIGKILL a worker") for t in kills])
    for at, what in plan:
        # None in the last seconds: their errors would mix with the load's own end.
        if at >= seconds - NEAR or stop.wait(max(0.0, began + at - time.monotonic())):
            return
        if what == "SIGHUP":
            os.kill(pid, signal.SIGHUP)
        else:
            workers = children(pid)
            if not workers:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(random.choice(workers), signal.SIGKILL)
        with rec.lock:
            rec.signals.append((time.time(), what))


def sampler(pid: int, stop: threading.Event, out: list[tuple[float, int, int]]) -> None:
    """RSS every 5 s: the supervisor's, and with its workers (only while there are
    exactly two: a reload in progress runs four)."""
    while True:
        workers = children(pid)
        tree = rss_kib(pid) + sum(rss_kib(c) for c in workers) if len(workers) == 2 else 0
        out.append((time.monotonic(), rss_kib(pid), tree))
        if stop.wait(5.0):
            return


def slope_per_10min(samples: list[tuple[float, int, int]], column: int) -> float:
    samples = [s for s in samples if s[column]]
    if len(samples) < 3:
        return float("nan")
    xs = [s[0] for s in samples]
    ys = [float(s[column]) for s in samples]
    return statistics.linear_regression(xs, ys).slope * 600


def main() -> None:
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            raise SystemExit(f"{tool} is missing: apt-get install -y nginx-light wrk")
    try:
        import websockets  # noqa: F401
    except ImportError:
        raise SystemExit("pip install websockets (the WebSocket client)") from None
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--hup-every", type=float, default=60, help="0: no SIGHUP")
    ap.add_argument("--kill-every", type=float, default=300, help="0: no SIGKILL")
    ap.add_argument("--conns", type=int, default=8, help="wrk connections per wire")
    ap.add_argument("--http-clients", type=int, default=2, help="upload/stream clients")
    args = ap.parse_args()

    d = tempfile.mkdtemp(prefix="trioscgi-soak-reload-")
    os.chmod(d, 0o755)
    for sub in ("body", "scgi", "proxy", "fcgi", "uwsgi"):
        os.makedirs(f"{d}/{sub}")
    Path(d, "soak_app.py").write_text(APP)
    sock = f"{d}/app.sock"
    port = free_port()
    conf = NGINX_CONF.replace("@DIR@", d).replace("@PORT@", str(port))
    conf = conf.replace("@SCGI_PARAMS@", scgi_params())
    Path(d, "nginx.conf").write_text(conf.replace("@FASTCGI_PARAMS@", fastcgi_params()))
    argv = [PY, "-m", "trioscgi", "--bind", f"unix:{sock}", "--app-dir", d,
            "--workers", "2", "--protocol", "auto", "soak_app:app"]  # fmt: skip
    server = Backend("trioscgi", argv, sock, d)
    deadline = time.monotonic() + 30
    while "2 workers ready" not in server.stderr():
        if time.monotonic() > deadline:
            raise SystemExit(f"the workers did not start:\n{server.stderr()[-2000:]}")
        time.sleep(0.05)
    nginx = subprocess.Popen(
        [shutil.which("nginx") or "/usr/sbin/nginx", "-p", d, "-c", f"{d}/nginx.conf"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rec = Record()
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                http.client.HTTPConnection("127.0.0.1", port, timeout=5).request("GET", "/")
                break
            if time.monotonic() > deadline:
                raise SystemExit("nginx did not start")
            time.sleep(0.05)
        began = time.time()
        wrk_argv = ["wrk", "-t1", f"-c{args.conns}", f"-d{int(args.seconds)}s", "--latency"]
        wrks = {
            wire: subprocess.Popen(
                [*wrk_argv, f"http://127.0.0.1:{port}/{wire}/hello"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for wire in ("scgi", "fcgi")
        }
        threads = [
            threading.Thread(target=http_client, args=(port, stop, rec, i))
            for i in range(args.http_clients)
        ]
        threads.append(threading.Thread(target=ws_client, args=(port, stop, rec)))
        threads.append(threading.Thread(target=sampler, args=(server.proc.pid, stop, samples)))
        threads.append(
            threading.Thread(
                target=signaller,
                args=(server.proc.pid, args, rec, stop),
            )
        )
        for t in threads:
            t.start()
        wrk_out = {wire: p.communicate(timeout=args.seconds + 120)[0] for wire, p in wrks.items()}
        stop.set()
        for t in threads:
            t.join(timeout=120)
    finally:
        stop.set()
        with contextlib.suppress(ProcessLookupError):
            nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(15)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait()
        code = server.stop()

    # nginx's own log of every failed answer, wrk's included.
    # wrk's failures, from nginx's log (the other clients record their own): not
    # the 499s of wrk closing its connections at the end of the load.
    end = began + args.seconds - 0.5
    for line in Path(d, "failed.log").read_text(errors="replace").splitlines():
        when, status, uri = line.split(" ", 2)
        if not uri.endswith("/hello") or (status == "499" and float(when) >= end):
            continue
        rec.errors.append((float(when), f"wrk {uri.split('/')[1]}: {status}"))
    wrk = {wire: parse_wrk(out) for wire, out in wrk_out.items()}
    by_design = [(t, k) for t, k in rec.errors if k == "websocket: closed 1001"]
    errors = [(t, k) for t, k in rec.errors if k != "websocket: closed 1001"]

    def near(t: float) -> bool:
        return any(0 <= t - s < NEAR for s, _ in rec.signals)

    rows: list[tuple[str, str]] = []

    def add(key: str, value: object) -> None:
        rows.append((key, str(value)))

    add(
        "duration",
        f"{args.seconds:g} s, SIGHUP every {args.hup_every:g} s,"
        f" SIGKILL of a worker every {args.kill_every:g} s",
    )
    sent = Counter(w for _, w in rec.signals)
    add("signals sent", ", ".join(f"{k} {v}" for k, v in sent.items()) or "none")
    for wire in ("scgi", "fcgi"):
        w = wrk[wire]
        add(
            f"wrk {wire} requests",
            f"{w['requests']} ({w['rps']:.0f} req/s, p99 {w['p99']:.1f} ms,"
            f" non-2xx {w['non2xx']}, socket errors {w['socket_errors']})",
        )
    for kind, n in sorted(rec.ok.items()):
        add(f"{kind} ok", n)
    total = sum(int(w["requests"]) for w in wrk.values())
    total += sum(n for k, n in rec.ok.items() if k != "websocket message")
    add("requests served (WebSocket messages apart)", total)
    add("errors", len(errors))
    for kind, n in sorted(Counter(k for _, k in errors).items()):
        add(f"  {kind}", n)
    close = sum(near(t) for t, _ in errors)
    add("errors within 5 s of a signal / elsewhere", f"{close} / {len(errors) - close}")
    for t, kind in sorted((t, k) for t, k in errors if not near(t))[:10]:
        add(f"  elsewhere: t={t - began:6.1f} s", kind)
    add("WebSocket sessions closed 1001 by a reload (by design)", len(by_design))
    for s, what in rec.signals:
        n = sum(1 for t, _ in errors if 0 <= t - s < NEAR)
        add(f"  t={s - began:6.1f} s {what}", f"{n} errors within 5 s")
    if samples:
        first, last = samples[0], samples[-1]
        add("RSS supervisor start / end", f"{first[1]} KiB / {last[1]} KiB")
        tree = [s[2] for s in samples if s[2]]
        if tree:
            add("RSS supervisor + 2 workers start / end", f"{tree[0]} KiB / {tree[-1]} KiB")
        add(
            "RSS slope per 10 min (supervisor; with workers)",
            f"{slope_per_10min(samples, 1):+.0f} KiB; {slope_per_10min(samples, 2):+.0f} KiB",
        )
    levels = log_levels(server.stderr())
    add("trioscgi log lines", ", ".join(f"{k} {v}" for k, v in sorted(levels.items())))
    add("trioscgi exit code", code)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"(work directory, logs included: {d})", file=sys.stderr)


if __name__ == "__main__":
    main()
