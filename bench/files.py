#!/usr/bin/env python3
"""File responses and WSGI behind one real nginx: trioscgi against itself and fcgisgi.

Usage: bench/files.py [--seconds S] [--conns C] [--rounds N] [GROUP ...]
Groups:
  files  1 MiB file: pathsend vs the same file as body messages (trioscgi)
  wsgi   WSGI hello (and a Flask hello): trioscgi vs fcgisgi's WSGI mode
Each backend runs on a Unix socket; nginx proxies to it; wrk loads nginx; the
median of the rounds is printed with the ratio to the group's baseline.
Same idea as ../shared/bench/peers.py (one nginx, one run, same wrk settings).
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = os.environ.get("BENCH_PY", sys.executable)

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid @DIR@/nginx.pid;
error_log @DIR@/error.log warn;
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
        location /scgi/ {
            include /etc/nginx/scgi_params;
            # Room for a 1 MiB response in memory: without it nginx spills every
            # response to a temp file and the disk, not the backend, is measured.
            scgi_buffers 32 32k;
            scgi_busy_buffers_size 64k;
            scgi_pass unix:@DIR@/scgi.sock;
        }
        location /fcgi/ {
            include /etc/nginx/fastcgi_params;
            fastcgi_param PATH_INFO $uri;
            fastcgi_pass unix:@DIR@/fcgi.sock;
        }
    }
}
"""


def trioscgi(d, app, *extra):
    return (
        "/scgi/x",
        "scgi.sock",
        [
            PY,
            "-m",
            "trioscgi",
            "--bind",
            f"unix:{d}/scgi.sock",
            "--log-level",
            "warning",
            *extra,
            f"files_apps:{app}",
        ],
    )


# The last CPU: the bench's nginx and wrk are free to use the others.
PIN_CPU = str(max(os.sched_getaffinity(0)))


def pinned(backend):
    loc, sock, argv = backend
    return loc, sock, ["taskset", "-c", PIN_CPU, *argv]


def fcgisgi(d, app):
    code = (
        "import asyncio, fcgisgi, files_apps; asyncio.run(fcgisgi.run_wsgi_server("
        f"files_apps.{app}, bind_address='{d}/fcgi.sock'))"
    )
    return ("/fcgi/x", "fcgi.sock", [PY, "-c", code])


GROUPS = {
    "files": [
        # (name, baseline?, backend builder)
        ("body-starlette-FileResponse", True, lambda d: trioscgi(d, "starlette_body")),
        ("pathsend-starlette-FileResponse", False, lambda d: trioscgi(d, "starlette_pathsend")),
        ("body-64KiB-reads", False, lambda d: trioscgi(d, "body_file")),
        ("body-from-memory", False, lambda d: trioscgi(d, "body_memory")),
        ("pathsend-raw", False, lambda d: trioscgi(d, "pathsend")),
    ],
    "wsgi": [
        ("fcgisgi-wsgi-hello", True, lambda d: fcgisgi(d, "wsgi_hello")),
        ("trioscgi-wsgi-hello", False, lambda d: trioscgi(d, "wsgi_hello", "--interface", "wsgi")),
        ("fcgisgi-flask-hello", False, lambda d: fcgisgi(d, "flask_hello")),
        ("trioscgi-flask-hello", False, lambda d: trioscgi(d, "flask_hello")),
        # cpu_affinity keeps the thread hand-offs on one CPU; fcgisgi pinned
        # the same way (taskset) for a fair comparison.
        ("fcgisgi-wsgi-hello-pinned", False, lambda d: pinned(fcgisgi(d, "wsgi_hello"))),
        (
            "trioscgi-wsgi-hello-pinned",
            False,
            lambda d: trioscgi(d, "wsgi_hello", "--interface", "wsgi", "--cpu-affinity", PIN_CPU),
        ),
    ],
}


