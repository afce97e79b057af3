"""A plain Starlette app for the end-to-end tests (runs unmodified under any ASGI server).

Routes: path params, query echo, forms (urlencoded + multipart), large bodies,
streaming, lifespan state, root_path/path echo, and a request that waits for a
file (so a test controls when it finishes).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

# Bounds for the waits below, so a broken test cannot hang the server forever.
WAIT_LIMIT = 30.0
POLL = 0.01


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, str]]:
    yield {"greeting": "hello from lifespan"}
    marker = os.environ.get("E2E_SHUTDOWN_MARKER")
    if marker:
        with open(marker, "w") as f:
            f.write("lifespan shutdown ran\n")


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello, world\n")


async def item(request: Request) -> JSONResponse:
    return JSONResponse({"item_id": request.path_params["item_id"], "kind": "int"})


async def echo(request: Request) -> JSONResponse:
    scope = request.scope
    return JSONResponse(
        {
            "method": request.method,
            "rest": request.path_params.get("rest", ""),
            "path": scope["path"],
            "root_path": scope["root_path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query_string": scope["query_string"].decode("latin-1"),
            "query": list(request.query_params.multi_items()),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "http_version": scope["http_version"],
            "scheme": scope["scheme"],
            "url": str(request.url),
            "url_for_hello": str(request.url_for("hello")),
        }
    )


async def form(request: Request) -> JSONResponse:
    out: dict[str, object] = {}
    async with request.form(max_part_size=64 * 1024 * 1024) as data:
        for key, value in data.multi_items():
            if isinstance(value, UploadFile):
                content = await value.read()
                out[key] = {
                    "filename": value.filename,
                    "size": len(content),
                    "sha256": hashlib.sha256(content).hexdigest(),
                }
            else:
                out[key] = value
    return JSONResponse(out)


async def body(request: Request) -> JSONResponse:
    digest = hashlib.sha256()
    size = 0
    chunks = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
        chunks += 1
    return JSONResponse({"size": size, "sha256": digest.hexdigest(), "chunks": chunks})


async def stream(request: Request) -> StreamingResponse:
    n = int(request.query_params.get("n", "5"))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(n):
            yield f"chunk {i}\n".encode()

    return StreamingResponse(chunks(), media_type="text/plain", headers={"X-Accel-Buffering": "no"})


async def endless(request: Request) -> StreamingResponse:
    """Stream 16 KiB chunks until the client goes away; then write ?marker=PATH."""
    marker = request.query_params["marker"]

    async def chunks() -> AsyncIterator[bytes]:
        # No cancel scope (fail_after) around a yield: that corrupts trio's scope stack.
        deadline = time.monotonic() + WAIT_LIMIT
        sent = 0
        try:
            while time.monotonic() < deadline:
                yield b"x" * 16384
                sent += 1
                await anyio.sleep(0)
        finally:
            with open(marker, "w") as f:
                f.write(f"stopped after {sent} chunks\n")

    return StreamingResponse(
        chunks(), media_type="application/octet-stream", headers={"X-Accel-Buffering": "no"}
    )


async def broken_stream(request: Request) -> StreamingResponse:
    """Stream one chunk, then fail: the client must see an incomplete response."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b"partial\n"
        raise RuntimeError("broken stream (on purpose)")

    return StreamingResponse(chunks(), media_type="text/plain", headers={"X-Accel-Buffering": "no"})


async def state(request: Request) -> JSONResponse:
    return JSONResponse({"greeting": request.state.greeting})


async def wait(request: Request) -> PlainTextResponse:
    """Write ?started=PATH, then wait (bounded) until ?release=PATH exists."""
    started = request.query_params["started"]
    release = request.query_params["release"]
    with open(started, "w") as f:
        f.write("started\n")
    with anyio.fail_after(WAIT_LIMIT):
        while not os.path.exists(release):
            await anyio.sleep(POLL)
    return PlainTextResponse("released\n")


async def fail(request: Request) -> PlainTextResponse:
    raise RuntimeError("boom (on purpose)")


async def blocks(request: Request) -> StreamingResponse:
    """Stream ?kib= KiB (1024 by default) in 64 KiB pieces, byte i being i % 251."""
    kib = int(request.query_params.get("kib", "1024"))
    whole = bytes(i % 251 for i in range(kib * 1024))

    async def chunks() -> AsyncIterator[bytes]:
        for at in range(0, len(whole), 65536):
            yield whole[at : at + 65536]

    return StreamingResponse(chunks(), media_type="application/octet-stream")


async def missing(request: Request) -> PlainTextResponse:
    """A 404 of the app's own, with headers of its own."""
    headers = {"X-Custom": "yes", "Cache-Control": "no-store"}
    return PlainTextResponse("not here\n", status_code=404, headers=headers)


# The disconnect code each WebSocket echo session ended with, by its ?id= (GET /ws/ended).
ws_ended: dict[str, int] = {}


async def ws_echo(websocket: WebSocket) -> None:
    """Echo text and bytes; "close CODE" closes with CODE; "boom" raises after accept."""
    offered = websocket.scope["subprotocols"]
    await websocket.accept(subprotocol="chat" if "chat" in offered else None)
    session = websocket.query_params.get("id", "")
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                ws_ended[session] = message["code"]
                return
            if message.get("text") is not None:
                text = message["text"]
                if text.startswith("close "):
                    await websocket.close(int(text[6:]), reason="asked to")
                    continue
                if text == "boom":
                    raise RuntimeError("boom (the test asked for it)")
                if text == "scope":
                    scope = websocket.scope
                    await websocket.send_json(
                        {k: scope[k] for k in ("path", "root_path", "scheme", "subprotocols")}
                    )
                    continue
                await websocket.send_text(text)
            else:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect as exc:
        ws_ended[session] = exc.code


async def ws_deny(websocket: WebSocket) -> None:
    await websocket.close()


async def ws_teapot(websocket: WebSocket) -> None:
    await websocket.send_denial_response(PlainTextResponse("no socket for you\n", status_code=418))


async def ws_ended_code(request: Request) -> JSONResponse:
    return JSONResponse(ws_ended.get(request.query_params["id"]))


app = Starlette(
    routes=[
        WebSocketRoute("/ws/echo", ws_echo),
        WebSocketRoute("/ws/deny", ws_deny),
        WebSocketRoute("/ws/teapot", ws_teapot),
        Route("/ws/ended", ws_ended_code),
        Route("/", hello, name="hello"),
        Route("/items/{item_id:int}", item),
        Route("/echo", echo, methods=["GET", "POST"]),
        Route("/echo/{rest:path}", echo, methods=["GET", "POST"]),
        Route("/form", form, methods=["POST"]),
        Route("/body", body, methods=["POST", "PUT"]),
        Route("/stream", stream),
        Route("/endless", endless),
        Route("/broken-stream", broken_stream),
        Route("/state", state),
        Route("/wait", wait),
        Route("/fail", fail),
        Route("/blocks", blocks),
        Route("/missing", missing),
    ],
    lifespan=lifespan,
)
