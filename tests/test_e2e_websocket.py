"""End to end: WebSocket through real nginx (stock scgi_params) to the real trioscgi process.

The client is the ``websockets`` library (sync API); the apps are unmodified Starlette and
FastAPI WebSocket routes (tests/apps), and a plain asyncio app on the hosted asyncio loop
(tests/apps/ws_asyncio_app.py). Hostile frames are written by hand on a raw socket
after a real handshake through nginx.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from frontends import (
    FrontEnd,
    TrioscgiProcess,
    find_binary,
    run_apache,
    run_lighttpd,
    run_nginx,
    run_nginx_fastcgi,
    start_trioscgi,
    stop_process,
)
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0


@pytest.fixture(scope="module", params=["unix", "tcp"])
def nginx(request: pytest.FixtureRequest, starlette_server: TrioscgiProcess) -> Iterator[FrontEnd]:
    with run_nginx(starlette_server.backends[request.param]) as fe:
        yield fe


def ws(
    fe: FrontEnd,
    target: str,
    *,
    compression: str | None = "deflate",  # websockets' own default
    subprotocols: Sequence[str] | None = None,
) -> ClientConnection:
    return connect(
        f"ws://127.0.0.1:{fe.port}{target}",
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        max_size=4 << 20,
        compression=compression,
        subprotocols=None if subprotocols is None else [Subprotocol(p) for p in subprotocols],
    )


def ended_code(fe: FrontEnd, session: str) -> int | None:
    """The disconnect code the app's session ``session`` got (None: not ended yet), bounded."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        code = json.loads(fe.get(f"/ws/ended?id={session}").body)
        if code is not None or time.monotonic() > deadline:
            return code  # type: ignore[no-any-return]
        time.sleep(0.02)


def test_echo_text_binary_big_fragmented_ping(nginx: FrontEnd) -> None:
    with ws(nginx, "/ws/echo?id=echo") as c:
        assert c.subprotocol is None
        c.send("héllo")
        assert c.recv(TIMEOUT) == "héllo"
        c.send(b"\x00\xff" * 10)
        assert c.recv(TIMEOUT) == b"\x00\xff" * 10
        big = os.urandom(1 << 20)
        c.send(big)
        assert c.recv(TIMEOUT) == big
        c.send(["frag", "mented ", "message"])  # three frames, one message
        assert c.recv(TIMEOUT) == "fragmented message"
        c.send([b"a" * 70000, b"b" * 70000])
        assert c.recv(TIMEOUT) == b"a" * 70000 + b"b" * 70000
        assert c.ping(b"are you there").wait(TIMEOUT)
        c.send("scope")
        assert json.loads(c.recv(TIMEOUT)) == {
            "path": "/ws/echo",
            "root_path": "",
            "scheme": "ws",
            "subprotocols": [],
        }
    # We closed with 1000: the app got it.
    assert ended_code(nginx, "echo") == 1000


def test_compression_negotiated_and_works(nginx: FrontEnd) -> None:
    with ws(nginx, "/ws/echo", compression="deflate") as c:
        assert c.response is not None  # set by the handshake
        extensions = c.response.headers.get("Sec-WebSocket-Extensions", "")
        assert "permessage-deflate" in extensions
        text = "compress me " * 5000
        c.send(text)
        assert c.recv(TIMEOUT) == text


def test_subprotocol_negotiation(nginx: FrontEnd) -> None:
    with ws(nginx, "/ws/echo", subprotocols=["other", "chat"]) as c:
        assert c.subprotocol == "chat"
        assert c.response is not None  # set by the handshake
        assert c.response.headers["Sec-WebSocket-Protocol"] == "chat"
        c.send("scope")
        assert json.loads(c.recv(TIMEOUT))["subprotocols"] == ["other", "chat"]


def test_prefix_location_root_path(nginx: FrontEnd) -> None:
    with ws(nginx, "/app/ws/echo") as c:
        c.send("scope")
        got = json.loads(c.recv(TIMEOUT))
        assert (got["path"], got["root_path"]) == ("/app/ws/echo", "/app")


def test_close_before_accept_is_403(nginx: FrontEnd) -> None:
    with pytest.raises(InvalidStatus) as info:
        ws(nginx, "/ws/deny")
    assert info.value.response.status_code == 403


