"""Harness for the hostile suite: the real ``python -m trioscgi`` process, raw clients.

The server runs a tiny ASGI app (``HOSTILE_APP``, written to a temp dir and
loaded with ``--app-dir``) that records what it saw into files, so a test can
check what the application observed (``http.disconnect``, ``send`` raising).
The SCGI client is below; the FastCGI one reads raw records itself (records are
built with tests/fcgi_client.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

# Every wait in this harness is bounded by one of these.
START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
SETTLE_TIMEOUT = 15.0

REPO = Path(__file__).resolve().parent.parent

HOSTILE_APP = r'''
"""ASGI app for tests/test_hostile.py: routes under /_t/ record what they saw."""
import json
import os

import trio

RECORD_DIR = os.environ["HOSTILE_RECORD_DIR"]


def record(tag, data):
    tmp = os.path.join(RECORD_DIR, tag + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, os.path.join(RECORD_DIR, tag + ".json"))


async def read_body(receive):
    """Read the whole body; returns (byte count, message types seen)."""
    total = 0
    seen = []
    while True:
        message = await receive()
        seen.append(message["type"])
        if message["type"] == "http.disconnect":
            return total, seen
        total += len(message.get("body", b""))
        if not message.get("more_body", False):
            return total, seen


async def answer(send, status, body, headers=()):
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"text/plain"),
                    (b"content-length", str(len(body)).encode()), *headers],
    })
    await send({"type": "http.response.body", "body": body})


INJECTIONS = {
    "crlf-value": [(b"x-a", b"ok\r\nX-Injected: yes")],
    "lf-value": [(b"x-a", b"ok\nX-Injected: yes")],
    "cr-value": [(b"x-a", b"ok\rX-Injected: yes")],
    "nul-value": [(b"x-a", b"ok\x00X-Injected: yes")],
    "crlf-name": [(b"x-a\r\nX-Injected", b"yes")],
    "lf-name": [(b"x-a\nX-Injected", b"yes")],
    "nul-name": [(b"x-a\x00X-Injected", b"yes")],
    "colon-name": [(b"X-Injected: yes\r\nx-a", b"b")],
    "space-name": [(b"x a", b"b")],
    "empty-name": [(b"", b"X-Injected: yes")],
    "body-split": [(b"x-a", b"ok\r\n\r\nX-Injected: yes")],
    "str-name": [("x-a\r\nX-Injected", b"yes")],
    "str-value": [(b"x-a", "ok\r\nX-Injected: yes")],
    "non-latin1": [(b"x-a", "\u2028X-Injected: yes")],
}


# In-memory tallies for storms too big for a record file each (one worker).
COUNTS = {}
# /_t/hold waits on these until /_t/release sets them.
RELEASE = {}


def count(key):
    COUNTS[key] = COUNTS.get(key, 0) + 1


def release_event(tag):
    if tag not in RELEASE:
        RELEASE[tag] = trio.Event()
    return RELEASE[tag]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    query = scope["query_string"].decode("latin-1")
    if path == "/_t/count":
        # Tally how the body ended (http.request or http.disconnect), and a send that raised.
        total, seen = await read_body(receive)
        count(seen[-1])
        try:
            await answer(send, 200, str(total).encode())
        except OSError:
            count("send-raised")
    elif path == "/_t/counts":
        await answer(send, 200, json.dumps(COUNTS, sort_keys=True).encode())
    elif path == "/_t/hold":
        # Never reads its body; answers once /_t/release?<tag> is asked.
        await release_event(query).wait()
        await answer(send, 200, b"held")
    elif path == "/_t/release":
        release_event(query).set()
        await answer(send, 200, b"released")
    elif path == "/_t/start-then-hold":
        # The response starts, then waits for /_t/release?<tag> before it ends.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"started\n", "more_body": True})
        await release_event(query).wait()
        try:
            await send({"type": "http.response.body", "body": b"done"})
        except OSError:
            record(query, {"send": "raised"})
            return
        record(query, {"send": "went"})
    elif path == "/_t/start-then-read":
        # The response starts before the body is read.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"started\n", "more_body": True})
        total, seen = await read_body(receive)
        record(query, {"bytes": total, "seen": seen})
        await send({"type": "http.response.body", "body": str(total).encode()})
    elif path == "/_t/upload":
        total, seen = await read_body(receive)
        if query:
            record(query, {"bytes": total, "seen": seen})
        await answer(send, 200, str(total).encode())
    elif path == "/_t/download":
        sent = 0
        outcome = None
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/octet-stream")]})
            for _ in range(100000):
                await send({"type": "http.response.body", "body": b"x" * 65536,
                            "more_body": True})
                sent += 1
        except BaseException as exc:
            outcome = {"exc": type(exc).__name__, "oserror": isinstance(exc, OSError)}
            outcome["then_receive"] = []
            with trio.move_on_after(5):
                for _ in range(3):
                    outcome["then_receive"].append((await receive())["type"])
                    if outcome["then_receive"][-1] == "http.disconnect":
                        break
            outcome["chunks"] = sent
            record(query, outcome)
            if not isinstance(exc, Exception):
                raise
            return
        record(query, {"exc": None, "chunks": sent})
    elif path == "/_t/inject":
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": INJECTIONS[query]})
        except Exception as exc:
            record("inject-" + query, {"raised": type(exc).__name__, "msg": str(exc)})
            raise
        record("inject-" + query, {"raised": None})
        await send({"type": "http.response.body", "body": b"injected"})
    elif path == "/_t/status":
        await send({"type": "http.response.start", "status": json.loads(query)})
        await send({"type": "http.response.body", "body": b"odd status"})
    elif path == "/_t/fault":
        await fault(query, receive, send)
    else:
        total, seen = await read_body(receive)
        await answer(send, 200, b"hello")


async def fault(kind, receive, send):
    if kind == "raise-before":
        raise ValueError("raise-before")
    if kind == "raise-after-start":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"10")]})
        raise ValueError("raise-after-start")
    if kind == "raise-mid-body":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"hello", "more_body": True})
        raise ValueError("raise-mid-body")
    if kind == "raise-after-end":
        await answer(send, 200, b"complete")
        raise ValueError("raise-after-end")
    if kind == "return-none":
        return
    if kind == "return-after-start":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        return
    if kind == "return-mid-body":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"hello", "more_body": True})
        return
    if kind == "no-read":
        await answer(send, 200, b"did not read")
        return
    if kind == "twice":
        await answer(send, 200, b"first")
        outcome = {}
        for name, message in (
            ("start", {"type": "http.response.start", "status": 500, "headers": []}),
            ("body", {"type": "http.response.body", "body": b"second"}),
        ):
            try:
                await send(message)
                outcome[name] = None
            except Exception as exc:
                outcome[name] = type(exc).__name__
        record("fault-twice", outcome)
        return
    if kind == "body-before-start":
        await send({"type": "http.response.body", "body": b"no start"})
        return
    if kind == "bad-message":
        await send({"type": "http.response.nonsense"})
        return
    if kind == "never":
        try:
            await trio.sleep_forever()
        finally:
            record("fault-never", {"cancelled": True})
    raise AssertionError(kind)
'''


# --------------------------------------------------------------------------- SCGI client


def scgi_request(
    path: bytes = b"/",
    body: bytes = b"",
    *,
    method: bytes | None = None,
    content_length: int | None = None,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """A well-formed SCGI request as nginx with the stock scgi_params sends it."""
    target, _, query = path.partition(b"?")
    length = len(body) if content_length is None else content_length
    env = [
        (b"CONTENT_LENGTH", b"%d" % length),
        (b"SCGI", b"1"),
        (b"QUERY_STRING", query),
        (b"REQUEST_METHOD", method or (b"POST" if length else b"GET")),
        (b"CONTENT_TYPE", b"application/octet-stream" if length else b""),
        (b"REQUEST_URI", path),
        (b"DOCUMENT_URI", target),
        (b"SERVER_PROTOCOL", b"HTTP/1.1"),
        (b"REQUEST_SCHEME", b"http"),
        (b"REMOTE_ADDR", b"127.0.0.1"),
        (b"REMOTE_PORT", b"50000"),
        (b"SERVER_ADDR", b"127.0.0.1"),
        (b"SERVER_PORT", b"80"),
        (b"SERVER_NAME", b"localhost"),
        (b"HTTP_HOST", b"localhost"),
        *(extra or []),
    ]
    head = b"".join(k + b"\0" + v + b"\0" for k, v in env)
    return b"%d:%s," % (len(head), head) + body


# CGI's Status line (SCGI, FastCGI), or the HTTP/1.1 status line uwsgi answers with (under
# protocol "auto" a stream whose first byte is 0 or 30 is taken for uwsgi).
_STATUS_RE = re.compile(rb"(?:Status:|HTTP/1\.1) (\d{3}) [^\r\n]*\r\n")


@dataclass
class Reply:
    """What came back on one connection: ``status`` None means closed without a response."""

    raw: bytes
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete_head: bool = False

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


def parse_reply(raw: bytes) -> Reply:
    """Parse a CGI-style SCGI response (or uwsgi's); raises ValueError on anything else."""
    reply = Reply(raw)
    if not raw:
        return reply
    head, sep, body = raw.partition(b"\r\n\r\n")
    m = _STATUS_RE.match(raw)
    if m is None:
        raise ValueError(f"response does not start with a Status line: {raw[:80]!r}")
    reply.status = int(m.group(1))
    if sep:
        reply.complete_head = True
        reply.body = body
        for line in head.split(b"\r\n")[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise ValueError(f"header line without ':': {line!r}")
            reply.headers.append((name, value.strip()))
    return reply


def address_family(address: str | tuple[str, int]) -> socket.AddressFamily:
    return socket.AF_UNIX if isinstance(address, str) else socket.AF_INET


def blocking_exchange(
    address: str | tuple[str, int], data: bytes, *, timeout: float = 10.0
) -> Reply:
    """Send ``data`` (the whole request) and read the reply until EOF, blocking, bounded."""
    with socket.socket(address_family(address), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return parse_reply(b"".join(chunks))


# The server rejected early and closed (or reset): read what it said, if anything.
PEER_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN})


async def exchange(
    address: str | tuple[str, int],
    data: bytes,
    *,
    eof: bool = True,
    timeout: float = 10.0,
) -> bytes:
    """Send ``data``, half-close if ``eof``, read until EOF or reset; bounded by ``timeout``.

    Raises trio.TooSlowError if the server neither answers nor closes in time.
    """
    with trio.fail_after(timeout):
        sock = trio.socket.socket(address_family(address), socket.SOCK_STREAM)
        with sock:
            await sock.connect(address)
            view = memoryview(data)
            try:
                while view:
                    view = view[await sock.send(view[:262144]) :]
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


# --------------------------------------------------------------------------- FastCGI client

_RECORD = struct.Struct(">BBHHBx")
_MAX_RECORD = 8 + 65535 + 255  # header, content, padding
FCGI_END_REQUEST, FCGI_STDOUT, FCGI_STDERR = 3, 6, 7
FCGI_GET_VALUES_RESULT, FCGI_UNKNOWN_TYPE = 10, 11
PROTOCOL_STATUS = {0: "COMPLETE", 1: "CANT_MPX_CONN", 2: "OVERLOADED", 3: "UNKNOWN_ROLE"}


def parse_records(raw: bytes) -> tuple[list[tuple[int, int, bytes]], bytes]:
    """The whole records in ``raw`` as (type, request id, content), and what trails them.

    Raises:
        ValueError: a record header with a version other than 1.
    """
    records = []
    pos = 0
    while pos + 8 <= len(raw):
        version, kind, rid, length, padding = _RECORD.unpack_from(raw, pos)
        if version != 1:
            raise ValueError(
                f"record with version {version} at byte {pos}: {raw[pos : pos + 16]!r}"
            )
        end = pos + 8 + length + padding
        if end > len(raw):
            break
        records.append((kind, rid, raw[pos + 8 : pos + 8 + length]))
        pos = end
    return records, raw[pos:]


@dataclass
class FcgiResponse:
    """One request's answer: its STDOUT and its END_REQUEST."""

    stdout: bytes
    app_status: int
    protocol_status: int

    @property
    def status(self) -> int | None:
        """The HTTP status of the STDOUT, or None when there is no STDOUT."""
        if not self.stdout:
            return None
        m = _STATUS_RE.match(self.stdout)
        if m is None:
            raise ValueError(f"STDOUT does not start with a Status line: {self.stdout[:80]!r}")
        return int(m.group(1))

    @property
    def body(self) -> bytes:
        return self.stdout.partition(b"\r\n\r\n")[2]


def fcgi_responses(records: list[tuple[int, int, bytes]]) -> list[tuple[int, FcgiResponse]]:
    """Each END_REQUEST with the STDOUT of its id since the previous one, in order.

    Raises:
        ValueError: a record type a server must not send, or a malformed END_REQUEST.
    """
    stdout: dict[int, bytes] = {}
    out = []
    for kind, rid, content in records:
        if rid == 0:
            if kind not in (FCGI_GET_VALUES_RESULT, FCGI_UNKNOWN_TYPE):
                raise ValueError(f"management record of type {kind}")
        elif kind == FCGI_STDOUT:
            stdout[rid] = stdout.get(rid, b"") + content
        elif kind == FCGI_END_REQUEST:
            if len(content) != 8:
                raise ValueError(f"END_REQUEST with {len(content)} bytes of content")
            app_status, protocol_status = struct.unpack(">IB3x", content)
            out.append((rid, FcgiResponse(stdout.pop(rid, b""), app_status, protocol_status)))
        elif kind != FCGI_STDERR:
            raise ValueError(f"record of type {kind} for request {rid} from the server")
    return out


class FcgiStream:
    """One FastCGI connection held open: send records, read the answers as they come."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.buffer = b""
        self.records: list[tuple[int, int, bytes]] = []  # every record read so far
        self.management: list[tuple[int, bytes]] = []  # (type, content) of id 0
        self.ended: dict[int, list[FcgiResponse]] = {}  # responses not taken yet, per id
        self.eof = False
        self.reset = False
        self.partial_stdout: dict[int, bytes] = {}  # STDOUT of requests not ended yet

    @classmethod
    async def connect(cls, address: str | tuple[str, int]) -> FcgiStream:
        sock = trio.socket.socket(address_family(address), socket.SOCK_STREAM)
        await sock.connect(address)
        return cls(sock)

    async def __aenter__(self) -> FcgiStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sock.close()

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[await self.sock.send(view[:262144]) :]

    async def next_record(self) -> tuple[int, int, bytes] | None:
        """The next record, or None once the server closed (``eof`` / ``reset`` say how)."""
        while True:
            records, _ = parse_records(self.buffer[:_MAX_RECORD])
            if records:
                kind, rid, content = record = records[0]
                self.buffer = self.buffer[8 + len(content) + self.buffer[6] :]
                self.records.append(record)
                if rid == 0:
                    self.management.append((kind, content))
                elif kind == FCGI_STDOUT:
                    self.partial_stdout[rid] = self.partial_stdout.get(rid, b"") + content
                elif kind == FCGI_END_REQUEST:
                    app_status, protocol_status = struct.unpack(">IB3x", content)
                    response = FcgiResponse(
                        self.partial_stdout.pop(rid, b""), app_status, protocol_status
                    )
                    self.ended.setdefault(rid, []).append(response)
                return record
            if self.eof or self.reset:
                return None
            try:
                chunk = await self.sock.recv(65536)
            except ConnectionResetError:
                self.reset = True
                continue
            if not chunk:
                self.eof = True
                assert not self.buffer, f"EOF inside a record: {self.buffer[:80]!r}"
                continue
            self.buffer += chunk

    async def response(self, request_id: int) -> FcgiResponse:
        """The next response (END_REQUEST) of ``request_id``; others' are kept for later."""
        while not self.ended.get(request_id):
            if await self.next_record() is None:
                raise AssertionError(
                    f"connection {'reset' if self.reset else 'closed'} before END_REQUEST"
                    f" of request {request_id}"
                )
        return self.ended[request_id].pop(0)

    async def closed(self, timeout: float = 10.0) -> list[tuple[int, int, bytes]]:
        """Read until the server closes (bounded); return the records that came meanwhile."""
        start = len(self.records)
        with trio.fail_after(timeout):
            while await self.next_record() is not None:
                pass
        return self.records[start:]


async def fcgi_exchange(
    address: str | tuple[str, int], data: bytes, *, eof: bool = False, timeout: float = 10.0
) -> tuple[bytes, bool]:
    """Send ``data``, half-close if ``eof``, read until EOF or reset; bounded by ``timeout``.

    Front-ends never half-close: over FastCGI an EOF means the front-end is gone.

    Returns the bytes read and whether the server reset the connection. Raises
    trio.TooSlowError if the server neither closes nor resets in time.
    """
    with trio.fail_after(timeout):
        sock = trio.socket.socket(address_family(address), socket.SOCK_STREAM)
        with sock:
            await sock.connect(address)
            view = memoryview(data)
            try:
                while view:
                    view = view[await sock.send(view[:262144]) :]
                if eof:
                    sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                if exc.errno not in PEER_GONE:
                    raise
            chunks: list[bytes] = []
            while True:
                try:
                    chunk = await sock.recv(65536)
                except OSError as exc:
                    if exc.errno not in PEER_GONE:
                        raise
                    return b"".join(chunks), True
                if not chunk:
                    return b"".join(chunks), False
                chunks.append(chunk)


# --------------------------------------------------------------------------- the process


@dataclass
class HostileServer:
    """A running ``python -m trioscgi`` serving HOSTILE_APP on a Unix socket and on TCP."""

    proc: subprocess.Popen[bytes]
    unix: str
    tcp: tuple[str, int]
    stderr_path: Path
    record_dir: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_fds(self, at_most: int, timeout: float = SETTLE_TIMEOUT) -> int:
        """Poll (bounded) until the server holds at most ``at_most`` fds; return the count."""
        deadline = time.monotonic() + timeout
        while True:
            n = self.fds()
            if n <= at_most or time.monotonic() > deadline:
                return n
            time.sleep(0.05)  # polling interval, not a timing assumption

    def wait_record(self, tag: str, timeout: float = SETTLE_TIMEOUT) -> dict[str, Any]:
        """Poll (bounded) for the app's record ``tag`` and return it."""
        path = self.record_dir / f"{tag}.json"
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"the app never recorded {tag!r}\n{self.stderr()[-3000:]}")
            time.sleep(0.02)  # polling interval
        result: dict[str, Any] = json.loads(path.read_text())
        return result

    def wait_log(self, pattern: str, timeout: float = SETTLE_TIMEOUT) -> str:
        """Poll (bounded) until stderr matches ``pattern``; return the stderr text."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.stderr()
            if re.search(pattern, text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line matching {pattern!r}:\n{text[-3000:]}")
            time.sleep(0.05)  # polling interval

    def remove_socket_dir(self) -> None:
        """Remove the Unix socket (if the server left it) and its temp dir."""
        with contextlib.suppress(OSError):
            os.unlink(self.unix)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(self.unix))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        return self.proc.returncode


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def _connectable(address: str | tuple[str, int]) -> bool:
    with socket.socket(address_family(address), socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(address)
        except OSError:
            return False
        return True


def start_server(
    workdir: Path,
    config: dict[str, Any] | None = None,
    *,
    nofile: int | None = None,
    app_source: str = HOSTILE_APP,
) -> HostileServer:
    """Start the real server on a Unix socket and a TCP port; wait until both accept."""
    appdir = workdir / "app"
    appdir.mkdir(exist_ok=True)
    (appdir / "hostile_app.py").write_text(app_source)
    record_dir = workdir / "records"
    record_dir.mkdir(exist_ok=True)
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer.
    sockdir = Path(tempfile.mkdtemp(prefix="trioscgi-h-", dir="/tmp"))
    unix = str(sockdir / "s.sock")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = {"lifespan": "off", "log_level": "info", **(config or {})}
    cfg = workdir / "config.toml"
    cfg.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in settings.items()))
    argv = [
        sys.executable,
        "-m",
        "trioscgi",
        "-c",
        str(cfg),
        "--bind",
        f"unix:{unix}",
        "--bind",
        f"127.0.0.1:{port}",
        "--app-dir",
        str(appdir),
        "hostile_app:app",
    ]
    if nofile is not None:
        # Lower RLIMIT_NOFILE in a tiny exec wrapper (preexec_fn is unsafe with threads).
        argv = [
            sys.executable,
            "-c",
            "import os, resource, sys; n = int(sys.argv[1]);"
            " resource.setrlimit(resource.RLIMIT_NOFILE, (n, n));"
            " os.execv(sys.argv[2], sys.argv[2:])",
            str(nofile),
            *argv,
        ]
    stderr_path = workdir / "server.stderr"
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            argv,
            cwd=str(REPO),
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            env={**os.environ, "HOSTILE_RECORD_DIR": str(record_dir)},
            start_new_session=True,
        )
    server = HostileServer(proc, unix, ("127.0.0.1", port), stderr_path, record_dir)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        for address in (unix, server.tcp):
            while not _connectable(address):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"trioscgi did not start:\n{server.stderr()[-3000:]}")
                time.sleep(0.02)  # polling interval
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


@contextlib.contextmanager
def running_server(
    workdir: Path,
    config: dict[str, Any] | None = None,
    *,
    nofile: int | None = None,
    expect_exit: int | None = 0,
) -> Iterator[HostileServer]:
    """``start_server``; at exit SIGTERM it and (unless None) check its exit code."""
    server = start_server(workdir, config, nofile=nofile)
    try:
        yield server
    finally:
        code = server.stop()
        server.remove_socket_dir()
    if expect_exit is not None:
        assert code == expect_exit, f"trioscgi exited with {code}\n{server.stderr()[-3000:]}"


def raise_nofile(wanted: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def log_problems(text: str) -> list[str]:
    """Lines of server stderr that must not appear for client faults."""
    return [
        line
        for line in text.splitlines()
        if "Traceback" in line or "[ERROR]" in line or "[CRITICAL]" in line
    ]
