#!/usr/bin/env python3
"""The HTTP conformance scenarios over real HTTP, through nginx, against other ASGI servers.

Usage: bench/conformance_peers.py [--only SCENARIO ...] [BACKEND ...]

Runs the scenarios of tests/conformance/scenarios.py, unchanged, through one real
nginx against each backend serving the suite's app (tests/conformance/app.py):

- ``uvicorn`` and ``hypercorn`` (its asyncio worker) and ``hypercorn-trio``, behind
  ``proxy_pass`` over HTTP/1.1 with request and response buffering off (so pieces,
  pauses and a vanishing client reach the server as the client made them);
- ``trioscgi`` and ``trioscgi-asyncio`` (``--app-loop asyncio``), behind ``scgi_pass``
  with the stock scgi_params (nginx buffers the request body: SCGI needs its length),
  over TCP so that a reset shows.

The app's records come back over HTTP (``GET /_record/<key>``). Prints a table: one
line per scenario, ``ok`` or the first line of what failed, per backend. Not in CI:
docs/conformance.md has the results of a run and who is right per the ASGI spec.

Needs: nginx; pip install uvicorn hypercorn (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import trio

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))

from conformance import scenarios  # noqa: E402
from conformance.drivers import PATIENCE, Answer, Driver, Pause, Request  # noqa: E402
from frontends import (  # noqa: E402
    FRONTEND_ENV,
    NGINX_SCGI_PARAMS_CANDIDATES,
    find_binary,
    free_port,
    stop_process,
    wait_until_accepting,
)

APP = "conformance.app:app"


def backend_argv(name: str, port: int) -> list[str]:
    py = sys.executable
    if name == "uvicorn":
        return [py, "-m", "uvicorn", "--app-dir", str(TESTS), "--host", "127.0.0.1",
                "--port", str(port), "--lifespan", "on", "--log-level", "warning", APP]  # fmt: skip
    if name in ("hypercorn", "hypercorn-trio"):
        worker = "trio" if name == "hypercorn-trio" else "asyncio"
        return [py, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "-k", worker, APP]
    if name in ("trioscgi", "trioscgi-asyncio"):
        loop = "asyncio" if name == "trioscgi-asyncio" else "trio"
        return [py, "-m", "trioscgi", "--app-dir", str(TESTS), "--bind", f"127.0.0.1:{port}",
                "--lifespan", "on", "--app-loop", loop, APP]  # fmt: skip
    raise ValueError(f"unknown backend {name!r}")


BACKENDS = ("uvicorn", "hypercorn", "hypercorn-trio", "trioscgi", "trioscgi-asyncio")


def nginx_server(listen: int, backend: str, port: int, scgi_params: str) -> str:
    if backend.startswith("trioscgi"):
        inner = f"include {scgi_params};\n            scgi_pass 127.0.0.1:{port};"
    else:
        inner = (
            f"proxy_pass http://127.0.0.1:{port};\n"
            "            proxy_http_version 1.1;\n"
            "            proxy_request_buffering off;\n"
            "            proxy_buffering off;"
        )
    return f"""
    server {{
        listen 127.0.0.1:{listen};
        server_name localhost;
        location / {{
            {inner}
        }}
    }}"""


@contextlib.contextmanager
def running(backends: list[str]) -> Iterator[dict[str, int]]:
    """Every backend and one nginx in front of them; yields backend -> nginx port."""
    scgi_params = next(p for p in NGINX_SCGI_PARAMS_CANDIDATES if os.path.exists(p))
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="conformance-peers-") as tmp:
        d = Path(tmp)
        try:
            fronts: dict[str, int] = {}
            servers = []
            for name in backends:
                port = free_port()
                env = dict(os.environ, PYTHONPATH=str(TESTS))
                log = (d / f"{name}.log").open("wb")
                proc = subprocess.Popen(
                    backend_argv(name, port), cwd=TESTS, env=env, stdout=log, stderr=log
                )
                procs.append(proc)
                wait_until_accepting(("127.0.0.1", port), proc, logs=[d / f"{name}.log"])
                fronts[name] = free_port()
                servers.append(nginx_server(fronts[name], name, port, scgi_params))
            conf = d / "nginx.conf"
            conf.write_text(
                f"""daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 64m;
{"".join(servers)}
}}
"""
            )
            nginx = subprocess.Popen(
                [find_binary("nginx"), "-p", f"{d}/", "-c", str(conf), "-e", str(d / "error.log")],
                cwd=d,
                env=FRONTEND_ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(nginx)
            for port in fronts.values():
                wait_until_accepting(("127.0.0.1", port), nginx, logs=[d / "error.log"])
            yield fronts
        finally:
            for proc in reversed(procs):
                stop_process(proc)


class HttpDriver(Driver):
    """The scenarios' requests as an HTTP/1.1 client sends them to nginx (one connection
    each, ``Connection: close``). A body of unknown length goes chunked, a piece a chunk.
    Complete: the body ended as its framing says (Content-Length, or the last chunk)."""

    in_process = False

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port
        if name.startswith("trioscgi"):
            # nginx buffers the body for scgi_pass (it must send CONTENT_LENGTH first).
            self.features = frozenset({"asgi", "unknown_length", "pathsend"})
        else:
            self.features = frozenset({"asgi", "unknown_length", "streams_body"})

    async def _exchange(self, request: Request, key: str) -> Answer | None:
        conn = h11.Connection(h11.CLIENT)
        headers = [("Host", "localhost"), ("Connection", "close"), *request.headers]
        if key:
            headers.append(("x-record", key))
        if request.length or request.method in ("POST", "PUT"):
            headers.append(("Content-Type", "application/octet-stream"))
            if request.length_known:
                headers.append(("Content-Length", str(request.length)))
            else:
                headers.append(("Transfer-Encoding", "chunked"))
        head = conn.send(h11.Request(method=request.method, target=request.uri, headers=headers))
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        async with stream:
            pending = head or b""
            try:
                for step in request.plan:
                    if isinstance(step, Pause):
                        if pending:
                            await stream.send_all(pending)
                            pending = b""
                        await trio.sleep(step.seconds)
                    elif step:
                        await stream.send_all(pending + (conn.send(h11.Data(data=step)) or b""))
                        pending = b""
                if request.end_body and not request.vanish:
                    pending += conn.send(h11.EndOfMessage()) or b""
                if pending:
                    await stream.send_all(pending)
            except trio.BrokenResourceError:
                pass
            if request.vanish:
                return None
            return await self._read(conn, stream, request)

    async def _read(
        self, conn: h11.Connection, stream: trio.SocketStream, request: Request
    ) -> Answer:
        status, headers, body = 0, [], bytearray()
        complete = False
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                break  # EOF in the middle of the body: cut
            if event is h11.NEED_DATA:
                if request.read_pause:
                    await trio.sleep(request.read_pause)
                try:
                    data = await stream.receive_some(request.read_size)
                except trio.BrokenResourceError:
                    data = b""
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = [(k.decode(), v.decode()) for k, v in event.headers]
            elif isinstance(event, h11.InformationalResponse):
                continue
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                complete = True
                break
            else:
                break
        return Answer(status, headers, bytes(body), complete)

    async def record(self, key: str) -> dict[str, Any]:
        with trio.fail_after(PATIENCE):
            while True:
                answer = await self._exchange(Request(path=f"/_record/{key}", method="GET"), "")
                assert answer is not None
                view = json.loads(answer.body) if answer.status == 200 else None
                if view is not None and view["done"]:
                    return view  # type: ignore[no-any-return]
                await trio.sleep(0.01)


async def run_all(fronts: dict[str, int], only: list[str]) -> dict[str, dict[str, str]]:
    results: dict[str, dict[str, str]] = {}
    for name, port in fronts.items():
        driver = HttpDriver(name, port)
        state = await driver.exchange(Request(path="/state", method="GET"))
        spec = state.header("x-asgi-spec-version") if state else None
        print(f"{name}: scope['asgi']['spec_version'] = {spec}", flush=True)
        for scenario_name, scenario in scenarios.SCENARIOS.items():
            if only and scenario_name not in only:
                continue
            reason = scenarios.missing(scenario, driver.features)
            if reason is not None:
                results.setdefault(scenario_name, {})[name] = f"n/a: {reason}"
                print(f"{name:18} {scenario_name:32} n/a: {reason}", flush=True)
                continue
            try:
                await scenario(driver)
                outcome = "ok"
            except (AssertionError, trio.TooSlowError, OSError) as exc:
                text = str(exc) or type(exc).__name__
                outcome = f"FAIL {type(exc).__name__}: {text.splitlines()[0][:300]}"
            except BaseException as exc:  # an ExceptionGroup from a nursery
                outcome = f"FAIL {type(exc).__name__}: {str(exc)[:300]}"
            results.setdefault(scenario_name, {})[name] = outcome
            print(f"{name:18} {scenario_name:32} {outcome}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("backends", nargs="*", help=f"some of {', '.join(BACKENDS)} (all)")
    parser.add_argument("--only", action="append", default=[], help="run only this scenario")
    args = parser.parse_args()
    backends = args.backends or list(BACKENDS)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {unknown}: choose from {', '.join(BACKENDS)}")
    with running(backends) as fronts:
        results = trio.run(run_all, fronts, args.only)
    print()
    print("| scenario | " + " | ".join(backends) + " |")
    print("|---|" + "---|" * len(backends))
    for scenario_name, row in results.items():
        cells = [
            row[b] if row[b] == "ok" else row[b][:3].replace("FAI", "**differs**") for b in backends
        ]
        print(f"| {scenario_name} | " + " | ".join(cells) + " |")
    print()
    for scenario_name, row in results.items():
        for b in backends:
            if row[b].startswith("FAIL"):
                print(f"- {scenario_name} on {b}: {row[b]}")


if __name__ == "__main__":
    main()
