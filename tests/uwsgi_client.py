"""uwsgi request packets for tests, written from the format alone (not with trioscgi's core).

A packet: ``modifier1`` (u8), the vars block's size (u16 little-endian), ``modifier2``
(u8); then the vars, each a u16 LE name size, the name, a u16 LE value size, the value;
then the body. The answer is an HTTP/1.1 status line and headers
(``scgi_client.parse_response`` reads both kinds).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

Pairs = Iterable[tuple[str | bytes, str | bytes]]


def _b(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode("latin-1")


def encode_vars(pairs: Pairs) -> bytes:
    """The vars block of ``pairs``, in order."""
    out = []
    for name, value in pairs:
        n, v = _b(name), _b(value)
        out.append(struct.pack("<H", len(n)) + n + struct.pack("<H", len(v)) + v)
    return b"".join(out)


def encode_packet(pairs: Pairs, body: bytes = b"", *, modifier1: int = 0) -> bytes:
    """A whole request: header, vars, body (CONTENT_LENGTH is the caller's to set)."""
    block = encode_vars(pairs)
    return struct.pack("<BHB", modifier1, len(block), 0) + block + body


def stock_vars(
    method: str = "GET",
    uri: str = "/",
    *,
    content_length: str = "",
    content_type: str = "",
    headers: Iterable[tuple[str, str]] = (("HTTP_HOST", "localhost"),),
) -> list[tuple[str, str]]:
    """What nginx 1.22's stock ``uwsgi_params`` sends, in its order
    (tests/data/captures/nginx-stock-*.uwsgi): PATH_INFO = $document_uri, the decoded
    path; no SCRIPT_NAME; CONTENT_LENGTH and CONTENT_TYPE empty without a body."""
    from urllib.parse import unquote

    path, _, query = uri.partition("?")
    return [
        ("QUERY_STRING", query),
        ("REQUEST_METHOD", method),
        ("CONTENT_TYPE", content_type),
        ("CONTENT_LENGTH", content_length),
        ("REQUEST_URI", uri),
        ("PATH_INFO", unquote(path, "latin-1")),
        ("DOCUMENT_ROOT", "/srv/html"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "35896"),
        ("SERVER_PORT", "80"),
        ("SERVER_NAME", "localhost"),
        *headers,
    ]
