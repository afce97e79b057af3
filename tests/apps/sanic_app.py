"""A Sanic application in ASGI mode: its startup runs on asyncio only.

Served with no app_loop setting: auto must put it on asyncio. The
``before_server_start`` listener runs in the ASGI lifespan startup; the
routes show that it ran and that a request body arrives whole.
"""

from __future__ import annotations

import asyncio
import hashlib

from sanic import DefaultSanic, Request, Sanic
from sanic.response import HTTPResponse, json, text

app = Sanic("trioscgi_e2e")


@app.before_server_start
async def started(app: DefaultSanic) -> None:
    await asyncio.sleep(0)
    app.ctx.started = "before_server_start ran"


@app.get("/")
async def hello(request: Request) -> HTTPResponse:
    return text("hello from sanic")


@app.get("/started")
async def started_route(request: Request) -> HTTPResponse:
    return json({"started": request.app.ctx.started})


@app.post("/sha256")
async def sha256(request: Request) -> HTTPResponse:
    return json({"length": len(request.body), "sha256": hashlib.sha256(request.body).hexdigest()})
