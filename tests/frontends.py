"""Test harness: real front-ends on loopback, for SCGI, FastCGI and uwsgi.

SCGI: nginx ``scgi_pass``, Apache mod_proxy_scgi, lighttpd mod_scgi. FastCGI: nginx
``fastcgi_pass``, Apache mod_proxy_fcgi and mod_fcgid, lighttpd mod_fastcgi, HAProxy
``fcgi-app``, and ``cgi-fcgi`` (libfcgi) as a plain client. uwsgi: nginx ``uwsgi_pass``
and Apache mod_proxy_uwsgi.

Each front-end runs in the foreground, as the current user, from its own temp
dir with a free port, and is stopped (and waited for) when its context exits.
Also: a tiny HTTP client, and a blocking SCGI (or uwsgi) capture backend in a thread
(the FastCGI one is in tests/fcgi_capture.py).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Bounded waits: a front-end that is not listening after this long is broken.
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
HTTP_TIMEOUT = 15.0

FRONTEND_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
NGINX_SCGI_PARAMS_CANDIDATES = ("/etc/nginx/scgi_params", "/usr/local/nginx/conf/scgi_params")
NGINX_FASTCGI_PARAMS_CANDIDATES = (
    "/etc/nginx/fastcgi_params",
    "/usr/local/nginx/conf/fastcgi_params",
)
NGINX_UWSGI_PARAMS_CANDIDATES = ("/etc/nginx/uwsgi_params", "/usr/local/nginx/conf/uwsgi_params")
APACHE_MODULE_DIRS = (
    "/usr/lib/apache2/modules",
    "/usr/lib64/httpd/modules",
    "/usr/libexec/apache2",
)


# --------------------------------------------------------------------------- helpers


def missing(what: str) -> None:
    """A front-end (or its part) is not installed: fail in CI, skip locally."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI but was not found", pytrace=False)
    pytest.skip(f"{what} not installed (install it to run the end-to-end tests)")


def find_binary(*names: str) -> str:
    """Path of the first of ``names`` found on PATH or in the sbin dirs."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    for name in names:
        found = shutil.which(name, path=search)
        if found:
            return found
    missing(" or ".join(names))
    raise AssertionError("unreachable")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def connectable(address: str | tuple[str, int]) -> bool:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(address)
        except OSError:
            return False
        return True


def wait_until_accepting(
    address: str | tuple[str, int],
    proc: subprocess.Popen[bytes],
    *,
    timeout: float = START_TIMEOUT,
    logs: Iterable[Path] = (),
) -> None:
    """Poll (bounded) until ``address`` accepts a connection; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{proc.args!r} exited with {proc.returncode} before listening on {address!r}\n"
                + _tail_logs(logs)
            )
        if connectable(address):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{proc.args!r} not accepting on {address!r} after {timeout}s\n" + _tail_logs(logs)
            )
        time.sleep(0.02)  # polling interval, not a timing assumption


def _tail_logs(logs: Iterable[Path]) -> str:
    out = []
    for log in logs:
        with contextlib.suppress(OSError):
            out.append(f"--- {log}:\n{log.read_text(errors='replace')[-4000:]}")
    return "\n".join(out)


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Signal ``proc`` and wait (bounded); SIGKILL its whole process group on timeout."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT)
    return proc.returncode