def test_denial_response_extension(nginx: FrontEnd) -> None:
    with pytest.raises(InvalidStatus) as info:
        ws(nginx, "/ws/teapot")
    assert info.value.response.status_code == 418
    assert info.value.response.body == b"no socket for you\n"


def test_unknown_route_is_403(nginx: FrontEnd) -> None:
    # Starlette closes a WebSocket that matches no route before accepting it.
    with pytest.raises(InvalidStatus) as info:
        ws(nginx, "/ws/nowhere")
    assert info.value.response.status_code == 403


def test_server_closes_with_code_and_reason(nginx: FrontEnd) -> None:
    with ws(nginx, "/ws/echo?id=srvclose") as c:
        c.send("close 4001")
        with pytest.raises(ConnectionClosed) as info:
            c.recv(TIMEOUT)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "asked to")
    assert ended_code(nginx, "srvclose") == 4001  # the client's answer echoes the code


def test_client_closes_with_code(nginx: FrontEnd) -> None:
    with ws(nginx, "/ws/echo?id=cliclose") as c:
        c.send("x")
        c.recv(TIMEOUT)
        c.close(4002, "bye")
        assert c.protocol.close_rcvd is not None and c.protocol.close_rcvd.code == 4002
    assert ended_code(nginx, "cliclose") == 4002


def test_client_vanishing_is_1006(nginx: FrontEnd) -> None:
    with ws(nginx, "/ws/echo?id=vanish") as c:
        c.send("x")
        assert c.recv(TIMEOUT) == "x"
        c.socket.shutdown(socket.SHUT_RDWR)  # gone without a close frame
        c.socket.close()
        assert ended_code(nginx, "vanish") == 1006


def test_app_raising_after_accept_is_1011(nginx: FrontEnd) -> None:
    with ws(nginx, "/ws/echo") as c:
        c.send("boom")
        with pytest.raises(ConnectionClosed) as info:
            c.recv(TIMEOUT)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1011
    assert nginx.get("/").status == 200  # the server goes on


def test_fifty_concurrent_sessions_and_plain_http(nginx: FrontEnd) -> None:
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(ws(nginx, f"/ws/echo?id=many{i}")) for i in range(50)]
        for i, c in enumerate(clients):
            c.send(f"message {i}")
        # Plain HTTP on the same app and socket while 50 sessions are open.
        assert nginx.get("/").body == b"hello, world\n"
        for i, c in enumerate(clients):
            assert c.recv(TIMEOUT) == f"message {i}"
    assert ended_code(nginx, "many49") == 1000


def test_fastapi_route(fastapi_server: TrioscgiProcess) -> None:
    with run_nginx(fastapi_server.backends["unix"]) as fe, ws(fe, "/ws/items/42") as c:
        c.send("hi")
        assert json.loads(c.recv(TIMEOUT)) == {"item_id": 42, "got": "hi"}


@pytest.mark.parametrize(
    "runner",
    [run_apache, run_lighttpd, run_nginx_fastcgi],
    ids=["apache-scgi", "lighttpd-1.4.69-scgi", "nginx-fastcgi"],
)
def test_frontends_that_cant_tunnel_get_an_http_answer(
    runner: Any, starlette_server: TrioscgiProcess
) -> None:
    # A 101 there would reach the client and then hang: the app answers the handshake as
    # a plain GET instead (Starlette: 404, no HTTP route there), at once.
    with runner(starlette_server.backends["tcp"]) as fe:
        if runner is run_lighttpd and lighttpd_version() >= (1, 4, 74):
            pytest.skip("this lighttpd can tunnel with upgrade enabled")
        started = time.monotonic()
        with pytest.raises(InvalidStatus) as info:
            ws(fe, "/ws/echo")
        assert info.value.response.status_code == 404
        assert time.monotonic() - started < TIMEOUT / 2
        assert fe.get("/").status == 200


def lighttpd_version() -> tuple[int, ...]:
    out = subprocess.run(
        [find_binary("lighttpd"), "-v"], capture_output=True, text=True, check=True
    ).stdout
    return tuple(int(x) for x in out.split("/")[1].split()[0].split("."))


