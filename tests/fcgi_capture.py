"""FastCGI for the tests: a minimal record reader/writer and a blocking capture backend.

This is a test tool, not trioscgi's FastCGI core: it trusts what it reads (an assert
where a real parser would raise) and answers every request with one fixed response.

Run as a program, it is the FastCGI application that Apache mod_fcgid spawns: the
listening socket is fd 0 (FCGI_LISTENSOCK_FILENO) and each request's raw records
are written to ``DIR/<pid>-<n>.fcgi``::

    python tests/fcgi_capture.py DIR
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# FastCGI 1.0 record types.
BEGIN_REQUEST = 1
ABORT_REQUEST = 2
END_REQUEST = 3
PARAMS = 4
STDIN = 5
STDOUT = 6
STDERR = 7
DATA = 8
GET_VALUES = 9
GET_VALUES_RESULT = 10
UNKNOWN_TYPE = 11
RESPONDER = 1
KEEP_CONN = 1

_HEADER = struct.Struct(">BBHHBx")  # version, type, request id, content length, padding

CAPTURE_RESPONSE = (
    b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\ncaptured\n"
)

# What the capture backend answers to GET_VALUES (only the names asked are answered).
DEFAULT_VALUES = {b"FCGI_MAX_CONNS": b"100", b"FCGI_MAX_REQS": b"1", b"FCGI_MPXS_CONNS": b"0"}


@dataclass(frozen=True)
class Record:
    type: int
    request_id: int
    content: bytes
    raw: bytes  # header + content + padding, as received


def record(rtype: int, request_id: int, content: bytes = b"") -> bytes:
    """One record, padded to a multiple of 8 bytes."""
    assert len(content) <= 0xFFFF
    padding = -len(content) % 8
    return _HEADER.pack(1, rtype, request_id, len(content), padding) + content + b"\0" * padding


def stream(rtype: int, request_id: int, data: bytes) -> bytes:
    """A whole stream: ``data`` in records of at most 65535 bytes, then the empty record."""
    chunks = [data[i : i + 0xFFFF] for i in range(0, len(data), 0xFFFF)]
    return b"".join(record(rtype, request_id, c) for c in chunks) + record(rtype, request_id)


def _length(data: bytes, i: int) -> tuple[int, int]:
    if data[i] < 0x80:
        return data[i], i + 1
    return int.from_bytes(data[i : i + 4], "big") & 0x7FFFFFFF, i + 4


def decode_pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    """Name-value pairs (1- or 4-byte lengths) in wire order, duplicates kept."""
    pairs = []
    i = 0
    while i < len(data):
        nlen, i = _length(data, i)
        vlen, i = _length(data, i)
        pairs.append((data[i : i + nlen], data[i + nlen : i + nlen + vlen]))
        i += nlen + vlen
    assert i == len(data), "name-value pair runs past the stream"
    return pairs


def encode_pairs(pairs: list[tuple[bytes, bytes]]) -> bytes:
    out = bytearray()
    for name, value in pairs:
        for n in (len(name), len(value)):
            out += bytes([n]) if n < 0x80 else (n | 0x80000000).to_bytes(4, "big")
        out += name + value
    return bytes(out)


def split_records(data: bytes) -> list[Record]:
    """Every record of a byte stream (it must end on a record boundary)."""
    out = []
    i = 0
    while i < len(data):
        version, rtype, rid, clen, plen = _HEADER.unpack_from(data, i)
        assert version == 1, f"FastCGI version {version} at offset {i}"
        end = i + 8 + clen + plen
        assert end <= len(data), "truncated record"
        out.append(Record(rtype, rid, data[i + 8 : i + 8 + clen], data[i:end]))
        i = end
    return out


@dataclass
class FcgiRequest:
    """One request as a front-end sent it (see :func:`parse_fcgi`)."""

    request_id: int
    role: int
    flags: int
    params: list[tuple[bytes, bytes]]
    stdin: bytes
    # Management records (request id 0) that came on the connection before the request.
    management: list[Record] = field(default_factory=list)
    # How many records each stream took (PARAMS, STDIN), the terminating empty one included.
    records: dict[int, int] = field(default_factory=dict)

    @property
    def keep_conn(self) -> bool:
        return bool(self.flags & KEEP_CONN)


def parse_fcgi(raw: bytes) -> FcgiRequest:
    """Split a captured ``.fcgi`` stream: management records, then one whole request."""
    management = []
    begin = None
    params = bytearray()
    stdin = bytearray()
    counts = {PARAMS: 0, STDIN: 0}
    for rec in split_records(raw):
        if rec.request_id == 0:
            management.append(rec)
            continue
        if rec.type == BEGIN_REQUEST:
            assert begin is None, "two BEGIN_REQUEST"
            begin = rec
        elif rec.type in counts:
            assert begin is not None and rec.request_id == begin.request_id
            counts[rec.type] += 1
            (params if rec.type == PARAMS else stdin).extend(rec.content)
        else:
            raise AssertionError(f"unexpected record type {rec.type}")
    assert begin is not None, "no BEGIN_REQUEST"
    role, flags = struct.unpack_from(">HB", begin.content)
    return FcgiRequest(
        begin.request_id,
        role,
        flags,
        decode_pairs(bytes(params)),
        bytes(stdin),
        management,
        counts,
    )


# --------------------------------------------------------------------------- serving


@dataclass(frozen=True)
class Captured:
    """One request's raw records; ``connection`` numbers the connections (from 1)."""

    raw: bytes
    connection: int
    request_id: int


