"""A Starlette FileResponse app for the end-to-end pathsend test.

``/file`` answers with ``FileResponse`` (Starlette uses ``http.response.pathsend``
when the server advertises it); ``/kinds`` tells which message types the last
``/file`` response sent, so a test can see that pathsend was used.
"""

from __future__ import annotations

import json
import os
from typing import Any

from starlette.responses import FileResponse, PlainTextResponse
from starlette.types import Message

FILE_PATH = os.path.join(
    os.environ.get("E2E_FILE_DIR", "/tmp"), f"starlette-file-{os.getpid()}.bin"
)
with open(FILE_PATH, "wb") as _f:
    _f.write(bytes(range(256)) * 4096)  # 1 MiB

last_kinds: list[str] = []


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                os.unlink(FILE_PATH)
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/file":
        last_kinds.clear()

        async def recording_send(message: Message) -> None:
            last_kinds.append(message["type"])
            await send(message)

        await FileResponse(FILE_PATH, media_type="application/octet-stream")(
            scope, receive, recording_send
        )
        return
    body = json.dumps({"kinds": last_kinds, "extensions": sorted(scope["extensions"])})
    await PlainTextResponse(body)(scope, receive, send)
