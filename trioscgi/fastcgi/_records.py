"""FastCGI 1.0 record layout: the constants, and the encoders the core shares.

Everything here is the spec's (Open Market, FastCGI Specification 1.0,
sections 3 and 8), named without the ``FCGI_`` prefix the module already
gives: ``fastcgi.STDIN`` is the spec's ``FCGI_STDIN``.
"""

from __future__ import annotations

from struct import Struct
from typing import Final

__all__ = [
    "ABORT_REQUEST",
    "AUTHORIZER",
    "BEGIN_REQUEST",
    "CANT_MPX_CONN",
    "DATA",
    "END_REQUEST",
    "FCGI_LISTENSOCK_FILENO",
    "FILTER",
    "GET_VALUES",
    "GET_VALUES_RESULT",
    "HEADER_LEN",
    "KEEP_CONN",
    "MAX_CONTENT_LENGTH",
    "OVERLOADED",
    "PARAMS",
    "REQUEST_COMPLETE",
    "RESPONDER",
    "STDERR",
    "STDIN",
    "STDOUT",
    "UNKNOWN_ROLE",
    "UNKNOWN_TYPE",
    "VERSION_1",
]

# The listening socket a web server that spawns the application (mod_fcgid,
# spawn-fcgi) hands it: file descriptor 0.
FCGI_LISTENSOCK_FILENO: Final = 0

VERSION_1: Final = 1
HEADER_LEN: Final = 8
MAX_CONTENT_LENGTH: Final = 65535  # contentLength is two bytes

# Record types. 1, 2, 4, 5, 8 and 9 go from the web server to the
# application; 3, 6, 7, 10 and 11 the other way.
BEGIN_REQUEST: Final = 1
ABORT_REQUEST: Final = 2
END_REQUEST: Final = 3
PARAMS: Final = 4
STDIN: Final = 5
STDOUT: Final = 6
STDERR: Final = 7
DATA: Final = 8
GET_VALUES: Final = 9
GET_VALUES_RESULT: Final = 10
UNKNOWN_TYPE: Final = 11

# BEGIN_REQUEST roles, and its one flag.
RESPONDER: Final = 1
AUTHORIZER: Final = 2
FILTER: Final = 3
KEEP_CONN: Final = 1

# END_REQUEST protocolStatus values.
REQUEST_COMPLETE: Final = 0
CANT_MPX_CONN: Final = 1
OVERLOADED: Final = 2
UNKNOWN_ROLE: Final = 3

# Record types only an application sends: a web server that sends one is
# confused or is not a web server.
APPLICATION_ONLY: Final = frozenset({END_REQUEST, STDOUT, STDERR, GET_VALUES_RESULT, UNKNOWN_TYPE})

# version and type as one big-endian unsigned short, requestId,
# contentLength, paddingLength, reserved (skipped).
HEADER: Final = Struct("!HHHBx")
# The header alone, with the version byte and the type apart.
HEADER_FIELDS: Final = Struct("!BBHHBx")
BEGIN_BODY: Final = Struct("!HB5x")  # role, flags, reserved
END_BODY: Final = Struct("!LB3x")  # appStatus, protocolStatus, reserved
LENGTH4: Final = Struct("!L")

# Padding for a content length n: PADDING[-n & 7]. Records are padded to a
# multiple of 8 bytes, as the spec recommends ("records be placed on
# boundaries that are multiples of eight bytes").
PADDING: Final = tuple(bytes(n) for n in range(8))


def record(rtype: int, request_id: int, content: bytes = b"") -> bytes:
    """One record of ``rtype`` for ``request_id``, padded to a multiple of 8.

    ``content`` must be at most :data:`MAX_CONTENT_LENGTH` bytes.
    """
    n = len(content)
    pad = -n & 7
    return b"".join(
        (HEADER_FIELDS.pack(VERSION_1, rtype, request_id, n, pad), content, PADDING[pad])
    )


def end_request_record(request_id: int, app_status: int, protocol_status: int) -> bytes:
    """An END_REQUEST record (16 bytes: the header and its 8-byte body)."""
    return HEADER_FIELDS.pack(VERSION_1, END_REQUEST, request_id, 8, 0) + END_BODY.pack(
        app_status, protocol_status
    )


def encode_pairs(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """Name-value pairs in the spec's encoding (section 3.4).

    A length under 128 takes one byte; a longer one four, the top bit set.
    """
    out = bytearray()
    for name, value in pairs:
        for length in (len(name), len(value)):
            if length < 128:
                out.append(length)
            else:
                out += LENGTH4.pack(length | 0x80000000)
        out += name
        out += value
    return bytes(out)