class _Reader:
    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._buf = b""
        self.reset = False

    def _need(self, n: int) -> bool:
        while len(self._buf) < n:
            try:
                data = self._conn.recv(65536)
            except ConnectionResetError:
                if self._buf:
                    raise
                # Between records: HAProxy resets its idle keep-conn connections when
                # it stops. Tell it apart from a clean close, but it is no error.
                self.reset = True
                return False
            if not data:
                if self._buf:
                    raise ConnectionError(f"EOF inside a record ({len(self._buf)} bytes)")
                return False
            self._buf += data
        return True

    def next_record(self) -> Record | None:
        """The next record, or None at a clean EOF (between records)."""
        if not self._need(8):
            return None
        version, rtype, rid, clen, plen = _HEADER.unpack_from(self._buf)
        if version != 1:
            raise ValueError(f"not FastCGI: {self._buf[:16]!r}")
        if not self._need(8 + clen + plen):
            raise ConnectionError("EOF inside a record")
        raw, self._buf = self._buf[: 8 + clen + plen], self._buf[8 + clen + plen :]
        return Record(rtype, rid, raw[8 : 8 + clen], raw)


def _answer_values(content: bytes, values: dict[bytes, bytes]) -> bytes:
    asked = [name for name, _ in decode_pairs(content)]
    return record(
        GET_VALUES_RESULT, 0, encode_pairs([(n, values[n]) for n in asked if n in values])
    )


