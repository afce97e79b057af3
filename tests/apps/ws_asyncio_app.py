"""A plain asyncio ASGI WebSocket app for the end-to-end tests (serve with --app-loop asyncio).

asyncio only: a receiving loop hands what it reads to a sending task through an
``asyncio.Queue``, as asyncio WebSocket code is often written, so receive() and send()
run in two tasks at once. Each session of ``/ws/echo?id=ID`` records the messages its
``receive()`` returned; ``GET /record?id=ID`` answers them as JSON (``null`` for an
unknown id). Text commands: ``busy SECONDS`` (stop reading that long, then send
``done``), ``close CODE REASON``, ``raise``. ``/ws/deny`` closes before accepting.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

records: dict[str, list[dict[str, Any]]] = {}


def _summary(message: dict[str, Any]) -> dict[str, Any]:
    # JSON-able: bytes as hex, a long payload by its length and digest.
    out = dict(message)
    for key in ("text", "bytes"):
        value = out.get(key)
        if value is None:
            continue
        data = value.encode() if isinstance(value, str) else value
        if len(value) > 64:
            out[key] = f"{len(value)} long, sha256 {hashlib.sha256(data).hexdigest()}"
        elif isinstance(value, bytes):
            out[key] = value.hex()
    return out


async def _http(scope: dict[str, Any], send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _echo(scope: dict[str, Any], receive: Any, send: Any, got: list[dict[str, Any]]) -> None:
    async def recv() -> dict[str, Any]:
        message: dict[str, Any] = await receive()
        got.append(_summary(message))
        return message

    await recv()
    await send({"type": "websocket.accept"})
    outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def sender() -> None:
        while (message := await outbox.get()) is not None:
            await send(message)

    sending = asyncio.get_running_loop().create_task(sender())
    try:
        while True:
            message = await recv()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text == "raise":
                raise RuntimeError("the app fails on an open WebSocket")
            if text is not None and text.startswith("busy "):
                await asyncio.sleep(float(text.split()[1]))
                await outbox.put({"type": "websocket.send", "text": "done"})
            elif text is not None and text.startswith("close "):
                _, code, reason = text.split(" ", 2)
                await outbox.put({"type": "websocket.close", "code": int(code), "reason": reason})
            else:
                await outbox.put({**message, "type": "websocket.send"})
    finally:
        await outbox.put(None)
        try:
            await sending
        except OSError:
            pass  # the client is gone (ASGI 2.4)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    asyncio.get_running_loop()  # raises if not on asyncio: this app is asyncio only
    query = dict(
        pair.split("=", 1) for pair in scope.get("query_string", b"").decode().split("&") if pair
    )
    if scope["type"] == "http":
        if scope["path"] == "/record":
            await _http(scope, send, 200, json.dumps(records.get(query.get("id", ""))).encode())
        else:
            await _http(scope, send, 200, b'"hello from asyncio"')
        return
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/ws/deny":
        await receive()
        await send({"type": "websocket.close"})
        return
    got: list[dict[str, Any]] = []
    records[query.get("id", "")] = got
    await _echo(scope, receive, send, got)
