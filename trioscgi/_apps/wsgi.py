"""Run a WSGI (PEP 3333) application in trio worker threads behind an ASGI-shaped face.

The server only speaks ASGI; :func:`wrap_wsgi` turns a WSGI app into an ASGI app
whose requests run in a pool of long-lived worker threads, at most
``Config.wsgi_threads`` at once. This module is the adapter (start_response, the
response iterable, the hand-offs between the thread and trio); the environ and its
streams are in :mod:`trioscgi._apps.wsgi_environ`, the threads in :mod:`trioscgi._apps.wsgi_pool`.
"""

from __future__ import annotations

import inspect
import os
import stat
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Literal

import trio

from .._config import Config
from .._types import ASGIApp, Message, Receive, Scope, Send
from .wsgi_environ import ErrorStream, FileWrapper, InputStream, build_environ
from .wsgi_pool import ThreadPool

__all__ = ["FileWrapper", "detect_interface", "wrap_wsgi"]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# --------------------------------------------------------------------------------------
# Interface detection


def detect_interface(app: Any, declared: str) -> Literal["asgi", "wsgi"]:
    """Decide whether ``app`` is an ASGI 3 or a WSGI application.

    The rule (documented in docs/wsgi.md), never a guess:

    - ``declared`` ``"asgi"`` or ``"wsgi"`` is the answer.
    - ``"auto"``: a coroutine function (or an object whose ``__call__`` is one) taking
      exactly 3 positional arguments is ASGI; a plain (not async) function or callable
      object taking exactly 2 positional arguments ``(environ, start_response)`` is WSGI
      (Flask's app object and Django's ``WSGIHandler`` are such objects). Anything else is
      ambiguous.

    Args:
        app: the loaded application object.
        declared: ``Config.interface``: ``"auto"``, ``"asgi"`` or ``"wsgi"``.

    Returns:
        ``"asgi"`` or ``"wsgi"``.

    Raises:
        ValueError: ``declared`` is unknown, or ``"auto"`` can't tell; the message asks for
            ``--interface asgi`` or ``--interface wsgi``.
    """
    if declared in ("asgi", "wsgi"):
        return declared  # type: ignore[return-value]
    if declared != "auto":
        raise ValueError(f"interface must be 'auto', 'asgi' or 'wsgi', not {declared!r}")
    if not callable(app):
        raise ValueError(f"the application {app!r} is not callable")
    what = _describe(app)
    if inspect.isclass(app):
        # An ASGI 2 "double callable" class, or a class whose instances are the app:
        # calling it would build an object rather than serve a request.
        raise ValueError(
            f"cannot tell whether {what} is an ASGI or a WSGI application: it is a class. "
            "Point trioscgi at an instance, or pass --interface asgi or --interface wsgi."
        )
    is_async = _is_coroutine_callable(app)
    count = _positional_count(app)
    if is_async and count == 3:
        return "asgi"
    if not is_async and count == 2:
        return "wsgi"
    shape = "an async callable" if is_async else "a plain (not async) callable"
    takes = "a variable number of" if count is None else str(count)
    raise ValueError(
        f"cannot tell whether {what} is an ASGI or a WSGI application: it is {shape} taking "
        f"{takes} positional arguments (ASGI: async (scope, receive, send); WSGI: "
        "(environ, start_response)). Pass --interface asgi or --interface wsgi "
        "(config key: interface)."
    )


def _describe(app: Any) -> str:
    name = getattr(app, "__qualname__", None) or type(app).__qualname__
    module = getattr(app, "__module__", None) or type(app).__module__
    return f"{module}.{name}"


def _is_coroutine_callable(app: Any) -> bool:
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)  # noqa: B004 - the attribute itself is inspected
    return call is not None and inspect.iscoroutinefunction(call)


def _positional_count(app: Any) -> int | None:
    """How many positional arguments ``app`` requires; ``None`` if it takes ``*args``."""
    try:
        sig = inspect.signature(app)
    except (TypeError, ValueError):
        return None
    required = 0
    for param in sig.parameters.values():
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            return None
        if (
            param.kind
            in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            and param.default is inspect.Parameter.empty
        ):
            required += 1
    return required


# --------------------------------------------------------------------------------------
# One request


class _FileReply:
    __slots__ = ("count", "offset", "wrapper")

    def __init__(self, wrapper: FileWrapper, offset: int, count: int) -> None:
        self.wrapper = wrapper
        self.offset = offset
        self.count = count