def serve_connection(
    conn: socket.socket,
    on_request: Callable[[bytes, int], None],
    *,
    response: bytes = CAPTURE_RESPONSE,
    values: dict[bytes, bytes] | None = None,
    on_abort: Callable[[bytes, int], None] | None = None,
) -> str:
    """Serve one FastCGI connection until EOF (or until a request without KEEP_CONN ends).

    Requests may interleave (HAProxy's ``mpxs-conns``): each id collects its own records,
    and once its PARAMS and STDIN streams have both ended, ``on_request(raw, request_id)``
    gets them (preceded by any management records not yet handed on) and the response
    goes out: ``response`` on STDOUT, then END_REQUEST (COMPLETE, app status 0).
    GET_VALUES is answered from ``values``; ABORT_REQUEST gets END_REQUEST, and
    ``on_abort(raw, request_id)`` what the aborted request had sent.

    Returns how it ended: ``"eof"`` (the front-end closed), ``"reset"`` (it reset the
    connection between records), or ``"done"`` (a request without KEEP_CONN was answered).
    """
    values = DEFAULT_VALUES if values is None else values
    reader = _Reader(conn)
    pending: dict[int, list[Record]] = {}
    management: list[bytes] = []
    ended: dict[int, set[int]] = {}
    while True:
        rec = reader.next_record()
        if rec is None:
            return "reset" if reader.reset else "eof"
        rid = rec.request_id
        if rid == 0:
            management.append(rec.raw)
            if rec.type == GET_VALUES:
                conn.sendall(_answer_values(rec.content, values))
            else:
                conn.sendall(record(UNKNOWN_TYPE, 0, bytes([rec.type]) + b"\0" * 7))
            continue
        if rec.type == BEGIN_REQUEST:
            pending[rid] = [rec]
            ended[rid] = set()
            continue
        if rid not in pending:
            continue  # a record for a request that is over (or never began): ignore it
        pending[rid].append(rec)
        if rec.type == ABORT_REQUEST:
            recs = pending.pop(rid)
            del ended[rid]
            if on_abort is not None:
                on_abort(b"".join(r.raw for r in recs), rid)
            conn.sendall(record(END_REQUEST, rid, b"\0" * 8))
            continue
        if rec.type in (PARAMS, STDIN) and not rec.content:
            ended[rid].add(rec.type)
        if ended[rid] != {PARAMS, STDIN}:
            continue
        recs = pending.pop(rid)
        del ended[rid]
        on_request(b"".join(management) + b"".join(r.raw for r in recs), rid)
        management.clear()
        conn.sendall(stream(STDOUT, rid, response) + record(END_REQUEST, rid, b"\0" * 8))
        flags = recs[0].content[2]
        if not flags & KEEP_CONN:
            return "done"


class FcgiCaptureBackend:
    """A blocking FastCGI server (a thread per connection) that records every request.

    Use as a context manager; ``bind`` is ``unix:/path`` or ``127.0.0.1:0``, and
    ``backend`` is then the address to give a front-end (``unix:/p`` or ``host:port``).
    """

    def __init__(self, bind: str = "127.0.0.1:0", values: dict[bytes, bytes] | None = None):
        if bind.startswith("unix:"):
            path = bind[len("unix:") :]
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.bind(path)
            os.chmod(path, 0o660)
            self.backend = bind
            self._path: str | None = path
        else:
            host, _, port = bind.rpartition(":")
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, int(port)))
            host, port_n = self._sock.getsockname()
            self.backend = f"{host}:{port_n}"
            self._path = None
        self._sock.listen(64)
        self._sock.settimeout(0.2)  # lets the thread notice stop without a wakeup fd
        self._values = values
        self.requests: list[Captured] = []
        self.aborted: list[Captured] = []  # requests the front-end sent ABORT_REQUEST for
        self.errors: list[BaseException] = []
        self.connections = 0
        self.endings: list[str] = []  # how each finished connection ended (serve_connection)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> FcgiCaptureBackend:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(10)
        self._sock.close()
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
                self._open.add(conn)
            t = threading.Thread(target=self._serve, args=(conn, number), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        def on_request(raw: bytes, rid: int) -> None:
            with self._lock:
                self.requests.append(Captured(raw, number, rid))

        def on_abort(raw: bytes, rid: int) -> None:
            with self._lock:
                self.aborted.append(Captured(raw, number, rid))

        try:
            conn.settimeout(30.0)
            ending = serve_connection(conn, on_request, values=self._values, on_abort=on_abort)
            with self._lock:
                self.endings.append(ending)
        except (OSError, ValueError, AssertionError) as e:
            if not self._stop.is_set():
                with self._lock:
                    self.errors.append(e)
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def pop_all(self) -> list[Captured]:
        with self._lock:
            out, self.requests = self.requests, []
            return out


# --------------------------------------------------------------------------- as a program


def _serve_fd0(outdir: Path) -> None:
    """mod_fcgid's way: accept on the listening socket inherited as fd 0, until killed."""
    listener = socket.socket(fileno=0)
    count = 0

    def on_request(raw: bytes, rid: int) -> None:
        nonlocal count
        count += 1
        path = outdir / f"{os.getpid()}-{count:03d}.fcgi"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(raw)
        tmp.rename(path)  # whole files only: the harness polls for them

    while True:
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            serve_connection(conn, on_request)


if __name__ == "__main__":
    _serve_fd0(Path(sys.argv[1]))
