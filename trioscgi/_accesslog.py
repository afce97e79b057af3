"""Access log: one line per request to the ``trioscgi.access`` logger, hypercorn-style atoms.

The format is compiled once; per request only the atoms the format names are
computed, so a short format costs little on the hot path.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

# (scope, status, size, duration) -> value of one atom
Getter = Callable[[dict[str, Any], int, int, float], object]

_ATOM = re.compile(r"%\(([^)]*)\)")


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return "-"


def _client(scope: dict[str, Any], status: int, size: int, duration: float) -> object:
    client = scope.get("client")
    return client[0] if client else "-"


def _protocol(scope: dict[str, Any]) -> str:
    return "HTTP/" + str(scope.get("http_version", "1.1"))


def _target(scope: dict[str, Any]) -> str:
    # The raw target (as the client sent it) when the front-end passed it:
    # what an operator greps for; the decoded path otherwise.
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else str(scope.get("path", ""))
    query = scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


def _request_line(scope: dict[str, Any], status: int, size: int, duration: float) -> object:
    return f"{scope.get('method', '-')} {_target(scope)} {_protocol(scope)}"


class _Clock:
    """``[21/Nov/2026:01:07:57 +0000]``, formatted once per second, not per request."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, scope: dict[str, Any], status: int, size: int, duration: float) -> object:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._text = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now))
        return self._text


def _status_phrase(scope: dict[str, Any], status: int, size: int, duration: float) -> object:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "-"


_SIMPLE: dict[str, Getter] = {
    "h": _client,
    "l": lambda scope, status, size, duration: "-",
    "u": lambda scope, status, size, duration: "-",
    "r": _request_line,
    "R": lambda scope, status, size, duration: _target(scope),
    "m": lambda scope, status, size, duration: scope.get("method", "-"),
    "U": lambda scope, status, size, duration: scope.get("path", "-"),
    "q": lambda scope, status, size, duration: scope.get("query_string", b"").decode("latin-1"),
    "H": lambda scope, status, size, duration: _protocol(scope),
    "S": lambda scope, status, size, duration: scope.get("scheme", "-"),
    "s": lambda scope, status, size, duration: status,
    "st": _status_phrase,
    "b": lambda scope, status, size, duration: str(size) if size else "-",
    "B": lambda scope, status, size, duration: size,
    "f": lambda scope, status, size, duration: _header(scope, b"referer"),
    "a": lambda scope, status, size, duration: _header(scope, b"user-agent"),
    "T": lambda scope, status, size, duration: int(duration),
    "D": lambda scope, status, size, duration: int(duration * 1_000_000),
    "L": lambda scope, status, size, duration: f"{duration:.6f}",
    "p": lambda scope, status, size, duration: os.getpid(),
}

#: Every atom a format may use, for the documentation and error messages.
ATOMS: tuple[str, ...] = (*_SIMPLE, "{header}i", "{VAR}e")


def _request_header_getter(name: str) -> Getter:
    key = name.lower().encode("latin-1")
    return lambda scope, status, size, duration: _header(scope, key)


def _environ_getter(name: str) -> Getter:
    return lambda scope, status, size, duration: os.environ.get(name, "-")


def compile_format(fmt: str) -> list[tuple[str, Getter]]:
    """Parse ``fmt`` into the atoms it uses.

    Returns:
        ``(atom, getter)`` pairs; ``fmt % {atom: getter(...)}`` makes a line.

    Raises:
        ValueError: an unknown atom, or ``fmt`` is not a valid ``%`` format.
    """
    getters: dict[str, Getter] = {}
    for match in _ATOM.finditer(fmt):
        atom = match.group(1)
        if atom in getters:
            continue
        if atom in _SIMPLE:
            getters[atom] = _SIMPLE[atom]
        elif atom == "t":
            getters[atom] = _Clock()
        elif len(atom) >= 3 and atom[0] == "{" and atom[-2] == "}" and atom[-1] in "ie":
            name = atom[1:-2]
            if not name:
                raise ValueError(f"empty name in atom %({atom})")
            getters[atom] = (
                _request_header_getter(name) if atom[-1] == "i" else _environ_getter(name)
            )
        else:
            known = " ".join(f"%({a})s" for a in ("t", *ATOMS))
            raise ValueError(f"unknown atom %({atom})s; known atoms: {known}")
    # Try the format once on sample values so that a bad conversion
    # ("%(s)q", a lone "%") is a config error, not an error per request.
    sample = {atom: get(_SAMPLE_SCOPE, 200, 12, 0.25) for atom, get in getters.items()}
    try:
        fmt % sample
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"invalid format {fmt!r}: {exc}") from None
    return list(getters.items())


_SAMPLE_SCOPE: dict[str, Any] = {
    "type": "http",
    "method": "GET",
    "path": "/",
    "raw_path": b"/",
    "query_string": b"",
    "http_version": "1.1",
    "scheme": "http",
    "client": ("127.0.0.1", 1),
    "headers": [],
}


class AccessLogger:
    """Writes one access-log line per request to the ``trioscgi.access`` logger.

    Args:
        fmt: the line's format (``Config.access_log_format``), compiled here, once.

    Raises:
        ValueError: ``fmt`` is not a valid format (see :func:`compile_format`).
    """

    __slots__ = ("_fmt", "_getters", "_logger")

    def __init__(self, fmt: str) -> None:
        self._fmt = fmt
        self._getters = compile_format(fmt)
        self._logger = logging.getLogger("trioscgi.access")

    def log(self, scope: dict[str, Any], status: int, size: int, duration: float) -> None:
        """Log one finished request.

        Args:
            scope: the request's ASGI scope.
            status: the status sent (500 for a failure the server answered).
            size: response body bytes sent.
            duration: seconds from the request's arrival to the end of the response.
        """
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        values = {atom: get(scope, status, size, duration) for atom, get in self._getters}
        # handle() with a ready record skips logger.info()'s caller lookup
        # (a stack walk): a few microseconds per request on the hot path.
        logger.handle(
            logging.LogRecord(logger.name, logging.INFO, "", 0, self._fmt % values, None, None)
        )

    def format(self, scope: dict[str, Any], status: int, size: int, duration: float) -> str:
        """The line :meth:`log` would write (for tests and custom sinks)."""
        return self._fmt % {atom: get(scope, status, size, duration) for atom, get in self._getters}
