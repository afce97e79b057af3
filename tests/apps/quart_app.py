"""A Quart app for the end-to-end tests: a route, a streamed response, startup state.

No app_loop setting: auto puts Quart on asyncio. ``QUART_MARKS`` names a
directory where the shutdown hook and a cancelled stream leave marks.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from quart import Quart, Response, request

MARKS = Path(os.environ.get("QUART_MARKS", tempfile.gettempdir()))

app = Quart(__name__)


@app.before_serving
async def startup() -> None:
    app.config["STARTED_LOOP"] = id(asyncio.get_running_loop())
    app.config["GREETING"] = "set in before_serving"


@app.after_serving
async def shutdown() -> None:
    (MARKS / "quart.shutdown").write_text("after_serving ran\n")


@app.route("/")
async def index() -> str:
    return "hello from quart\n"


@app.route("/state")
async def state() -> dict[str, object]:
    return {
        "greeting": app.config["GREETING"],
        "same_loop": app.config["STARTED_LOOP"] == id(asyncio.get_running_loop()),
    }


@app.route("/stream")
async def stream() -> Response:
    n = int(request.args.get("n", "5"))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(n):
            await asyncio.sleep(0)
            yield f"part {i}\n".encode()

    response = Response(chunks(), mimetype="text/plain")
    response.headers["X-Accel-Buffering"] = "no"
    return response


@app.route("/endless")
async def endless() -> Response:
    marker = Path(request.args["marker"])

    async def chunks() -> AsyncIterator[bytes]:
        try:
            for i in range(100_000):
                yield f"line {i}\n".encode() * 512
                await asyncio.sleep(0.005)
        finally:
            marker.write_text("stream ended\n")

    response = Response(chunks(), mimetype="text/plain")
    response.headers["X-Accel-Buffering"] = "no"
    return response


@app.route("/upload", methods=["POST"])
async def upload() -> dict[str, object]:
    """The sha256 and size of each uploaded file, by field name (multipart/form-data)."""
    files = {}
    for field, storage in (await request.files).items():
        data = storage.read()
        files[field] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return {"files": files, "fields": dict((await request.form).items())}
