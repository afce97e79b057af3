"""A Quart app answering every path with a 13-byte hello."""

from __future__ import annotations

from quart import Quart

app = Quart(__name__)


@app.route("/", defaults={"rest": ""})
@app.route("/<path:rest>")
async def hello(rest: str) -> tuple[bytes, int, dict[str, str]]:
    return b"Hello, world!", 200, {"content-type": "text/plain"}
