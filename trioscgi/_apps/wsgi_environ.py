"""The WSGI environ of one request, and its streams: ``wsgi.input``, ``wsgi.errors``.

Also ``wsgi.file_wrapper``. Nothing here runs the app or touches a thread: the
adapter (:mod:`trioscgi._apps.wsgi`) builds these for each request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

import trio

from .._types import Receive, Scope

__all__ = ["ErrorStream", "FileWrapper", "InputStream", "build_environ"]

_errors_logger = logging.getLogger("trioscgi.wsgi")

# CGI variables that are not headers and that PEP 3333 / CGI (RFC 3875) name; the
# environ keeps every other SCGI variable as the front-end sent it.
# nginx passes HTTP_CONTENT_LENGTH next to CONTENT_LENGTH, and HTTP_TRANSFER_ENCODING
# ("chunked") although it de-chunked the body: a WSGI framework seeing "chunked" (werkzeug)
# ignores CONTENT_LENGTH, so both are dropped. The body ends where wsgi.input says.
_DROP = frozenset({"HTTP_CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING"})

# Header names that repeat (nginx < 1.23 sends a header twice as two variables) are joined
# the way HTTP joins them: "; " for Cookie (RFC 6265), ", " for every other header.
_COOKIE = "HTTP_COOKIE"


class _ClientDisconnected(OSError):
    """The client went away while the application was reading the request body."""


# --------------------------------------------------------------------------------------
# wsgi.file_wrapper


class FileWrapper:
    """``wsgi.file_wrapper``: a file to send, with sendfile when the server can.

    When an application returns one as its response iterable, trioscgi sends the file
    from its current position with the ``http.response.zerocopysend`` extension (the
    kernel copies it); otherwise, or if the object has no usable file descriptor, it is
    iterated in blocks of ``blksize`` like any iterable.
    """

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            data = read(self.blksize)
            if not data:
                return
            yield data


# --------------------------------------------------------------------------------------
# wsgi.errors


class ErrorStream:
    """``wsgi.errors``: text written by the app becomes one log record per line."""

    def __init__(self) -> None:
        self._partial = ""

    def write(self, s: str) -> int:
        if "\n" not in s:
            self._partial += s
            return len(s)
        text = self._partial + s
        *lines, self._partial = text.split("\n")
        for line in lines:
            _errors_logger.warning("%s", line)
        return len(s)

    def writelines(self, seq: Iterable[str]) -> None:
        for s in seq:
            self.write(s)

    def flush(self) -> None:
        if self._partial:
            _errors_logger.warning("%s", self._partial)
            self._partial = ""


# --------------------------------------------------------------------------------------
# wsgi.input


class InputStream:
    """``wsgi.input``: the request body, pulled from the connection only as the app reads.

    Every refill is one ``receive()`` run on the trio side (``trio.from_thread.run``), so
    a slow reader leaves the body in the socket: the front-end is pushed back, nothing
    piles up in memory. Reads return ``b""`` at the end of the body (CONTENT_LENGTH).
    """

    def __init__(self, receive: Receive, at_eof: bool) -> None:
        self._receive = receive
        self._buf = bytearray()
        self._eof = at_eof

    def _fill(self) -> bytes:
        """Receive the next chunk of the body (``b""`` once at the end)."""
        if self._eof:
            return b""
        message = trio.from_thread.run(self._receive)
        kind = message["type"]
        if kind == "http.request":
            if not message.get("more_body", False):
                self._eof = True
            return bytes(message.get("body", b""))
        if kind == "http.disconnect":
            self._eof = True
            raise _ClientDisconnected("the client went away before the request body was read")
        raise RuntimeError(f"unexpected message {kind!r} while reading the request body")

    def read(self, size: int | None = -1) -> bytes:
        buf = self._buf
        if size is None or size < 0:
            while not self._eof:
                buf += self._fill()
            data = bytes(buf)
            buf.clear()
            return data
        if not buf:
            # The common case (framework reading in chunks): hand over what arrived,
            # without copying it into the buffer, when it fits.
            while not buf and not self._eof:
                chunk = self._fill()
                if len(chunk) == size or (self._eof and len(chunk) < size):
                    return chunk
                buf += chunk
        while len(buf) < size and not self._eof:
            buf += self._fill()
        data = bytes(buf[:size])
        del buf[:size]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        buf = self._buf
        limit = None if size is None or size < 0 else size
        searched = 0
        while True:
            nl = buf.find(b"\n", searched)
            if nl >= 0:
                end = nl + 1
                break
            if limit is not None and len(buf) >= limit:
                end = limit
                break
            if self._eof:
                end = len(buf)
                break
            searched = len(buf)
            buf += self._fill()
        if limit is not None:
            end = min(end, limit)
        data = bytes(buf[:end])
        del buf[:end]
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


# --------------------------------------------------------------------------------------
# The environ


def build_environ(scope: Scope, wsgi_input: Any, errors: Any, multiprocess: bool) -> dict[str, Any]:
    """Build the PEP 3333 environ of one request.

    Every SCGI or uwsgi variable (``scope["extensions"]["scgi"|"uwsgi"]["environ"]``) or
    FastCGI param (``scope["extensions"]["fastcgi"]["params"]``) is kept, decoded as latin-1;
    ``SCRIPT_NAME``/``PATH_INFO``/``QUERY_STRING`` and ``REQUEST_METHOD`` come from the scope
    so that they agree with what an ASGI app would see (the path rules of
    :func:`trioscgi._asgi.scope.request_target`).
    """
    environ: dict[str, Any] = {}
    extensions = scope.get("extensions", {})
    scgi = extensions.get("scgi") or extensions.get("uwsgi")
    raw_env: list[tuple[bytes, bytes]] | None
    if scgi:
        raw_env = scgi.get("environ")
    else:
        fastcgi = extensions.get("fastcgi")
        raw_env = fastcgi.get("params") if fastcgi else None
    if raw_env is not None:
        for raw_name, raw_value in raw_env:
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1")
            if name in environ and name.startswith("HTTP_"):
                sep = "; " if name == _COOKIE else ", "
                environ[name] = environ[name] + sep + value
            else:
                environ[name] = value
        for name in _DROP:
            environ.pop(name, None)
        # nginx's stock params send the Content-Type header twice: as CONTENT_TYPE and as
        # HTTP_CONTENT_TYPE. PEP 3333 gives the header only the CGI name (wsgiref.validate
        # refuses the other); a front-end that sent only the HTTP_ one (nginx without
        # scgi_params) gets it under the CGI name.
        header_type = environ.pop("HTTP_CONTENT_TYPE", None)
        if header_type is not None and not environ.get("CONTENT_TYPE"):
            environ["CONTENT_TYPE"] = header_type
    else:
        # A scope that did not come from SCGI (an embedding program, a test): the
        # headers are all there is.
        for raw_name, raw_value in scope.get("headers", ()):
            name = raw_name.decode("latin-1").upper().replace("-", "_")
            value = raw_value.decode("latin-1")
            if name in {"CONTENT_TYPE", "CONTENT_LENGTH"}:
                environ[name] = value
                continue
            name = "HTTP_" + name
            if name in environ:
                sep = "; " if name == _COOKIE else ", "
                environ[name] = environ[name] + sep + value
            else:
                environ[name] = value

    root_path: str = scope.get("root_path", "")
    path: str = scope["path"]
    full = path.encode("utf-8", "surrogateescape")
    if "\ufffd" in path:
        # The scope's path replaced undecodable bytes with U+FFFD; WSGI wants the bytes.
        if "PATH_INFO" in environ and "uwsgi" not in extensions:
            # (uwsgi's front-ends may leave the prefix in PATH_INFO: raw_path, below.)
            full = (environ.get("SCRIPT_NAME", "") + environ["PATH_INFO"]).encode("latin-1")
        else:
            full = unquote_to_bytes(scope.get("raw_path") or b"")
    root = root_path.encode("utf-8", "surrogateescape")
    if root and full.startswith(root):
        environ["SCRIPT_NAME"] = root.decode("latin-1")
        environ["PATH_INFO"] = full[len(root) :].decode("latin-1")
    else:
        environ["SCRIPT_NAME"] = ""
        environ["PATH_INFO"] = full.decode("latin-1")
    environ["QUERY_STRING"] = scope.get("query_string", b"").decode("latin-1")
    environ["REQUEST_METHOD"] = scope["method"]
    if not environ.get("CONTENT_TYPE"):
        environ.pop("CONTENT_TYPE", None)  # nginx sends "" on a GET: absent, per CGI
    if not environ.get("CONTENT_LENGTH"):
        # nginx's fastcgi_params: "" on a GET and on an unbuffered chunked upload. Absent,
        # as the scope has it: the body is what wsgi.input gives until b"".
        environ.pop("CONTENT_LENGTH", None)
    environ.setdefault("SERVER_PROTOCOL", "HTTP/" + scope.get("http_version", "1.1"))
    if "SERVER_NAME" not in environ or "SERVER_PORT" not in environ:
        server = scope.get("server")
        host = environ.get("HTTP_HOST", "")
        if server and server[1] is not None:
            environ.setdefault("SERVER_NAME", server[0])
            environ.setdefault("SERVER_PORT", str(server[1]))
        else:
            name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
            environ.setdefault("SERVER_NAME", name or "localhost")
            environ.setdefault(
                "SERVER_PORT", port or ("443" if scope["scheme"] == "https" else "80")
            )
    client = scope.get("client")
    if client and "REMOTE_ADDR" not in environ:
        environ["REMOTE_ADDR"] = client[0]
        environ["REMOTE_PORT"] = str(client[1])
    environ["wsgi.version"] = (1, 0)
    environ["wsgi.url_scheme"] = scope.get("scheme", "http")
    environ["wsgi.input"] = wsgi_input
    # Reads return b"" at the end of the body (werkzeug and mod_wsgi use this key to
    # read a body that has no CONTENT_LENGTH).
    environ["wsgi.input_terminated"] = True
    environ["wsgi.errors"] = errors
    environ["wsgi.multithread"] = True
    environ["wsgi.multiprocess"] = multiprocess
    environ["wsgi.run_once"] = False
    environ["wsgi.file_wrapper"] = FileWrapper
    return environ
