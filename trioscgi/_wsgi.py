"""Run a WSGI (PEP 3333) application in trio worker threads behind an ASGI-shaped face.

The server only speaks ASGI; :func:`wrap_wsgi` turns a WSGI app into an ASGI app
whose requests run in a pool of long-lived worker threads, at most
``Config.wsgi_threads`` at once.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Literal
from urllib.parse import unquote_to_bytes

import trio

from ._config import Config
from ._types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["FileWrapper", "detect_interface", "wrap_wsgi"]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

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


class _ErrorStream:
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


class _InputStream:
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


def _latin1(text: str) -> str:
    """PEP 3333 "bytes as unicode": the UTF-8 bytes of ``text``, one char per byte."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


def build_environ(scope: Scope, wsgi_input: Any, errors: Any, multiprocess: bool) -> dict[str, Any]:
    """Build the PEP 3333 environ of one request.

    Every SCGI variable (``scope["extensions"]["scgi"]["environ"]``) or FastCGI param
    (``scope["extensions"]["fastcgi"]["params"]``) is kept, decoded as latin-1;
    ``SCRIPT_NAME``/``PATH_INFO``/``QUERY_STRING`` and ``REQUEST_METHOD`` come from the scope
    so that they agree with what an ASGI app would see (the path rules of
    :func:`trioscgi._scope.request_target`).
    """
    environ: dict[str, Any] = {}
    extensions = scope.get("extensions", {})
    scgi = extensions.get("scgi")
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
        if "PATH_INFO" in environ:
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
    blocked in :meth:`_ThreadPool.run` while the thread runs.
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
        self.errors = _ErrorStream()

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
# The worker threads

# A worker thread with nothing to do for this long ends (as trio's own thread cache does).
_IDLE_TIMEOUT = 10.0


class _Job:
    """One call handed to a worker thread; ``task`` is ``None`` once nobody waits for it.

    It also stands for the call in the limiter (``acquire_on_behalf_of``).
    """

    __slots__ = ("args", "context", "error", "fn", "result", "task")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], task: trio.lowlevel.Task
    ) -> None:
        self.fn = fn
        self.args = args
        self.context: contextvars.Context | None = contextvars.copy_context()
        self.task: trio.lowlevel.Task | None = task
        self.result: Any = None
        self.error: BaseException | None = None


class _PoolRun:
    """The threads of one ``trio.run``: they belong to its token and die with it."""

    def __init__(self, token: trio.lowlevel.TrioToken, size: int) -> None:
        self.token = token
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.lock = threading.Lock()  # guards idle, done and wakeup_pending
        self.idle = 0  # alive, between jobs and not promised to a queued one
        self.done: list[_Job] = []  # finished, not yet handed back to their tasks
        self.wakeup_pending = False  # a _deliver is scheduled and will see ``done``
        # Only for to_thread.run_sync's bookkeeping: the pool never has more threads.
        self.thread_limiter = trio.CapacityLimiter(size)


class _ThreadPool:
    """Long-lived worker threads fed by a queue, one per token of ``limiter`` at most.

    ``trio.to_thread.run_sync`` per request costs a thread wake, two OS thread renames
    and a write to trio's wakeup socket each way, and on a VM whose threads run on
    different CPUs the wakes and the GIL hand-offs around them are most of a small
    request's cost. Here:

    - a job goes to a thread that is already running when one is free: a worker that
      finishes a job takes the next queued one without sleeping; each job is promised
      a thread (an idle one, or a new one up to ``size``), so a view that blocks never
      holds up another request;
    - results are handed back in batches: the first thread to finish asks the trio loop
      (one ``run_sync_soon``, one wakeup-socket write) to reschedule every task whose
      job is done by the time it runs, and the threads finishing meanwhile write
      nothing.

    The threads are started by ``trio.to_thread.run_sync`` (from system tasks), so
    ``trio.from_thread.run`` works in the app as it does in any trio worker thread.
    """

    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self.limiter = limiter
        self._run: _PoolRun | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in a worker thread, in a copy of the task's context.

        Each call holds a token of the limiter from before the job is queued until
        ``fn`` returns, even if the caller is cancelled meanwhile: a cancelled caller
        stops waiting at once (a thread can't be interrupted) but its thread stays busy,
        as with ``trio.to_thread.run_sync(abandon_on_cancel=True)``.
        """
        token = trio.lowlevel.current_trio_token()
        state = self._run
        if state is None or state.token is not token:
            state = self._run = _PoolRun(token, int(self.limiter.total_tokens))
        job = _Job(fn, args, trio.lowlevel.current_task())
        await self.limiter.acquire_on_behalf_of(job)
        with state.lock:
            if state.idle:
                state.idle -= 1
                spawn = False
            else:
                spawn = True
            state.jobs.put(job)
        if spawn:
            trio.lowlevel.spawn_system_task(self._thread, state, name="trioscgi WSGI worker")

        def abort(_: Any) -> trio.lowlevel.Abort:
            job.task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        error = job.error
        if error is not None:
            try:
                raise error
            finally:
                del error
                job.error = None
        return job.result

    async def _thread(self, state: _PoolRun) -> None:
        try:
            await trio.to_thread.run_sync(
                self._work,
                state,
                abandon_on_cancel=True,
                limiter=state.thread_limiter,
                thread_name="trioscgi WSGI worker",
            )
        except BaseException:
            # The run is ending (system tasks are cancelled): the thread ends after
            # its current job, if it has one.
            state.jobs.put(None)
            raise

    def _work(self, state: _PoolRun) -> None:
        jobs = state.jobs
        lock = state.lock
        while True:
            try:
                job = jobs.get(timeout=_IDLE_TIMEOUT)
            except queue.Empty:
                with lock:
                    if not jobs.empty():
                        continue  # a job was promised to an idle thread: maybe this one
                    state.idle -= 1
                return
            if job is None:
                return
            context = job.context
            job.context = None
            if job.task is not None and context is not None:  # else cancelled while queued
                try:
                    job.result = context.run(job.fn, *job.args)
                except BaseException as exc:  # handed to the waiting task
                    job.error = exc
            del context
            with lock:
                state.idle += 1  # before the hand-back: the next job needs no new thread
                state.done.append(job)
                wake = not state.wakeup_pending
                state.wakeup_pending = True
            del job
            if wake:
                try:
                    state.token.run_sync_soon(self._deliver, state)
                except trio.RunFinishedError:
                    pass

    def _deliver(self, state: _PoolRun) -> None:
        with state.lock:
            done = state.done
            state.done = []
            state.wakeup_pending = False
        for job in done:
            self.limiter.release_on_behalf_of(job)
            if job.task is not None:
                trio.lowlevel.reschedule(job.task)


# --------------------------------------------------------------------------------------
# The ASGI face


class _WSGIAdapter:
    def __init__(self, app: WSGIApp, config: Config) -> None:
        if config.wsgi_threads < 1:
            raise ValueError("wsgi_threads must be at least 1")
        self.app = app
        self.limiter = trio.CapacityLimiter(config.wsgi_threads)
        self.pool = _ThreadPool(self.limiter)
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
        environ["wsgi.input"] = _InputStream(receive, at_eof=at_eof)
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
