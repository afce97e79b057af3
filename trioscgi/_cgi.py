"""The CGI response head: ``Status: 200 OK``, the headers, a blank line. A leaf.

The same bytes start an SCGI response and a FastCGI STDOUT stream, so the SCGI core
(:func:`trioscgi.scgi.response_head`) and both wires share this one writer; the uwsgi core,
which writes an HTTP status line instead, shares the reason phrases. It imports nothing of
trioscgi, so a core and a wire can both import it (docs/architecture.md).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

__all__ = ["cgi_head", "reason"]

_REASONS: Final = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
# nginx before 1.25.3 writes a malformed status line for a Status: with no
# reason phrase, so unknown codes get their class's name.
_CLASS_REASONS: Final = {
    1: b"Informational",
    2: b"Success",
    3: b"Redirection",
    4: b"Client Error",
    5: b"Server Error",
}


def reason(status: int) -> bytes:
    """The reason phrase for ``status``; an unknown code gets its class's name."""
    phrase = _REASONS.get(status)
    if phrase is None:
        phrase = _CLASS_REASONS.get(status // 100, b"Unknown")
    return phrase


_STATUS_LINES: Final = {
    code: b"Status: %d %s\r\n" % (code, reason(code)) for code in range(100, 600)
}


def cgi_head(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The CGI header block for ``status`` and ``headers`` (already checked by the caller)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"Status: %d %s\r\n" % (status, reason(status))
    if not headers:
        return line + b"\r\n"
    return line + b"".join([b"%s: %s\r\n" % pair for pair in headers]) + b"\r\n"