def _parse_status(status: Any) -> int:
    # PEP 3333: "a status code and a reason phrase, in that order and separated by a
    # single space, with no surrounding whitespace or other characters".
    if not isinstance(status, str):
        raise TypeError(f"the WSGI status must be a str like '200 OK', not {status!r}")
    code = status[:3]
    if not (code.isdigit() and code.isascii()) or (len(status) > 3 and status[3] != " "):
        raise ValueError(f"invalid WSGI status {status!r}: expected a string like '200 OK'")
    value = int(code)
    if value < 100:
        raise ValueError(f"invalid WSGI status {status!r}: the code must be 100-999")
    return value


def _encode_headers(headers: Any) -> tuple[list[tuple[bytes, bytes]], int | None]:
    if not isinstance(headers, list):
        raise TypeError(f"WSGI response headers must be a list of (name, value), not {headers!r}")
    out = []
    length = None
    for item in headers:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"WSGI response header {item!r} is not a (name, value) tuple")
        name, value = item
        if not (isinstance(name, str) and isinstance(value, str)):
            raise TypeError(f"WSGI response header {item!r}: name and value must be str")
        try:
            raw_name = name.encode("latin-1")
            raw_value = value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"WSGI response header {item!r} is not latin-1") from None
        if raw_name.lower() == b"content-length" and raw_value.strip().isdigit():
            length = int(raw_value)
        out.append((raw_name, raw_value))
    return out, length


def _as_bytes(data: Any) -> bytes:
    # PEP 3333: the body is bytestrings; bytes(5) would silently send five NULs.
    if type(data) is bytes:
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"a WSGI response body block must be bytes, not {type(data).__name__}")


