"""The ASGI layer, which knows no wire format: the seam a wire talks to, the HTTP cycle, the
WebSocket session, the scope and the lifespan (docs/architecture.md)."""
