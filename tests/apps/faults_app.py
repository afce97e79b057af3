"""A raw ASGI app for the reload and cut-response tests (tests/test_e2e_faults.py).

- ``POST /count`` reads its body, appends the request's ``x-req`` id to the file named by
  ``FAULTS_APP_LOG`` (one line per request the app ran), then answers ``ran <id>``.
- ``GET /pid`` answers the worker's pid.
- ``GET /cut`` streams 1 MiB in 64 KiB chunks without a Content-Length, and raises after
  512 KiB (``?kill`` instead SIGKILLs its own worker there; ``?unbuffered`` adds
  ``X-Accel-Buffering: no``, nginx's unbuffered path).
"""

from __future__ import annotations

import os
import signal
from typing import Any

CHUNK = b"x" * 65536


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"].rsplit("/", 1)[-1]
    if path == "count":
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        req = dict(scope["headers"]).get(b"x-req", b"?")
        with open(os.environ["FAULTS_APP_LOG"], "ab") as f:
            f.write(req + b"\n")
        await _answer(send, b"ran " + req + b" " + str(len(body)).encode())
    elif path == "pid":
        await _answer(send, str(os.getpid()).encode())
    elif path == "cut":
        headers = [(b"content-type", b"application/octet-stream")]
        options = scope["query_string"].split(b"&")
        if b"unbuffered" in options:
            headers.append((b"x-accel-buffering", b"no"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(8):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        if b"kill" in options:
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("cut on purpose, after 512 KiB of 1 MiB")
    else:
        await _answer(send, b"not found", 404)


async def _answer(send: Any, body: bytes, status: int = 200) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})
