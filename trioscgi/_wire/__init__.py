"""The wires: one module per protocol (scgi, fastcgi), each owning its socket and moving
bytes between it, a sans-I/O core and the ASGI layer; sockio and sendfile are their shared
socket helpers (docs/architecture.md)."""