def live_members(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that have not exited (zombies are not counted)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # it went while we looked
            continue
        state, _ppid, pgrp = text[text.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state not in "ZX":
            live.append(int(stat.parent.name))
    return live


def wait_for_group_to_exit(pgid: int, timeout: float) -> bool:
    """Wait (at most ``timeout`` s) until no process of group ``pgid`` is alive.

    A pidfd turns readable when its process exits, so this waits on each member's
    exit in turn rather than polling on a timer.
    """
    deadline = time.monotonic() + timeout
    while pids := live_members(pgid):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            fd = os.pidfd_open(pids[0])
        except ProcessLookupError:
            continue
        try:
            select.select([fd], [], [], remaining)
        finally:
            os.close(fd)
    return True


@contextlib.contextmanager
def socket_dir() -> Iterator[Path]:
    """A fresh directory for Unix sockets that a front-end worker can reach.

    pytest's ``tmp_path`` lives under a 0700 dir; Apache (as root) must drop
    to another user, so its worker runs with our group (``Group`` = our gid)
    and needs group search permission on every directory of the path.
    """
    path = Path(tempfile.mkdtemp(prefix="trioscgi-test-", dir="/tmp"))
    path.chmod(0o750)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def backend_address(backend: str) -> str | tuple[str, int]:
    """``"unix:/p.sock"`` -> ``"/p.sock"``; ``"127.0.0.1:4000"`` -> ``("127.0.0.1", 4000)``."""
    if backend.startswith("unix:"):
        return backend[len("unix:") :]
    host, _, port = backend.rpartition(":")
    return (host.strip("[]"), int(port))


# --------------------------------------------------------------------------- HTTP client


@dataclass
class HTTPResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def http_request(
    port: int,
    method: str,
    target: str,
    *,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes | Iterable[bytes] | None = None,
    chunked: bool = False,
    timeout: float = HTTP_TIMEOUT,
) -> HTTPResponse:
    """One HTTP/1.1 request to 127.0.0.1:port; repeated header names are sent repeatedly."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        elif isinstance(body, bytes):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if body is not None:
            chunks = [body] if isinstance(body, bytes) else body
            for chunk in chunks:
                if chunked:
                    if chunk:
                        conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    conn.send(chunk)
        if chunked:
            conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        data = resp.read()
        return HTTPResponse(resp.status, resp.reason, resp.getheaders(), data)
    finally:
        conn.close()


def raw_http(port: int, request: bytes, *, timeout: float = HTTP_TIMEOUT) -> bytes:
    """Send raw bytes (for targets http.client refuses), read the reply until close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks: list[bytes] = []
        while True:
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def parse_raw_response(data: bytes) -> HTTPResponse:
    """Split a raw ``Connection: close`` HTTP/1.x response (non-chunked body)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    _, status, *reason = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return HTTPResponse(int(status), reason[0] if reason else "", headers, body)


# --------------------------------------------------------------------------- front-ends


@dataclass
class FrontEnd:
    """A running front-end. ``variants`` maps a config variant to its URL prefix."""

    name: str
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]
    error_log: Path
    variants: dict[str, str] = field(default_factory=dict)
    # Set at exit when processes of the front-end's group outlived it (and were killed).
    left_behind: bool = False
    # Set at exit when mod_fcgid had to kill an application that did not exit on SIGTERM.
    app_killed: bool = False

    def request(self, method: str, target: str, **kwargs: object) -> HTTPResponse:
        return http_request(self.port, method, target, **kwargs)  # type: ignore[arg-type]

    def get(self, target: str, **kwargs: object) -> HTTPResponse:
        return self.request("GET", target, **kwargs)

    def log_text(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")
        except OSError:
            return ""


@contextlib.contextmanager
def _running(
    name: str,
    *,
    argv: list[str],
    workdir: Path,
    port: int,
    error_log: Path,
    variants: dict[str, str],
    stop_signal: int = signal.SIGTERM,
) -> Iterator[FrontEnd]:
    """Start a front-end, wait until it accepts, and stop it on the way out."""
    out = (workdir / "stdout.log").open("wb")
    try:
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Apache passes its whole environment to the backend (PATH...): keep it small.
            env=FRONTEND_ENV,
            start_new_session=True,  # so a stuck one can be killed with its children
        )
    finally:
        out.close()
    fe = FrontEnd(name, port, workdir, proc, error_log, variants)
    try:
        wait_until_accepting(("127.0.0.1", port), proc, logs=[error_log, workdir / "stdout.log"])
    except BaseException:
        stop_process(proc)
        raise
    try:
        yield fe
    finally:
        stop_process(proc, stop_signal)


@contextlib.contextmanager
def _workdir(workdir: Path | None, name: str) -> Iterator[Path]:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
    else:
        with tempfile.TemporaryDirectory(prefix=f"trioscgi-{name}-") as d:
            yield Path(d)


def _nginx_pass(backend: str) -> str:
    addr = backend_address(backend)
    if isinstance(addr, str):
        return f"unix:{addr}"
    return f"{addr[0]}:{addr[1]}"


def nginx_config(workdir: Path, port: int, backend: str, scgi_params: str) -> str:
    """nginx.conf: stock, prefix (SCRIPT_NAME/PATH_INFO), no params, unbuffered request body."""
    d = workdir
    upstream = _nginx_pass(backend)
    return f"""\
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 64m;
    scgi_read_timeout 30s;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;

        # What users have by default: the stock scgi_params, no SCRIPT_NAME/PATH_INFO.
        location / {{
            include {scgi_params};
            scgi_pass {upstream};
        }}

        # Mounted under a prefix: tell the app where it is mounted.
        location ~ ^/app(?<app_path_info>/.*)$ {{
            include {scgi_params};
            scgi_param SCRIPT_NAME /app;
            scgi_param PATH_INFO $app_path_info;
            scgi_pass {upstream};
        }}

        # No scgi_params at all: nginx then sends CONTENT_LENGTH and HTTP_* only (no SCGI=1).
        location /noparams/ {{
            scgi_pass {upstream};
        }}

        # Request buffering off: nginx < 1.29.6 then sends as CONTENT_LENGTH only the part
        # of the body it had when it connected to us.
        location ~ ^/unbuffered(?<unbuffered_path_info>/.*)$ {{
            include {scgi_params};
            scgi_param SCRIPT_NAME /unbuffered;
            scgi_param PATH_INFO $unbuffered_path_info;
            scgi_request_buffering off;
            scgi_pass {upstream};
        }}
    }}
}}
"""


@contextlib.contextmanager
def _run_nginx_conf(
    name: str, workdir: Path | None, config: Callable[[Path, int], str], variants: dict[str, str]
) -> Iterator[FrontEnd]:
    """Run nginx on the ``config(dir, port)`` it is given, in a work dir of its own."""
    binary = find_binary("nginx")
    with _workdir(workdir, name) as d:
        port = free_port()
        conf = d / "nginx.conf"
        conf.write_text(config(d, port))
        error_log = d / "error.log"
        argv = [binary, "-p", f"{d}/", "-c", str(conf), "-e", str(error_log)]
        with _running(
            "nginx",
            argv=argv,
            workdir=d,
            port=port,
            error_log=error_log,
            variants=variants,
            stop_signal=signal.SIGQUIT,  # graceful: finish in-flight requests
        ) as fe:
            yield fe


@contextlib.contextmanager
def run_nginx(backend: str, *, workdir: Path | None = None) -> Iterator[FrontEnd]:
    """Run nginx in front of ``backend`` (``unix:/path`` or ``host:port``).

    Variants (URL prefixes): ``stock`` = "", ``prefix`` = "/app", ``noparams`` = "/noparams",
    ``unbuffered`` = "/unbuffered" (``scgi_request_buffering off``).
    """
    scgi_params = next((p for p in NGINX_SCGI_PARAMS_CANDIDATES if os.path.exists(p)), None)
    if scgi_params is None:
        missing("nginx's scgi_params file")
    assert scgi_params is not None
    with _run_nginx_conf(
        "nginx",
        workdir,
        lambda d, port: nginx_config(d, port, backend, scgi_params),
        {"stock": "", "prefix": "/app", "noparams": "/noparams", "unbuffered": "/unbuffered"},
    ) as fe:
        yield fe


def nginx_version() -> tuple[int, ...]:
    """nginx's version, e.g. (1, 22, 1), from ``nginx -v`` (which prints to stderr)."""
    out = subprocess.run(
        [find_binary("nginx"), "-v"], capture_output=True, text=True, check=True
    ).stderr
    return tuple(int(x) for x in out.split("nginx/", 1)[1].split()[0].split("."))