def wait_sock(path, proc, t=20):
    end = time.time() + t
    while time.time() < end and proc.poll() is None:
        if os.path.exists(path):
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(path)
                    return True
                except OSError:
                    pass
        time.sleep(0.05)
    return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def lat(q):
        m = re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v * 1000 if u == "s" else v

    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockerr = re.search(r"Socket errors: (.*)", out)
    return (
        rps,
        lat(50),
        lat(99),
        int(errs.group(1)) if errs else 0,
        sockerr.group(1) if sockerr else "",
    )


def read_err(d, name):
    with open(f"{d}/{name}.err") as f:
        return f.read()[-2000:]


def cpu_seconds(pid):
    """user + system CPU time of a process (the backend's cost, whoever is the bottleneck)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check_response(port, loc):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", loc)
        resp = conn.getresponse()
        return resp.status, len(resp.read())
    finally:
        conn.close()


def main():
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is missing: apt-get install -y nginx-light wrk")
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("groups", nargs="*", default=["files", "wsgi"])
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="bench-files")
    for sub in ("body", "scgi", "proxy", "fcgi", "uwsgi"):
        os.makedirs(f"{d}/{sub}")
    port = free_port()
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(NGINX_CONF.replace("@DIR@", d).replace("@PORT@", str(port)))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    ng = subprocess.Popen(
        [nginx, "-c", f"{d}/nginx.conf", "-p", d, "-e", f"{d}/error.log"], stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([HERE, ROOT, os.environ.get("PYTHONPATH", "")])
    )
    results = {}
    try:
        for _ in range(a.rounds):
            for group in a.groups:
                for name, _base, build in GROUPS[group]:
                    loc, sockname, argv = build(d)
                    with open(f"{d}/{name}.err", "w") as err:
                        proc = subprocess.Popen(
                            argv, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=err
                        )
                    try:
                        if not wait_sock(f"{d}/{sockname}", proc):
                            print(f"{name}: did not start:\n" + read_err(d, name)[-2000:])
                            continue
                        status, size = check_response(port, loc)
                        if status != 200:
                            print(f"{name}: answered {status}:\n" + read_err(d, name)[-2000:])
                            continue
                        url = f"http://127.0.0.1:{port}{loc}"
                        subprocess.run(
                            ["wrk", "-t1", f"-c{a.conns}", "-d1s", url],
                            capture_output=True,
                            check=False,
                        )
                        cpu_before = cpu_seconds(proc.pid)
                        out = subprocess.run(
                            ["wrk", "-t1", f"-c{a.conns}", f"-d{a.seconds}s", "--latency", url],
                            capture_output=True,
                            check=False,
                            text=True,
                        ).stdout
                        cpu = cpu_seconds(proc.pid) - cpu_before
                        rps = parse_wrk(out)
                        done = rps[0] * a.seconds
                        results.setdefault((group, name), []).append(
                            (*rps, size, cpu / done * 1000)
                        )
                    finally:
                        proc.send_signal(signal.SIGINT)
                        try:
                            proc.wait(10)
                        except subprocess.TimeoutExpired:
                            proc.kill()
                            proc.wait()
                        if os.path.exists(f"{d}/{sockname}"):
                            os.unlink(f"{d}/{sockname}")
    finally:
        ng.send_signal(signal.SIGQUIT)
        ng.wait()
        shutil.rmtree(d, ignore_errors=True)
    print(f"wrk -t1 -c{a.conns} -d{a.seconds}s, median of {a.rounds} rounds, nginx -> unix socket")
    for group in a.groups:
        base_name = next(n for n, b, _ in GROUPS[group] if b)
        base = None
        if (group, base_name) in results:
            rs = sorted(results[(group, base_name)])
            base = rs[len(rs) // 2][0]
        print(f"## {group} (baseline: {base_name})")
        for name, _b, _ in GROUPS[group]:
            rs = sorted(results.get((group, name), []))
            if not rs:
                continue
            rps, p50, p99, non2xx, serr, size, cpu_ms = rs[len(rs) // 2]
            ratio = f"{rps / base:5.2f}x" if base else "  -  "
            print(
                f"{name:34s} {rps:9.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  {ratio}  "
                f"backend CPU {cpu_ms:6.3f} ms/req  body {size} B  non2xx {non2xx} {serr}"
            )


if __name__ == "__main__":
    main()
