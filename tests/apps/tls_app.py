"""A raw ASGI app that answers with its scope's scheme and TLS extension, as JSON."""

from __future__ import annotations

import json
from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return  # no lifespan support: trioscgi goes on without it
    body = json.dumps(
        {
            "scheme": scope["scheme"],
            "tls": scope["extensions"].get("tls"),
            "wire": sorted(k for k in scope["extensions"] if k != "tls"),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