def apache_user() -> tuple[str, int] | None:
    """``(user, gid)`` that Apache's worker (and mod_fcgid's applications) run as.

    ``None`` when we are not root: Apache then stays who we are. As root it must switch
    (it refuses to serve as root): to ``www-data`` (else ``nobody``), with our group.
    """
    if os.geteuid() != 0:
        return None
    import pwd

    for user in ("www-data", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return user, os.getegid()
    raise RuntimeError("running as root, but there is neither a www-data nor a nobody user")


def runnable_by_apache_user(path: str) -> bool:
    """Whether Apache's user can exec ``path`` (search permission on every directory too)."""
    who = apache_user()
    if who is None:
        return os.access(path, os.X_OK)
    done = subprocess.run(
        ["/bin/sh", "-c", 'test -x "$1"', "sh", path],
        user=who[0],
        group=who[1],
        extra_groups=[],
        env=FRONTEND_ENV,
        check=False,
    )
    return done.returncode == 0


def python_for_apache_user() -> tuple[str, dict[str, str]]:
    """An interpreter that mod_fcgid can exec, and the environment it needs.

    mod_fcgid runs its applications as Apache's user. As root that is ``www-data``,
    which can't reach an interpreter under ``/root`` (pyenv, a venv made from it: the
    exec fails with "Permission denied" and Apache answers 500 "End of script output
    before headers"). Then this falls back to the system ``python3`` of the same
    ``X.Y``, with ``PYTHONPATH`` = the repository and this interpreter's site-packages
    (pure-Python packages and same-ABI extensions load from there).
    """
    if runnable_by_apache_user(sys.executable):
        return sys.executable, {}
    import site

    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if os.path.exists(candidate) and runnable_by_apache_user(candidate):
            repo = str(Path(__file__).resolve().parent.parent)
            paths = [repo, *site.getsitepackages()]
            return candidate, {"PYTHONPATH": os.pathsep.join(paths)}
    missing(f"a {version} that Apache's user can run (for mod_fcgid)")
    raise AssertionError("unreachable")


def _apache_module_dir(module: str = "mod_proxy_scgi", what: str = "Apache mod_proxy_scgi") -> str:
    for d in APACHE_MODULE_DIRS:
        if os.path.exists(os.path.join(d, f"{module}.so")):
            return d
    missing(what)
    raise AssertionError("unreachable")


def _apache_proxy_url(backend: str, scheme: str = "scgi") -> str:
    addr = backend_address(backend)
    if isinstance(addr, str):
        return f'"unix:{addr}|{scheme}://localhost/"'
    return f"{scheme}://{addr[0]}:{addr[1]}/"


def _apache_head(workdir: Path, port: int, modules: str, load: list[str]) -> list[str]:
    """The lines every test httpd.conf starts with: modules, user, port, files in ``workdir``."""
    d = workdir
    builtin = subprocess.run(
        [find_binary("apache2", "httpd"), "-l"], capture_output=True, text=True, check=False
    ).stdout
    if "mod_unixd.c" not in builtin:
        load = [*load, "unixd"]
    lines = [f"ServerRoot {d}"]
    lines += [f"LoadModule {m}_module {modules}/mod_{m}.so" for m in load]
    # Apache refuses to serve as root (no BIG_SECURITY_HOLE): as root, the
    # worker becomes an unprivileged user but keeps our group, so it can reach
    # a 0660 Unix socket in a 0750 directory that we own.
    who = apache_user()
    if who is not None:
        lines += [f"User {who[0]}", f"Group #{who[1]}"]
    lines += [
        "ServerName 127.0.0.1",
        f"Listen 127.0.0.1:{port}",
        f"PidFile {d}/httpd.pid",
        f"ErrorLog {d}/error.log",
        "LogLevel warn",
        f"DefaultRuntimeDir {d}",
        f"Mutex file:{d} default",
        "Timeout 30",
        # Default Off answers 404 for any %2F in the path, before proxying.
        "AllowEncodedSlashes NoDecode",
    ]
    return lines


def apache_config(
    workdir: Path,
    port: int,
    backend: str,
    modules: str,
    *,
    scheme: str = "scgi",
    reuse: bool = False,
) -> str:
    """httpd.conf: ``ProxyPass /app/`` and ``ProxyPass /`` to the backend.

    ``scheme`` is ``scgi`` (mod_proxy_scgi) or ``fcgi`` (mod_proxy_fcgi); ``reuse``
    adds ``enablereuse=on`` (FastCGI keep-conn; Apache closes after each request without).
    """
    lines = _apache_head(
        workdir, port, modules, ["mpm_event", "authz_core", "proxy", f"proxy_{scheme}"]
    )
    url = _apache_proxy_url(backend, scheme)
    # Both ProxyPass lines share one worker (same URL): its parameters go on the first one
    # only (on both, Apache warns AH01146 "Ignoring parameter ... because of worker sharing").
    reuse_param = " enablereuse=on" if reuse else ""
    lines += [f"ProxyPass /app/ {url}{reuse_param}", f"ProxyPass / {url}", ""]
    return "\n".join(lines)


@contextlib.contextmanager
def _run_apache_conf(
    name: str,
    workdir: Path | None,
    variants: dict[str, str],
    config: Callable[[Path, int], str],
    *,
    one_process: bool = True,
) -> Iterator[FrontEnd]:
    """Run Apache in the foreground with the httpd.conf ``config(dir, port)``.

    ``one_process``: ``-X``, one process that serves too (a debugging mode); otherwise
    ``-DFOREGROUND``, a parent with its workers and other children, as in production.
    """
    binary = find_binary("apache2", "httpd")
    with _workdir(workdir, name) as d:
        if os.geteuid() == 0:
            d.chmod(0o755)  # the unprivileged worker writes nothing here, but must traverse
        port = free_port()
        conf = d / "httpd.conf"
        conf.write_text(config(d, port))
        error_log = d / "error.log"
        with _running(
            "apache",
            argv=[binary, "-X" if one_process else "-DFOREGROUND", "-f", str(conf)],
            workdir=d,
            port=port,
            error_log=error_log,
            variants=variants,
        ) as fe:
            yield fe


@contextlib.contextmanager
def run_apache(backend: str, *, workdir: Path | None = None) -> Iterator[FrontEnd]:
    """Run Apache httpd (``-X``: one process, foreground) with mod_proxy_scgi.

    Variants: ``root`` = "" (``ProxyPass /``), ``prefix`` = "/app" (``ProxyPass /app/``).
    Apache sends SCRIPT_NAME = the whole decoded path in both.
    """
    modules = _apache_module_dir()
    with _run_apache_conf(
        "apache",
        workdir,
        {"root": "", "prefix": "/app"},
        lambda d, port: apache_config(d, port, backend, modules),
    ) as fe:
        yield fe


def _lighttpd_backend(backend: str) -> str:
    addr = backend_address(backend)
    if isinstance(addr, str):
        return f'"socket" => "{addr}"'
    return f'"host" => "{addr[0]}", "port" => {addr[1]}'


def lighttpd_config(
    workdir: Path, port: int, backend: str, *, fix_root: bool = True, module: str = "scgi"
) -> str:
    """lighttpd.conf: ``scgi.server`` (or ``fastcgi.server``) for "/app" and "/" (root).

    Without ``fix-root-scriptname``, the "/" mount sends SCRIPT_NAME = the whole
    path and no PATH_INFO (like Apache).
    """
    d = workdir
    be = _lighttpd_backend(backend)
    fix = ', "fix-root-scriptname" => "enable"' if fix_root else ""
    return f"""\
server.modules = ("mod_{module}")
server.document-root = "{d}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{d}/error.log"
server.upload-dirs = ("{d}")
server.max-request-size = 65536
# Default 0 buffers the whole response before sending any of it: no streaming,
# no SSE, and an endless response never reaches the client. 2 = stream, with
# backpressure on the backend when the client reads slowly.
server.stream-response-body = 2
{module}.server = (
    "/app" => (({be}, "check-local" => "disable")),
    "/" => (({be}, "check-local" => "disable"{fix})),
)
"""


@contextlib.contextmanager
def run_lighttpd(
    backend: str, *, workdir: Path | None = None, fix_root: bool = True
) -> Iterator[FrontEnd]:
    """Run lighttpd (``-D``) with mod_scgi. Variants: ``root`` = "", ``prefix`` = "/app".

    ``fix_root=False`` leaves out ``fix-root-scriptname`` on the "/" mount.
    """
    binary = find_binary("lighttpd")
    with _workdir(workdir, "lighttpd") as d:
        port = free_port()
        conf = d / "lighttpd.conf"
        conf.write_text(lighttpd_config(d, port, backend, fix_root=fix_root))
        error_log = d / "error.log"
        argv = [binary, "-D", "-f", str(conf)]
        with _running(
            "lighttpd",
            argv=argv,
            workdir=d,
            port=port,
            error_log=error_log,
            variants={"root": "", "prefix": "/app"},
        ) as fe:
            yield fe


FRONTENDS = {"nginx": run_nginx, "apache": run_apache, "lighttpd": run_lighttpd}


# --------------------------------------------------------------------------- FastCGI front-ends


def _nginx_fastcgi_params() -> str:
    found = next((p for p in NGINX_FASTCGI_PARAMS_CANDIDATES if os.path.exists(p)), None)
    if found is None:
        missing("nginx's fastcgi_params file")
    assert found is not None
    return found


def nginx_fastcgi_config(
    workdir: Path, port: int, backend: str, fastcgi_params: str, *, keep_conn: bool = False
) -> str:
    """nginx.conf for ``fastcgi_pass``: stock, prefix, no params, unbuffered request body.

    ``keep_conn``: every location goes through ``upstream { keepalive 8; }`` with
    ``fastcgi_keep_conn on`` (nginx needs both to keep a FastCGI connection open).
    """
    d = workdir
    if keep_conn:
        upstream = f"upstream fcgi_backend {{ server {_nginx_pass(backend)}; keepalive 8; }}"
        target = "fcgi_backend"
        keep = "fastcgi_keep_conn on;"
    else:
        upstream = ""
        target = _nginx_pass(backend)
        keep = ""
    return f"""\
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 64m;
    fastcgi_read_timeout 30s;
    {upstream}
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        {keep}

        # What users have by default: the stock fastcgi_params, SCRIPT_NAME =
        # $fastcgi_script_name (the whole path), no PATH_INFO.
        location / {{
            include {fastcgi_params};
            fastcgi_pass {target};
        }}

        # Mounted under a prefix, nginx's own way: SCRIPT_NAME = /app, PATH_INFO = the rest.
        location /app/ {{
            fastcgi_split_path_info ^(/app)(/.*)$;
            include {fastcgi_params};
            fastcgi_param PATH_INFO $fastcgi_path_info;
            fastcgi_pass {target};
        }}

        # No fastcgi_params at all: HTTP_* only.
        location /noparams/ {{
            fastcgi_pass {target};
        }}

        # Request buffering off: a chunked upload streams through as STDIN records.
        location /unbuffered/ {{
            fastcgi_split_path_info ^(/unbuffered)(/.*)$;
            include {fastcgi_params};
            fastcgi_param PATH_INFO $fastcgi_path_info;
            fastcgi_request_buffering off;
            fastcgi_pass {target};
        }}
    }}
}}
"""


@contextlib.contextmanager
def run_nginx_fastcgi(
    backend: str, *, workdir: Path | None = None, keep_conn: bool = False
) -> Iterator[FrontEnd]:
    """Run nginx with ``fastcgi_pass`` to ``backend`` (``unix:/path`` or ``host:port``).

    Variants: ``stock`` = "" (``include fastcgi_params;`` only), ``prefix`` = "/app"
    (``fastcgi_split_path_info``), ``noparams`` = "/noparams", ``unbuffered`` =
    "/unbuffered" (``fastcgi_request_buffering off``). ``keep_conn=True``: all of them
    with ``fastcgi_keep_conn on`` and an upstream ``keepalive 8``.
    """
    fastcgi_params = _nginx_fastcgi_params()
    with _run_nginx_conf(
        "nginx-fcgi",
        workdir,
        lambda d, port: nginx_fastcgi_config(d, port, backend, fastcgi_params, keep_conn=keep_conn),
        {"stock": "", "prefix": "/app", "noparams": "/noparams", "unbuffered": "/unbuffered"},
    ) as fe:
        yield fe


def nginx_mixed_config(
    workdir: Path, port: int, backend: str, *, keepalive_timeout: str = "60s"
) -> str:
    """nginx.conf with every wire to one ``protocol = "auto"`` backend: ``/scgi/``
    (``scgi_pass``), ``/fcgi/`` (``fastcgi_pass``, a connection per request: nginx's
    default), ``/fcgi-keep/`` (``fastcgi_keep_conn on`` through an upstream
    ``keepalive 8`` with ``keepalive_timeout``) and ``/uwsgi/`` (``uwsgi_pass``, the
    stock ``uwsgi_params`` and ``uwsgi_param SCRIPT_NAME /uwsgi``)."""
    d = workdir
    scgi_params = next((p for p in NGINX_SCGI_PARAMS_CANDIDATES if os.path.exists(p)), None)
    if scgi_params is None:
        missing("nginx's scgi_params file")
    fastcgi_params = _nginx_fastcgi_params()
    uwsgi_params = _nginx_uwsgi_params()
    target = _nginx_pass(backend)
    return f"""\
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    scgi_read_timeout 30s;
    fastcgi_read_timeout 30s;
    uwsgi_read_timeout 30s;
    upstream kept {{
        server {target};
        keepalive 8;
        keepalive_timeout {keepalive_timeout};
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        location /scgi/ {{
            include {scgi_params};
            scgi_pass {target};
        }}
        location /fcgi/ {{
            include {fastcgi_params};
            fastcgi_pass {target};
        }}
        location /fcgi-keep/ {{
            include {fastcgi_params};
            fastcgi_keep_conn on;
            fastcgi_pass kept;
        }}
        location /uwsgi/ {{
            include {uwsgi_params};
            uwsgi_param SCRIPT_NAME /uwsgi;
            uwsgi_pass {target};
        }}
    }}
}}
"""


@contextlib.contextmanager
def run_nginx_mixed(
    backend: str, *, workdir: Path | None = None, keepalive_timeout: str = "60s"
) -> Iterator[FrontEnd]:
    """Run nginx with :func:`nginx_mixed_config` in front of ``backend``."""
    with _run_nginx_conf(
        "nginx-mixed",
        workdir,
        lambda d, port: nginx_mixed_config(d, port, backend, keepalive_timeout=keepalive_timeout),
        {"scgi": "/scgi", "fastcgi": "/fcgi", "fastcgi-keep": "/fcgi-keep", "uwsgi": "/uwsgi"},
    ) as fe:
        yield fe


@contextlib.contextmanager
def run_apache_fastcgi(
    backend: str, *, workdir: Path | None = None, reuse: bool = False
) -> Iterator[FrontEnd]:
    """Run Apache with mod_proxy_fcgi: ``ProxyPass /app/`` and ``ProxyPass /`` to ``backend``.

    Variants: ``root`` = "", ``prefix`` = "/app". ``reuse=True`` adds ``enablereuse=on``
    (keep-conn; without it Apache sends flags 0 and closes after each request).
    """
    modules = _apache_module_dir("mod_proxy_fcgi", "Apache mod_proxy_fcgi")
    with _run_apache_conf(
        "apache-fcgi",
        workdir,
        {"root": "", "prefix": "/app"},
        lambda d, port: apache_config(d, port, backend, modules, scheme="fcgi", reuse=reuse),
    ) as fe:
        yield fe


def apache_fcgid_config(
    workdir: Path, port: int, modules: str, script: Path, env: Mapping[str, str]
) -> str:
    """httpd.conf: mod_fcgid runs ``script`` (``.fcgi``) as ``/x/index.fcgi`` and ``/app``."""
    d = workdir
    lines = _apache_head(d, port, modules, ["mpm_event", "authz_core", "alias", "fcgid"])
    lines += [
        f"DocumentRoot {d}/htdocs",
        # mod_fcgid's sockets and shared process table; as root it chowns them to User.
        f"FcgidIPCDir {d}/fcgid-ipc",
        f"FcgidProcessTableFile {d}/fcgid-shm",
        "FcgidMaxProcessesPerClass 2",
        "FcgidIOTimeout 30",
        # mod_fcgid reads the whole body before it sends anything, and answers 500 past
        # FcgidMaxRequestLen (default 131072 bytes): 64 MB, as nginx's client_max_body_size.
        "FcgidMaxRequestLen 67108864",
        "FcgidConnectTimeout 10",
    ]
    lines += [f"FcgidInitialEnv {k} {v}" for k, v in env.items()]
    lines += [
        # The usual set-up: a directory of scripts, so SCRIPT_NAME = the script's URL and
        # PATH_INFO = what follows it.
        f"Alias /x/ {script.parent}/",
        # A mount point: the script aliased to a prefix (SCRIPT_NAME = /app).
        f"Alias /app {script}",
        f"<Directory {script.parent}>",
        "    Options +ExecCGI",
        "    SetHandler fcgid-script",
        "    Require all granted",
        "</Directory>",
        "",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def run_apache_fcgid(
    command: Sequence[str],
    *,
    workdir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[FrontEnd]:
    """Run Apache with mod_fcgid spawning ``command`` (argv) as a FastCGI application.

    mod_fcgid execs ``index.fcgi`` (a shell wrapper that execs ``command``) with a
    listening Unix socket on fd 0 and the environment ``env`` (``FcgidInitialEnv``) plus
    its own few variables. Variants: ``script`` = "/x/index.fcgi" (SCRIPT_NAME = the script,
    PATH_INFO = the rest), ``alias`` = "/app" (``Alias /app .../index.fcgi``).

    Apache runs as in production (``-DFOREGROUND``: a parent and its children), not
    ``-X``. As root, it runs its workers and mod_fcgid's process manager as ``www-data``
    (``User``) with our group (``Group``), so the application runs as that user too:
    ``command``'s interpreter and files must be readable and searchable by it (see
    :func:`python_for_apache_user`), and whatever it writes must be group-writable by us.
    """
    modules = _apache_module_dir("mod_fcgid", "Apache mod_fcgid (libapache2-mod-fcgid)")
    with _workdir(workdir, "apache-fcgid") as d:
        cgi = d / "cgi"
        cgi.mkdir()
        (d / "htdocs").mkdir()
        script = cgi / "index.fcgi"
        script.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in command) + "\n")
        script.chmod(0o755)
        cgi.chmod(0o755)
        started: FrontEnd | None = None
        try:
            with _run_apache_conf(
                "apache-fcgid",
                d,
                {"script": "/x/index.fcgi", "alias": "/app"},
                lambda d, port: apache_fcgid_config(d, port, modules, script, env or {}),
                one_process=False,
            ) as fe:
                started = fe
                yield fe
        finally:
            # mod_fcgid's process manager and the application are in Apache's process
            # group (start_new_session: Apache leads it). Apache's parent stops the
            # manager before it exits, and the manager stops the application (SIGTERM,
            # then SIGKILL some 9 s later, logged). Under `-X` the manager sometimes
            # outlived Apache for good, orphaned and spinning, which is why this runs
            # Apache as in production. The application may still be on its way out
            # when Apache's exit is reaped: wait for the group, bounded; whatever is
            # alive then goes, before the directory does, and the test can see it.
            if started is not None:
                if not wait_for_group_to_exit(started.proc.pid, STOP_TIMEOUT):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(started.proc.pid, signal.SIGKILL)
                    started.left_behind = True
                started.app_killed = "terminating forcefully" in started.log_text()


@contextlib.contextmanager
def run_lighttpd_fastcgi(
    backend: str, *, workdir: Path | None = None, fix_root: bool = True
) -> Iterator[FrontEnd]:
    """Run lighttpd (``-D``) with mod_fastcgi. Variants: ``root`` = "", ``prefix`` = "/app".

    ``fix_root=False`` leaves out ``fix-root-scriptname`` on the "/" mount.
    """
    binary = find_binary("lighttpd")
    with _workdir(workdir, "lighttpd-fcgi") as d:
        port = free_port()
        conf = d / "lighttpd.conf"
        conf.write_text(lighttpd_config(d, port, backend, fix_root=fix_root, module="fastcgi"))
        error_log = d / "error.log"
        with _running(
            "lighttpd",
            argv=[binary, "-D", "-f", str(conf)],
            workdir=d,
            port=port,
            error_log=error_log,
            variants={"root": "", "prefix": "/app"},
        ) as fe:
            yield fe


def haproxy_config(
    workdir: Path,
    port: int,
    backend: str,
    *,
    keep_conn: bool = True,
    mpxs_conns: bool = False,
    max_reqs: int | None = None,
    get_values: bool = False,
    http_reuse: str | None = None,
) -> str:
    """haproxy.cfg: ``fcgi-app`` + ``use-fcgi-app`` + ``server ... proto fcgi``.

    Two fcgi-apps: ``root`` (no ``path-info``: SCRIPT_NAME = the whole path) and
    ``prefix`` for ``/app/`` (``path-info ^(/app)(/.*)$``). ``docroot`` is mandatory.
    """
    d = workdir
    addr = backend_address(backend)
    server = addr if isinstance(addr, str) else f"{addr[0]}:{addr[1]}"
    options = ["option keep-conn" if keep_conn else "no option keep-conn"]
    if mpxs_conns:
        options.append("option mpxs-conns")
    if max_reqs is not None:
        options.append(f"option max-reqs {max_reqs}")
    if get_values:
        options.append("option get-values")
    opts = "\n".join(f"    {o}" for o in options)
    reuse = f"    http-reuse {http_reuse}\n" if http_reuse else ""
    return f"""\
global
    # One thread: idle backend connections are kept per thread, so with two a request
    # accepted by the other thread may open a new connection instead of reusing one.
    nbthread 1
    log stderr format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s

frontend front
    bind 127.0.0.1:{port}
    use_backend app_prefix if {{ path_beg /app/ }}
    default_backend app_root

backend app_root
    use-fcgi-app fcgi_root
{reuse}    server app {server} proto fcgi

backend app_prefix
    use-fcgi-app fcgi_prefix
{reuse}    server app {server} proto fcgi

fcgi-app fcgi_root
    docroot {d}
{opts}

fcgi-app fcgi_prefix
    docroot {d}
    path-info ^(/app)(/.*)$
{opts}
"""


@contextlib.contextmanager
def run_haproxy_fastcgi(
    backend: str,
    *,
    workdir: Path | None = None,
    keep_conn: bool = True,
    mpxs_conns: bool = False,
    max_reqs: int | None = None,
    get_values: bool = False,
    http_reuse: str | None = None,
) -> Iterator[FrontEnd]:
    """Run HAProxy (``-db``: foreground) with an ``fcgi-app`` in front of ``backend``.

    Variants: ``root`` = "", ``prefix`` = "/app" (``path-info`` regex). The keyword
    arguments are the fcgi-app's connection options (HAProxy's defaults: ``keep-conn`` on,
    no multiplexing, ``max-reqs`` 1, no GET_VALUES) and the backend's ``http-reuse``
    (default ``safe``).
    """
    binary = find_binary("haproxy")
    with _workdir(workdir, "haproxy") as d:
        port = free_port()
        conf = d / "haproxy.cfg"
        conf.write_text(
            haproxy_config(
                d,
                port,
                backend,
                keep_conn=keep_conn,
                mpxs_conns=mpxs_conns,
                max_reqs=max_reqs,
                get_values=get_values,
                http_reuse=http_reuse,
            )
        )
        # HAProxy logs to stderr (the "log stderr" line), which _running puts in stdout.log.
        log = d / "stdout.log"
        with _running(
            "haproxy",
            argv=[binary, "-db", "-f", str(conf)],
            workdir=d,
            port=port,
            error_log=log,
            variants={"root": "", "prefix": "/app"},
            stop_signal=signal.SIGUSR1,  # soft stop: finish in-flight requests
        ) as fe:
            yield fe


# name -> run_*(backend, **options): the FastCGI front-ends that proxy to a backend.
FASTCGI_FRONTENDS: dict[str, Callable[..., contextlib.AbstractContextManager[FrontEnd]]] = {
    "nginx": run_nginx_fastcgi,
    "apache": run_apache_fastcgi,
    "lighttpd": run_lighttpd_fastcgi,
    "haproxy": run_haproxy_fastcgi,
}


def cgi_fcgi(
    backend: str, environ: Mapping[str, str], body: bytes = b"", *, timeout: float = HTTP_TIMEOUT
) -> bytes:
    """One request with libfcgi's ``cgi-fcgi -bind -connect`` to ``backend``; its stdout.

    ``cgi-fcgi`` sends its whole process environment as PARAMS, so ``environ`` is exactly
    what the application gets (nothing is added), and ``body`` as STDIN: it reads its
    stdin up to CONTENT_LENGTH bytes (nothing without one).
    """
    binary = find_binary("cgi-fcgi")
    addr = backend_address(backend)
    conn = addr if isinstance(addr, str) else f"{addr[0]}:{addr[1]}"
    done = subprocess.run(
        [binary, "-bind", "-connect", conn],
        env=dict(environ),
        input=body,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cgi-fcgi exited with {done.returncode}: {done.stderr[-2000:]!r}")
    return done.stdout


# --------------------------------------------------------------------------- uwsgi front-ends


def nginx_uwsgi_config(workdir: Path, port: int, backend: str, uwsgi_params: str) -> str:
    """nginx.conf for ``uwsgi_pass``: stock, prefix (SCRIPT_NAME), modifier1 30, unbuffered.

    The stock uwsgi_params sends no SCRIPT_NAME and PATH_INFO = ``$document_uri``
    (the whole decoded, normalised path), so under a prefix PATH_INFO still starts
    with it. ``prefix30`` is uWSGI's documented recipe for that case: SCRIPT_NAME
    plus ``uwsgi_modifier1 30``, which asked uWSGI to strip SCRIPT_NAME from PATH_INFO.
    """
    d = workdir
    upstream = _nginx_pass(backend)
    return f"""\
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 64m;
    uwsgi_read_timeout 30s;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;

        # What users have: the stock uwsgi_params, no SCRIPT_NAME.
        location / {{
            include {uwsgi_params};
            uwsgi_pass {upstream};
        }}

        # Mounted under a prefix: SCRIPT_NAME given, PATH_INFO left as uwsgi_params has it.
        location /app/ {{
            include {uwsgi_params};
            uwsgi_param SCRIPT_NAME /app;
            uwsgi_pass {upstream};
        }}

        # The same with uWSGI's old prefix recipe: modifier1 30.
        location /m30/ {{
            include {uwsgi_params};
            uwsgi_param SCRIPT_NAME /m30;
            uwsgi_modifier1 30;
            uwsgi_pass {upstream};
        }}

        # Request buffering off: a body with a Content-Length streams through; a
        # chunked one is still buffered (ngx_http_uwsgi_handler: !r->headers_in.chunked).
        location /unbuffered/ {{
            include {uwsgi_params};
            uwsgi_param SCRIPT_NAME /unbuffered;
            uwsgi_request_buffering off;
            uwsgi_pass {upstream};
        }}
    }}
}}
"""


def _nginx_uwsgi_params() -> str:
    uwsgi_params = next((p for p in NGINX_UWSGI_PARAMS_CANDIDATES if os.path.exists(p)), None)
    if uwsgi_params is None:
        missing("nginx's uwsgi_params file")
    assert uwsgi_params is not None
    return uwsgi_params


@contextlib.contextmanager
def run_nginx_uwsgi(backend: str, *, workdir: Path | None = None) -> Iterator[FrontEnd]:
    """Run nginx with ``uwsgi_pass`` to ``backend`` (``unix:/path`` or ``host:port``).

    Variants: ``stock`` = "" (``include uwsgi_params;`` only), ``prefix`` = "/app"
    (plus ``uwsgi_param SCRIPT_NAME``), ``prefix30`` = "/m30" (plus ``uwsgi_modifier1
    30``), ``unbuffered`` = "/unbuffered" (``uwsgi_request_buffering off``).
    """
    uwsgi_params = _nginx_uwsgi_params()
    with _run_nginx_conf(
        "nginx-uwsgi",
        workdir,
        lambda d, port: nginx_uwsgi_config(d, port, backend, uwsgi_params),
        {"stock": "", "prefix": "/app", "prefix30": "/m30", "unbuffered": "/unbuffered"},
    ) as fe:
        yield fe


@contextlib.contextmanager
def run_apache_uwsgi(backend: str, *, workdir: Path | None = None) -> Iterator[FrontEnd]:
    """Run Apache with mod_proxy_uwsgi: ``ProxyPass /app/`` and ``ProxyPass /`` to ``backend``.

    Variants: ``root`` = "", ``prefix`` = "/app". (Debian: apache2-bin ships the module;
    ``libapache2-mod-proxy-uwsgi`` is the package name that pulls it in.)
    """
    modules = _apache_module_dir("mod_proxy_uwsgi", "Apache mod_proxy_uwsgi")
    with _run_apache_conf(
        "apache-uwsgi",
        workdir,
        {"root": "", "prefix": "/app"},
        lambda d, port: apache_config(d, port, backend, modules, scheme="uwsgi"),
    ) as fe:
        yield fe


UWSGI_FRONTENDS = {"nginx": run_nginx_uwsgi, "apache": run_apache_uwsgi}


# --------------------------------------------------------------------------- nginx over TLS


def make_test_certificates(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost and a client certificate (CN=alice), made
    with the ``openssl`` command in ``d``: ``ca``, ``server``, ``server_key``, ``client``,
    ``client_key``."""
    openssl = find_binary("openssl")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True)

    days = ["-days", "2"]
    run("req", "-x509", *key, *days, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test CA")
    sign = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", *days]
    for name, subject in (("server", "/CN=localhost"), ("client", "/O=Example/CN=alice")):
        run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        run("x509", "-req", "-in", f"{name}.csr", *sign, "-out", f"{name}.pem")
    return {
        "ca": d / "ca.pem",
        "server": d / "server.pem",
        "server_key": d / "server.key",
        "client": d / "client.pem",
        "client_key": d / "client.key",
    }


def nginx_tls_config(workdir: Path, port: int, backend: str, certs: Mapping[str, Path]) -> str:
    """nginx.conf: an ``ssl`` listener asking for a client certificate (optional), with the
    SSL_* params of docs/tls.md, SCGI at ``/`` and FastCGI at ``/fcgi/``."""
    d = workdir
    upstream = _nginx_pass(backend)
    tls_params = "\n".join(
        f"            {{kind}}_param {name} ${var};"
        for name, var in (
            ("SSL_PROTOCOL", "ssl_protocol"),
            ("SSL_CIPHER", "ssl_cipher"),
            ("SSL_CLIENT_CERT", "ssl_client_escaped_cert"),
            ("SSL_CLIENT_S_DN", "ssl_client_s_dn"),
            ("SSL_CLIENT_VERIFY", "ssl_client_verify"),
        )
    )
    scgi_params = next(p for p in NGINX_SCGI_PARAMS_CANDIDATES if os.path.exists(p))
    return f"""\
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {certs["server"]};
        ssl_certificate_key {certs["server_key"]};
        ssl_client_certificate {certs["ca"]};
        ssl_verify_client optional;

        location / {{
            include {scgi_params};
{tls_params.format(kind="scgi")}
            scgi_pass {upstream};
        }}

        location /fcgi/ {{
            include {_nginx_fastcgi_params()};
{tls_params.format(kind="fastcgi")}
            fastcgi_pass {upstream};
        }}
    }}
}}
"""


@contextlib.contextmanager
def run_nginx_tls(
    backend: str, certs: Mapping[str, Path], *, workdir: Path | None = None
) -> Iterator[FrontEnd]:
    """Run nginx over TLS in front of ``backend`` (see ``nginx_tls_config``).

    Variants: ``scgi`` = "", ``fastcgi`` = "/fcgi". Talk to it with an ``ssl`` context
    that trusts ``certs["ca"]``; the port accepts TLS only.
    """
    binary = find_binary("nginx")
    with _workdir(workdir, "nginx-tls") as d:
        port = free_port()
        conf = d / "nginx.conf"
        conf.write_text(nginx_tls_config(d, port, backend, certs))
        error_log = d / "error.log"
        argv = [binary, "-p", f"{d}/", "-c", str(conf), "-e", str(error_log)]
        with _running(
            "nginx",
            argv=argv,
            workdir=d,
            port=port,
            error_log=error_log,
            variants={"scgi": "", "fastcgi": "/fcgi"},
            stop_signal=signal.SIGQUIT,
        ) as fe:
            yield fe


# --------------------------------------------------------------------------- capture backend


CAPTURE_RESPONSE = (
    b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\ncaptured\n"
)
# uwsgi front-ends read an HTTP status line (Apache mod_proxy_uwsgi needs one: 502 without).
UWSGI_CAPTURE_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\ncaptured\n"
)


def _read_netstring_request(conn: socket.socket) -> bytes:
    """Read one SCGI request (netstring + CONTENT_LENGTH body) and return its raw bytes."""
    buf = b""
    while b":" not in buf:
        if len(buf) > 16:
            raise ValueError(f"bad netstring length: {buf[:32]!r}")
        data = conn.recv(65536)
        if not data:
            raise ConnectionError(f"EOF in netstring length: {buf!r}")
        buf += data
    length_s, _, _ = buf.partition(b":")
    header_end = len(length_s) + 1 + int(length_s) + 1  # digits ':' headers ','
    while len(buf) < header_end:
        data = conn.recv(65536)
        if not data:
            raise ConnectionError("EOF in SCGI headers")
        buf += data
    headers = buf[len(length_s) + 1 : header_end - 1]
    fields = headers.split(b"\0")
    assert fields[0] == b"CONTENT_LENGTH", fields[:2]
    total = header_end + int(fields[1])
    while len(buf) < total:
        data = conn.recv(65536)
        if not data:
            raise ConnectionError("EOF in SCGI body")
        buf += data
    return buf


def _recv_until(conn: socket.socket, buf: bytes, size: int, where: str) -> bytes:
    while len(buf) < size:
        data = conn.recv(65536)
        if not data:
            raise ConnectionError(f"EOF in {where} after {len(buf)} bytes")
        buf += data
    return buf


def read_uwsgi_request(conn: socket.socket) -> bytes:
    """Read one uwsgi request (4-byte header, vars, CONTENT_LENGTH body); its raw bytes.

    Decoded here with the format alone, not with trioscgi's core: the captures test it.
    """
    buf = _recv_until(conn, b"", 4, "uwsgi header")
    end = 4 + int.from_bytes(buf[1:3], "little")
    buf = _recv_until(conn, buf, end, "uwsgi vars")
    pos, length = 4, b""
    while pos < end:
        n = int.from_bytes(buf[pos : pos + 2], "little")
        name = buf[pos + 2 : pos + 2 + n]
        pos += 2 + n
        n = int.from_bytes(buf[pos : pos + 2], "little")
        if name == b"CONTENT_LENGTH":
            length = buf[pos + 2 : pos + 2 + n]
        pos += 2 + n
    return _recv_until(conn, buf, end + int(length or b"0"), "uwsgi body")


class CaptureBackend:
    """A blocking SCGI (or uwsgi) server in a thread that records every raw request.

    Use as a context manager; ``bind`` is ``unix:/path`` or ``127.0.0.1:0``.
    ``backend`` is then the address to give a front-end. ``read`` takes one request
    off a connection; ``response`` is what each gets back; ``then``, if given, runs on
    the connection after that (a tunnel's echo), before it is closed.
    """

    def __init__(
        self,
        bind: str = "127.0.0.1:0",
        *,
        read: Callable[[socket.socket], bytes] | None = None,
        response: bytes = CAPTURE_RESPONSE,
        then: Callable[[socket.socket], None] | None = None,
    ) -> None:
        self._read = _read_netstring_request if read is None else read
        self._response = response
        self._then = then
        addr = backend_address(bind)
        if isinstance(addr, str):
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.bind(addr)
            os.chmod(addr, 0o660)
            self.backend = bind
        else:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(addr)
            host, port = self._sock.getsockname()
            self.backend = f"{host}:{port}"
        self._sock.listen(64)
        self._sock.settimeout(0.2)  # lets the thread notice stop without a wakeup fd
        self.requests: list[bytes] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> CaptureBackend:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(STOP_TIMEOUT)
        self._sock.close()
        addr = backend_address(self.backend)
        if isinstance(addr, str):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(addr)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(HTTP_TIMEOUT)
                try:
                    raw = self._read(conn)
                    with self._lock:
                        self.requests.append(raw)
                    conn.sendall(self._response)
                    if self._then is not None:
                        self._then(conn)
                except (OSError, ValueError, AssertionError) as e:
                    with self._lock:
                        self.errors.append(e)

    def pop_all(self) -> list[bytes]:
        with self._lock:
            out, self.requests = self.requests, []
            return out


def parse_scgi(raw: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Split a raw SCGI request into (environ pairs in wire order, body)."""
    length_s, _, rest = raw.partition(b":")
    n = int(length_s)
    headers, comma, body = rest[:n], rest[n : n + 1], rest[n + 1 :]
    assert comma == b",", "netstring not terminated by ','"
    fields = headers.split(b"\0")
    assert fields[-1] == b"", "header block not NUL-terminated"
    fields = fields[:-1]
    return list(zip(fields[::2], fields[1::2], strict=True)), body


# --------------------------------------------------------------------------- trioscgi process


APPS_DIR = Path(__file__).resolve().parent / "apps"


@dataclass
class TrioscgiProcess:
    """A running ``python -m trioscgi``; ``backends`` maps "unix"/"tcp" to its binds."""

    proc: subprocess.Popen[bytes]
    backends: dict[str, str]
    stdout: Path
    stderr: Path

    def logs(self) -> str:
        return _tail_logs([self.stdout, self.stderr])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal it, wait (bounded; SIGKILL on timeout) and return its exit code."""
        return stop_process(self.proc, sig)


def start_trioscgi(
    app: str,
    *,
    sockdir: Path,
    logdir: Path,
    args: Iterable[str] = (),
    env: dict[str, str] | None = None,
    name: str = "trioscgi",
) -> TrioscgiProcess:
    """Start ``python -m trioscgi`` on a Unix socket and a TCP port; wait until both accept."""
    unix_path = sockdir / f"{name}.sock"
    port = free_port()
    backends = {"unix": f"unix:{unix_path}", "tcp": f"127.0.0.1:{port}"}
    argv = [sys.executable, "-m", "trioscgi", "--app-dir", str(APPS_DIR)]
    for bind in backends.values():
        argv += ["--bind", bind]
    argv += [*args, app]
    stdout, stderr = logdir / f"{name}.stdout", logdir / f"{name}.stderr"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            argv,
            cwd=str(Path(__file__).resolve().parent.parent),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # our signals only, not the terminal's
        )
    server = TrioscgiProcess(proc, backends, stdout, stderr)
    try:
        for bind in backends.values():
            wait_until_accepting(backend_address(bind), proc, logs=[stdout, stderr])
    except BaseException:
        stop_process(proc, signal.SIGKILL)
        raise
    return server


@contextlib.contextmanager
def run_trioscgi(
    app: str,
    *,
    sockdir: Path,
    logdir: Path,
    args: Iterable[str] = (),
    env: dict[str, str] | None = None,
    name: str = "trioscgi",
) -> Iterator[TrioscgiProcess]:
    """``start_trioscgi``; at exit SIGTERM it and check that it exited 0."""
    server = start_trioscgi(app, sockdir=sockdir, logdir=logdir, args=args, env=env, name=name)
    try:
        yield server
    finally:
        code = server.stop()
    assert code == 0, f"trioscgi exited with {code}\n{server.logs()}"
