"""FastAPI with routes on asyncio-only libraries: aiosqlite, and asyncio streams.

Served with ``--app-loop asyncio``: FastAPI itself would run on trio (auto
picks trio for it), the libraries would not. The lifespan starts an asyncio
echo server on a Unix socket (``ECHO_SOCKET``) that a route talks to.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiosqlite
from fastapi import FastAPI

ECHO_SOCKET = os.environ.get("ECHO_SOCKET", os.path.join(tempfile.gettempdir(), "echo.sock"))


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.readline()
    writer.write(b"echo: " + data)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    server = await asyncio.start_unix_server(_echo, ECHO_SOCKET)
    async with aiosqlite.connect(":memory:") as db:
        await db.execute("CREATE TABLE notes (text TEXT)")
        await db.executemany("INSERT INTO notes VALUES (?)", [("one",), ("two",)])
        await db.commit()
        app.state.db = db
        try:
            yield
        finally:
            server.close()
            await server.wait_closed()


app = FastAPI(lifespan=lifespan)


@app.get("/notes")
async def notes() -> dict[str, list[str]]:
    async with app.state.db.execute("SELECT text FROM notes ORDER BY text") as cursor:
        return {"notes": [row[0] async for row in cursor]}


@app.get("/echo/{word}")
async def echo(word: str) -> dict[str, str]:
    reader, writer = await asyncio.open_unix_connection(ECHO_SOCKET)
    writer.write(word.encode() + b"\n")
    await writer.drain()
    answer = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return {"answer": answer.decode().strip()}