class _Request:
    """The state of one WSGI request, shared by the worker thread and the trio task.

    The thread runs the app; it calls back into trio (``trio.from_thread.run``) only to
    read the body and to send what can't wait. Never both sides at once: the trio task is
    blocked in :meth:`ThreadPool.run` while the thread runs.
    """

    def __init__(self, app: WSGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        self.app = app
        self.scope = scope
        self.receive = receive
        self.send = send
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.remaining: int | None = None  # Content-Length still to send, if declared
        self.started = False  # http.response.start sent
        self.client_gone = False
        self.errors = ErrorStream()

    # --- start_response and write(), called by the app in the thread ------------------

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.started:
                    # PEP 3333: "if exc_info is provided, and the HTTP headers have already
                    # been sent, start_response must raise an error, and should re-raise
                    # using the exc_info tuple".
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.status is not None:
            raise RuntimeError("start_response called a second time without exc_info")
        code = _parse_status(status)
        self.headers, self.remaining = _encode_headers(headers)
        self.status = code
        return self.write

    def write(self, data: bytes) -> None:
        if self.status is None:
            raise RuntimeError("write() called before start_response()")
        data = self._clip(_as_bytes(data))
        if data or not self.started:
            trio.from_thread.run(self._send_body, data, True)

    def _clip(self, data: bytes) -> bytes:
        """Never send more than the declared Content-Length (the front-end would choke)."""
        if self.remaining is not None:
            if len(data) > self.remaining:
                data = data[: self.remaining]
            self.remaining -= len(data)
        return data

    # --- trio side --------------------------------------------------------------------

    def _start_message(self) -> Message:
        return {"type": "http.response.start", "status": self.status, "headers": self.headers}

    async def _send_body(self, data: bytes, more_body: bool) -> None:
        try:
            if not self.started:
                self.started = True
                await self.send(self._start_message())
            await self.send({"type": "http.response.body", "body": data, "more_body": more_body})
        except OSError:
            self.client_gone = True
            raise

    # --- the thread -------------------------------------------------------------------

    def run(self, environ: dict[str, Any], zerocopy: bool) -> bytes | _FileReply:
        """Call the app and iterate its response (in a worker thread).

        Returns:
            The last piece of the body, for the trio side to send with
            ``more_body=False`` (plus the start if nothing was sent yet), or a
            :class:`_FileReply` for the trio side to send with zerocopysend.
        """
        result = self.app(environ, self.start_response)
        handed_over = False
        try:
            if zerocopy and type(result) is FileWrapper and not self.started:
                reply = self._file_reply(result)
                if reply is not None:
                    handed_over = True
                    return reply
            # The index of a list's last item (-1: unknown length): it ends the response.
            last = len(result) - 1 if type(result) in (list, tuple) else -1  # type: ignore[arg-type]
            for index, item in enumerate(result):
                if self.status is None:
                    raise RuntimeError("the WSGI application did not call start_response()")
                if not item:
                    continue
                chunk = self._clip(_as_bytes(item))
                if self.remaining == 0 or index == last:
                    # The declared length is complete, or this is the last item of a
                    # list: nothing comes after this chunk, so it goes out with the end of
                    # the response (one message, no extra trip to the trio side).
                    return chunk
                if chunk:
                    trio.from_thread.run(self._send_body, chunk, True)
            if self.status is None:
                raise RuntimeError("the WSGI application did not call start_response()")
            return b""
        finally:
            if not handed_over:
                # PEP 3333: close() "upon completion of the current request, whether the
                # request was completed normally, or terminated early due to an
                # application error during iteration or an early disconnect".
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            self.errors.flush()

    def _file_reply(self, wrapper: FileWrapper) -> _FileReply | None:
        filelike = wrapper.filelike
        if self.status is None:
            raise RuntimeError("the WSGI application did not call start_response()")
        try:
            fd = filelike.fileno()
            st = os.fstat(fd)
        except (AttributeError, OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        # PEP 3333: "transmission should begin at the current position within the file".
        tell = getattr(filelike, "tell", None)
        offset = tell() if tell is not None else 0
        count = max(st.st_size - offset, 0)
        if self.remaining is not None:
            count = min(count, self.remaining)
        return _FileReply(wrapper, offset, count)


# --------------------------------------------------------------------------------------
# The ASGI face


class _WSGIAdapter:
    def __init__(self, app: WSGIApp, config: Config) -> None:
        if config.wsgi_threads < 1:
            raise ValueError("wsgi_threads must be at least 1")
        self.app = app
        self.limiter = trio.CapacityLimiter(config.wsgi_threads)
        self.pool = ThreadPool(self.limiter)
        self.multiprocess = config.workers > 1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        else:
            raise RuntimeError(f"a WSGI application cannot serve {kind!r} connections")

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = _Request(self.app, scope, receive, send)
        extensions = scope.get("extensions") or {}
        environ = build_environ(scope, None, request.errors, self.multiprocess)
        # No body (a GET): the input is at its end without a trip to the trio side. No
        # CONTENT_LENGTH says nothing: over FastCGI the body is the STDIN stream (nginx
        # with `fastcgi_request_buffering off`, Apache mod_proxy_fcgi: chunked uploads).
        at_eof = environ.get("CONTENT_LENGTH") == "0"
        environ["wsgi.input"] = InputStream(receive, at_eof=at_eof)
        try:
            # A thread can't be interrupted: when the request is cancelled
            # (graceful_timeout passed, or a second signal) the task stops waiting for
            # it, so a hung view can't hold the shutdown.
            outcome = await self.pool.run(
                request.run, environ, "http.response.zerocopysend" in extensions
            )
        except OSError:
            if request.client_gone:
                # The client went away while the app streamed: the iterable is closed and
                # the thread is free; there is nobody to answer.
                return
            raise
        if isinstance(outcome, _FileReply):
            await self._send_file(request, outcome)
            return
        try:
            await request._send_body(outcome, False)
        except OSError:
            return

    async def _send_file(self, request: _Request, reply: _FileReply) -> None:
        try:
            if not request.started:
                request.started = True
                await request.send(request._start_message())
            await request.send(
                {
                    "type": "http.response.zerocopysend",
                    "file": reply.wrapper.filelike,
                    "offset": reply.offset,
                    "count": reply.count,
                    "more_body": False,
                }
            )
        except OSError:
            return
        finally:
            close = getattr(reply.wrapper, "close", None)
            if close is not None:
                close()


async def _lifespan(receive: Receive, send: Send) -> None:
    # WSGI has no lifespan: answer both events so that lifespan "on" works too.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def wrap_wsgi(wsgi_app: Any, config: Config) -> ASGIApp:
    """Make an ASGI application of the WSGI application ``wsgi_app``.

    Each request runs ``wsgi_app`` in a worker thread of a pool of long-lived threads;
    at most ``config.wsgi_threads`` run at once (one :class:`trio.CapacityLimiter` per
    wrapped app). The request body is pulled from the connection as the app reads
    ``wsgi.input``; response blocks are sent as the app yields them; a
    ``wsgi.file_wrapper`` response is sent with sendfile when the server advertises
    ``http.response.zerocopysend``.

    Args:
        wsgi_app: a PEP 3333 application ``(environ, start_response) -> iterable``.
        config: the server's configuration (``wsgi_threads``, ``workers``).

    Returns:
        An ASGI 3 application (``http`` and ``lifespan`` scopes).
    """
    return _WSGIAdapter(wsgi_app, config)