# --- hostile peers: raw frames after a real handshake through nginx --------------------


def raw_session(fe: FrontEnd, target: str = "/ws/echo") -> socket.socket:
    """Handshake by hand; return the socket with the 101 head read."""
    sock = socket.create_connection(("127.0.0.1", fe.port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(1)
        assert data, head
        head += data
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def frame(opcode: int, payload: bytes, *, masked: bool = True, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, mask_bit | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_code_received(sock: socket.socket) -> int:
    """Read frames until a close frame from the server; return its code."""
    buf = b""
    while True:
        while len(buf) < 2:
            data = sock.recv(65536)
            assert data, "connection ended without a close frame"
            buf += data
        opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
        start = 2
        if n == 126:
            n, start = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            n, start = struct.unpack("!Q", buf[2:10])[0], 10
        while len(buf) < start + n:
            data = sock.recv(65536)
            assert data
            buf += data
        if opcode == 0x8:
            return int(struct.unpack("!H", buf[start : start + 2])[0])
        buf = buf[start + n :]


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        ("unmasked frame", frame(0x1, b"hi", masked=False), 1002),
        ("bad UTF-8", frame(0x1, b"\xff\xfe"), 1007),
        ("control frame over 125 bytes", frame(0x9, b"p" * 126), 1002),
        ("unknown opcode", frame(0x3, b""), 1002),
    ],
)
def test_hostile_frames(nginx: FrontEnd, name: str, data: bytes, code: int) -> None:
    with raw_session(nginx) as sock:
        sock.sendall(data)
        assert close_code_received(sock) == code
    assert nginx.get("/").status == 200


@pytest.fixture(scope="module")
def small_server(e2e_dir: Path) -> Iterator[TrioscgiProcess]:
    args = ["--websocket-max-message-size", "1000"]
    server = start_trioscgi(
        "starlette_app:app", sockdir=e2e_dir, logdir=e2e_dir, args=args, name="small"
    )
    try:
        yield server
    finally:
        assert server.stop() == 0, server.logs()


def test_oversize_message_is_1009(small_server: TrioscgiProcess) -> None:
    with run_nginx(small_server.backends["tcp"]) as fe:
        with ws(fe, "/ws/echo?id=big") as c:
            c.send("x" * 1000)
            assert c.recv(TIMEOUT) == "x" * 1000
            with pytest.raises(ConnectionClosed) as info:
                # Too big only once the fragments add up; our close can reach the client
                # while it is still sending (then send() raises).
                c.send([b"y" * 600, b"y" * 600])
                c.recv(TIMEOUT)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        assert ended_code(fe, "big") == 1009


def test_sigterm_closes_open_sockets_with_1001(e2e_dir: Path) -> None:
    server = start_trioscgi("starlette_app:app", sockdir=e2e_dir, logdir=e2e_dir, name="sigterm")
    try:
        with run_nginx(server.backends["unix"]) as fe, contextlib.ExitStack() as stack:
            clients = [stack.enter_context(ws(fe, f"/ws/echo?id=term{i}")) for i in range(3)]
            for c in clients:
                c.send("up?")
                assert c.recv(TIMEOUT) == "up?"
            server.proc.send_signal(signal.SIGTERM)
            for c in clients:
                with pytest.raises(ConnectionClosed) as info:
                    c.recv(TIMEOUT)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1001
            assert server.proc.wait(TIMEOUT) == 0, server.logs()
    finally:
        stop_process(server.proc)


def test_workers(e2e_dir: Path) -> None:
    server = start_trioscgi(
        "starlette_app:app", sockdir=e2e_dir, logdir=e2e_dir, args=["--workers", "2"], name="wk"
    )
    try:
        with run_nginx(server.backends["unix"]) as fe, contextlib.ExitStack() as stack:
            clients = [stack.enter_context(ws(fe, "/ws/echo")) for _ in range(6)]
            for i, c in enumerate(clients):
                c.send(f"to worker? {i}")
            for i, c in enumerate(clients):
                assert c.recv(TIMEOUT) == f"to worker? {i}"
            assert fe.get("/").status == 200
    finally:
        assert server.stop() == 0, server.logs()


# --- an asyncio app (the hosted loop) behind nginx ---------------------------------------


@pytest.fixture(scope="module")
def asyncio_nginx(e2e_dir: Path) -> Iterator[FrontEnd]:
    """tests/apps/ws_asyncio_app.py on the hosted asyncio loop, nginx over TCP."""
    server = start_trioscgi(
        "ws_asyncio_app:app",
        sockdir=e2e_dir,
        logdir=e2e_dir,
        args=["--app-loop", "asyncio"],
        name="ws-asyncio",
    )
    try:
        with run_nginx(server.backends["tcp"]) as fe:
            yield fe
    finally:
        assert server.stop() == 0, server.logs()


def recorded(fe: FrontEnd, session: str) -> list[dict[str, Any]]:
    """What the asyncio app's session ``session`` received, once it ended (bounded)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        got = json.loads(fe.get(f"/record?id={session}").body)
        if got and got[-1]["type"] == "websocket.disconnect":
            return got  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, got
        time.sleep(0.02)  # polling interval, not a timing assumption


def test_asyncio_app_echo_and_client_close(asyncio_nginx: FrontEnd) -> None:
    big = os.urandom(1 << 20)
    with ws(asyncio_nginx, "/ws/echo?id=a-echo") as c:
        c.send("héllo")
        assert c.recv(TIMEOUT) == "héllo"
        c.send(b"\x00\xff")
        assert c.recv(TIMEOUT) == b"\x00\xff"
        c.send(big)
        assert c.recv(TIMEOUT) == big
        c.send(["frag", "mented"])
        assert c.recv(TIMEOUT) == "fragmented"
        assert c.ping(b"there?").wait(TIMEOUT)
        c.close(4002, "bye")
    digest = hashlib.sha256(big).hexdigest()
    assert recorded(asyncio_nginx, "a-echo") == [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "héllo"},
        {"type": "websocket.receive", "bytes": "00ff"},
        {"type": "websocket.receive", "bytes": f"{len(big)} long, sha256 {digest}"},
        {"type": "websocket.receive", "text": "fragmented"},
        {"type": "websocket.disconnect", "code": 4002, "reason": "bye"},
    ]


def test_asyncio_app_busy_still_answers_pings(asyncio_nginx: FrontEnd) -> None:
    with ws(asyncio_nginx, "/ws/echo?id=a-busy") as c:
        c.send("busy 2.0")
        time.sleep(0.2)  # the ping comes on its own, while the app sleeps
        started = time.monotonic()
        assert c.ping(b"busy?").wait(TIMEOUT)
        assert time.monotonic() - started < 1.5  # answered before the app woke up
        assert c.recv(TIMEOUT) == "done"
    assert recorded(asyncio_nginx, "a-busy")[-1] == {
        "type": "websocket.disconnect",
        "code": 1000,
        "reason": "",
    }


def test_asyncio_app_server_close_and_deny(asyncio_nginx: FrontEnd) -> None:
    with ws(asyncio_nginx, "/ws/echo?id=a-close") as c:
        c.send("close 4001 done here")
        with pytest.raises(ConnectionClosed) as info:
            c.recv(TIMEOUT)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "done here")
    assert recorded(asyncio_nginx, "a-close")[-1]["code"] == 4001
    with pytest.raises(InvalidStatus) as denied:
        ws(asyncio_nginx, "/ws/deny")
    assert denied.value.response.status_code == 403


def test_asyncio_app_raising_is_1011_and_vanishing_client_1006(asyncio_nginx: FrontEnd) -> None:
    with ws(asyncio_nginx, "/ws/echo?id=a-raise") as c:
        c.send("raise")
        with pytest.raises(ConnectionClosed) as info:
            c.recv(TIMEOUT)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1011
    with ws(asyncio_nginx, "/ws/echo?id=a-vanish") as c:
        c.send("x")
        assert c.recv(TIMEOUT) == "x"
        c.socket.shutdown(socket.SHUT_RDWR)  # gone without a close frame
        c.socket.close()
    assert recorded(asyncio_nginx, "a-vanish")[-1]["code"] == 1006
    assert asyncio_nginx.get("/").status == 200  # the server goes on
