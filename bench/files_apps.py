"""Apps for bench/files.py: a 1 MiB file by pathsend or by body messages, WSGI hellos."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from starlette.responses import FileResponse

FILE_PATH = os.path.join(tempfile.gettempdir(), "trioscgi-bench-1mib.bin")
if not os.path.exists(FILE_PATH):
    with open(FILE_PATH + f".{os.getpid()}", "wb") as _f:
        _f.write(os.urandom(1 << 20))
    os.replace(FILE_PATH + f".{os.getpid()}", FILE_PATH)
with open(FILE_PATH, "rb") as _f:
    MEMORY = _f.read()
HEADERS = [(b"content-type", b"application/octet-stream"), (b"content-length", b"%d" % len(MEMORY))]
HELLO = b"Hello, world!"


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


async def pathsend(scope: Any, receive: Any, send: Any) -> None:
    """The file by ``http.response.pathsend`` (the kernel copies it)."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.pathsend", "path": FILE_PATH})
    return None


async def starlette_pathsend(scope: Any, receive: Any, send: Any) -> None:
    """Starlette's FileResponse as is: it uses pathsend when the server offers it."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    await FileResponse(FILE_PATH)(scope, receive, send)
    return None


async def starlette_body(scope: Any, receive: Any, send: Any) -> None:
    """The same FileResponse with pathsend hidden: the file goes as body messages."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    extensions = {k: v for k, v in scope["extensions"].items() if "send" not in k}
    await FileResponse(FILE_PATH)({**scope, "extensions": extensions}, receive, send)
    return None


async def body_file(scope: Any, receive: Any, send: Any) -> None:
    """The file read per request and sent as 64 KiB body messages (no thread)."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    # A plain blocking read on the event loop, as naive apps do (page cache: fast).
    with open(FILE_PATH, "rb") as f:  # noqa: ASYNC230
        while True:
            block = f.read(65536)
            more = len(block) == 65536
            await send({"type": "http.response.body", "body": block, "more_body": more})
            if not more:
                break
    return None


async def body_memory(scope: Any, receive: Any, send: Any) -> None:
    """The best case for body messages: the whole file from memory in one message."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": MEMORY})
    return None


def wsgi_hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The WSGI hello world."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [HELLO]


def _flask() -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.get("/<path:p>")
    def hello(p: str) -> str:
        return "Hello, world!"

    return app


flask_hello = _flask()
