"""A test-side FastCGI client: encode records, read and check the server's records.

Independent of trioscgi.fastcgi on purpose: the tests check the server's bytes
against the spec's layout, not against the core that produced them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import trio

BEGIN_REQUEST, ABORT_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR = 1, 2, 3, 4, 5, 6, 7
GET_VALUES, GET_VALUES_RESULT, UNKNOWN_TYPE = 9, 10, 11
RESPONDER, AUTHORIZER, FILTER = 1, 2, 3
KEEP_CONN = 1
REQUEST_COMPLETE, CANT_MPX_CONN, OVERLOADED, UNKNOWN_ROLE = 0, 1, 2, 3


def record(kind: int, request_id: int, content: bytes = b"", padding: int = 0) -> bytes:
    return (
        struct.pack(">BBHHBx", 1, kind, request_id, len(content), padding)
        + content
        + b"\0" * padding
    )


def _length(n: int) -> bytes:
    return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)


def pairs(items: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(_length(len(k)) + _length(len(v)) + k + v for k, v in items)


def begin(request_id: int = 1, *, keep: bool = False, role: int = RESPONDER) -> bytes:
    return record(BEGIN_REQUEST, request_id, struct.pack(">HB5x", role, KEEP_CONN if keep else 0))


def params(request_id: int, items: list[tuple[bytes, bytes]]) -> bytes:
    data = pairs(items)
    out = b"".join(
        record(PARAMS, request_id, data[i : i + 65535]) for i in range(0, len(data), 65535)
    )
    return out + record(PARAMS, request_id)


def stdin(request_id: int, body: bytes) -> bytes:
    out = b"".join(
        record(STDIN, request_id, body[i : i + 65535]) for i in range(0, len(body), 65535)
    )
    return out + record(STDIN, request_id)


def nginx_params(
    method: str = "GET", uri: str = "/", body: bytes = b"", **extra: str
) -> list[tuple[bytes, bytes]]:
    """Roughly what nginx's stock fastcgi_params sends (SCRIPT_NAME = the path, no PATH_INFO)."""
    path = uri.partition("?")[0]
    items = {
        "QUERY_STRING": uri.partition("?")[2],
        "REQUEST_METHOD": method,
        "CONTENT_TYPE": "",
        "CONTENT_LENGTH": str(len(body)) if body else "",
        "SCRIPT_NAME": path,
        "REQUEST_URI": uri,
        "DOCUMENT_URI": path,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_SCHEME": "http",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "SERVER_ADDR": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_NAME": "localhost",
        "HTTP_HOST": "localhost",
    }
    items.update(extra)
    return [(k.encode(), v.encode()) for k, v in items.items()]


def request(
    request_id: int = 1,
    method: str = "GET",
    uri: str = "/",
    body: bytes = b"",
    *,
    keep: bool = False,
    **extra: str,
) -> bytes:
    return (
        begin(request_id, keep=keep)
        + params(request_id, nginx_params(method, uri, body, **extra))
        + stdin(request_id, body)
    )


@dataclass
class Response:
    stdout: bytes = b""
    stderr: bytes = b""
    ended: bool = False
    app_status: int = -1
    protocol_status: int = -1

    @property
    def head(self) -> bytes:
        return self.stdout.partition(b"\r\n\r\n")[0]

    @property
    def body(self) -> bytes:
        return self.stdout.partition(b"\r\n\r\n")[2]

    @property
    def status(self) -> int:
        first = self.head.split(b"\r\n", 1)[0]
        assert first.startswith(b"Status: "), first
        return int(first.split()[1])


@dataclass
class Reader:
    """Reads records off a stream, checking the layout; collects them per request id."""

    stream: trio.abc.ReceiveStream
    buffer: bytearray = field(default_factory=bytearray)
    responses: dict[int, Response] = field(default_factory=dict)
    management: list[tuple[int, bytes]] = field(default_factory=list)
    eof: bool = False

    async def _fill(self, n: int) -> bool:
        while len(self.buffer) < n:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                self.eof = True
                assert not self.buffer, f"EOF inside a record: {bytes(self.buffer)!r}"
                return False
            self.buffer += chunk
        return True

    async def next_record(self) -> tuple[int, int, bytes] | None:
        if not await self._fill(8):
            return None
        version, kind, rid, length, padding = struct.unpack(">BBHHBx", self.buffer[:8])
        assert version == 1
        assert (length + padding) % 8 == 0 or padding < 8
        await self._fill(8 + length + padding)
        content = bytes(self.buffer[8 : 8 + length])
        del self.buffer[: 8 + length + padding]
        if rid == 0:
            self.management.append((kind, content))
            return kind, rid, content
        response = self.responses.setdefault(rid, Response())
        assert not response.ended, f"record {kind} for request {rid} after END_REQUEST"
        if kind == STDOUT:
            response.stdout += content
        elif kind == STDERR:
            response.stderr += content
        elif kind == END_REQUEST:
            response.ended = True
            response.app_status, response.protocol_status = struct.unpack(">IB3x", content)
        else:
            raise AssertionError(f"unexpected record type {kind}")
        return kind, rid, content

    async def until_ended(self, request_id: int = 1) -> Response:
        while not self.responses.get(request_id, Response()).ended:
            if await self.next_record() is None:
                raise AssertionError(f"EOF before END_REQUEST of request {request_id}")
        return self.responses[request_id]

    async def until_eof(self) -> None:
        while await self.next_record() is not None:
            pass


def parse_name_values(data: bytes) -> dict[bytes, bytes]:
    out = {}
    i = 0
    while i < len(data):
        lengths = []
        for _ in range(2):
            if data[i] < 128:
                lengths.append(data[i])
                i += 1
            else:
                lengths.append(struct.unpack(">I", data[i : i + 4])[0] & 0x7FFFFFFF)
                i += 4
        name = data[i : i + lengths[0]]
        i += lengths[0]
        out[name] = data[i : i + lengths[1]]
        i += lengths[1]
    return out
