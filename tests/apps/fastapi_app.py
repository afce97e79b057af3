"""A plain FastAPI app for the end-to-end tests: typed path/query params and a JSON body."""

from __future__ import annotations

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from pydantic import BaseModel


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


app = FastAPI()


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None) -> dict[str, object]:
    return {"item_id": item_id, "q": q}


@app.post("/items")
async def create_item(item: Item, quantity: int = 1) -> dict[str, object]:
    return {"name": item.name, "total": item.price * quantity, "tags": item.tags}


@app.get("/users/{name}/greet")
def greet(name: str, excited: bool = False) -> dict[str, str]:
    # A sync endpoint: FastAPI runs it in a worker thread (anyio on trio).
    return {"message": f"hello {name}" + ("!" if excited else ".")}


@app.websocket("/ws/items/{item_id}")
async def item_feed(websocket: WebSocket, item_id: int) -> None:
    # A typed path parameter on a WebSocket route; each text message gets a JSON answer.
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_json({"item_id": item_id, "got": text})
    except WebSocketDisconnect:
        pass
