"""The one typed configuration object every part of trioscgi takes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Lifespan = Literal["auto", "on", "off"]
Interface = Literal["auto", "asgi", "wsgi"]


@dataclass
class Config:
    """Every setting of trioscgi, with its default.

    The daemon fills it from a TOML file and the command line; an embedding
    program builds it directly. Every key is documented in
    ``config.example.toml`` and ``docs/configuration.md``.
    """

    # --- what to serve -------------------------------------------------------
    app: str | None = None
    factory: bool = False
    app_dir: str | None = None
    interface: Interface = "auto"
    wsgi_threads: int = 16

    # --- where to listen -----------------------------------------------------
    bind: list[str] = field(default_factory=lambda: ["127.0.0.1:4000"])
    backlog: int = 1024
    unix_socket_mode: int = 0o660
    unix_socket_owner: str | None = None
    unix_socket_group: str | None = None
    trusted_peers: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])

    # --- the scope -----------------------------------------------------------
    root_path: str = ""

    # --- lifespan and shutdown ----------------------------------------------
    lifespan: Lifespan = "auto"
    startup_timeout: float = 60.0
    shutdown_timeout: float = 30.0
    graceful_timeout: float = 30.0

    # --- limits --------------------------------------------------------------
    max_header_size: int = 65536
    max_body_size: int | None = None
    header_timeout: float = 10.0
    read_timeout: float = 60.0
    write_timeout: float = 60.0
    drain_timeout: float = 5.0
    max_connections: int = 1024

    # --- processes -----------------------------------------------------------
    workers: int = 1
    max_requests: int = 0
    max_requests_jitter: int = 0
    pid_file: str | None = None

    # --- logging -------------------------------------------------------------
    log_level: str = "info"
    error_log: str = "-"
    access_log: str | None = None
    access_log_format: str = '%(h)s "%(r)s" %(s)s %(b)s %(D)s'
    logging: dict[str, Any] | None = None

    def replace(self, **changes: Any) -> Config:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)
