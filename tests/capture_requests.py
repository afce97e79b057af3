"""Capture the raw SCGI, FastCGI and uwsgi requests that real front-ends send.

Run from the repository root:
``python tests/capture_requests.py [--out DIR] [--protocol scgi|fastcgi|uwsgi] [FRONTEND...]``.
Writes ``<frontend>-<variant>-<what>.scgi`` (nginx, Apache, lighttpd),
``<frontend>-<variant>-<what>.fcgi`` (nginx, Apache mod_proxy_fcgi, lighttpd, HAProxy,
mod_fcgid, cgi-fcgi) and ``<frontend>-<variant>-<what>.uwsgi`` (nginx, Apache
mod_proxy_uwsgi) files; see tests/data/captures/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fcgi_capture import FcgiCaptureBackend
from frontends import (
    FASTCGI_FRONTENDS,
    FRONTENDS,
    UWSGI_CAPTURE_RESPONSE,
    UWSGI_FRONTENDS,
    CaptureBackend,
    FrontEnd,
    HTTPResponse,
    cgi_fcgi,
    parse_raw_response,
    python_for_apache_user,
    raw_http,
    read_uwsgi_request,
    run_apache_fcgid,
    socket_dir,
)

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "data" / "captures"

FORM = b"name=trio+scgi&empty=&utf8=caf%C3%A9&amp=a%26b"


def get_query(fe: FrontEnd, prefix: str) -> HTTPResponse:
    """GET with a query string (percent-encoded bits, a repeated key, an empty value)."""
    return fe.get(
        f"{prefix}/echo/path?a=1&b=two%20words&a=3&empty=&plus=x+y",
        headers=[("Accept", "text/plain"), ("User-Agent", "trioscgi-capture/1")],
    )


def post_form(fe: FrontEnd, prefix: str) -> HTTPResponse:
    """POST with an urlencoded form body."""
    return fe.request(
        "POST",
        f"{prefix}/form",
        headers=[("Content-Type", "application/x-www-form-urlencoded")],
        body=FORM,
    )


def dup_headers(fe: FrontEnd, prefix: str) -> HTTPResponse:
    """Two Cookie headers and two X-Dup headers."""
    return fe.get(
        f"{prefix}/dup",
        headers=[
            ("Cookie", "a=1"),
            ("X-Dup", "first"),
            ("Cookie", "b=2"),
            ("X-Dup", "second"),
        ],
    )


def odd_headers(fe: FrontEnd, prefix: str) -> HTTPResponse:
    """An underscore in a header name, an empty value, a header with spaces in its value."""
    return fe.get(
        f"{prefix}/odd",
        headers=[
            ("X_Under_Score", "underscore"),
            ("X-Empty", ""),
            ("X-Spaces", "  a  b  "),
        ],
    )


def odd_path(fe: FrontEnd, prefix: str) -> HTTPResponse:
    """A path with %2F, %2e%2e, percent-encoded UTF-8 and a raw UTF-8 byte sequence."""
    target = f"{prefix}/p/a%2Fb/x/%2e%2e/caf%C3%A9/ü?q=%2F%2e%2e".encode()
    raw = raw_http(
        fe.port,
        b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    return parse_raw_response(raw)


def chunked(fe: FrontEnd, prefix: str) -> HTTPResponse:
    """POST with a chunked request body (no Content-Length)."""
    return fe.request(
        "POST",
        f"{prefix}/chunked",
        headers=[("Content-Type", "application/octet-stream")],
        body=[b"hello ", b"chunked ", b"world"],
        chunked=True,
    )


def encoded_path(fe: FrontEnd, prefix: str) -> HTTPResponse:
    """``odd-path`` in ASCII only (HAProxy answers 400 to the raw UTF-8 byte)."""
    return fe.get(f"{prefix}/p/a%2Fb/x/%2e%2e/caf%C3%A9?q=%2F%2e%2e")


REQUESTS: dict[str, Callable[[FrontEnd, str], HTTPResponse]] = {
    "get-query": get_query,
    "post-form": post_form,
    "dup-headers": dup_headers,
    "odd-headers": odd_headers,
    "odd-path": odd_path,
    "chunked": chunked,
}
# Added for FastCGI (the SCGI captures predate it).
FASTCGI_REQUESTS = {**REQUESTS, "encoded-path": encoded_path}


Popped = list[tuple[bytes, str]]  # (raw request, where it came from) for each request
# A running front-end, how to pop what reached the backend, and notes about the backend
# (errors, aborted requests, how connections ended) that are complete once it has stopped.
Running = tuple[FrontEnd, Callable[[], Popped], list[str]]
Source = Callable[[str, dict[str, Any]], contextlib.AbstractContextManager[Running]]


@contextlib.contextmanager
def scgi_source(name: str, kwargs: dict[str, Any]) -> Iterator[Running]:
    """SCGI front-end ``name`` in front of the SCGI CaptureBackend."""
    notes: list[str] = []
    with CaptureBackend() as backend:
        with FRONTENDS[name](backend.backend, **kwargs) as fe:
            yield fe, lambda: [(raw, "") for raw in backend.pop_all()], notes
        if backend.errors:
            notes.append(f"backend errors: {backend.errors!r}")


@contextlib.contextmanager
def uwsgi_source(name: str, kwargs: dict[str, Any]) -> Iterator[Running]:
    """uwsgi front-end ``name`` in front of the CaptureBackend reading uwsgi packets."""
    notes: list[str] = []
    with CaptureBackend(read=read_uwsgi_request, response=UWSGI_CAPTURE_RESPONSE) as backend:
        with UWSGI_FRONTENDS[name](backend.backend, **kwargs) as fe:
            yield fe, lambda: [(raw, "") for raw in backend.pop_all()], notes
        if backend.errors:
            notes.append(f"backend errors: {backend.errors!r}")


@contextlib.contextmanager
def fastcgi_source(name: str, kwargs: dict[str, Any]) -> Iterator[Running]:
    """FastCGI front-end ``name`` in front of the FastCGI capture backend."""
    notes: list[str] = []
    with FcgiCaptureBackend() as backend:

        def pop() -> Popped:
            return [
                (c.raw, f"connection {c.connection}, id {c.request_id}") for c in backend.pop_all()
            ]

        with FASTCGI_FRONTENDS[name](backend.backend, **kwargs) as fe:
            yield fe, pop, notes
        if backend.errors:
            notes.append(f"backend errors: {backend.errors!r}")
        if backend.aborted:
            notes.append(f"aborted: {[(a.connection, a.request_id) for a in backend.aborted]}")
        endings = {e: backend.endings.count(e) for e in sorted(set(backend.endings))}
        notes.append(f"{backend.connections} connection(s); ended by the front-end: {endings}")


@contextlib.contextmanager
def fcgid_source(name: str, kwargs: dict[str, Any]) -> Iterator[Running]:
    """Apache mod_fcgid spawning tests/fcgi_capture.py, which writes each request to a file.

    The program runs as Apache's user (``www-data`` when we are root) with our group:
    its output directory is group-writable.
    """
    python, env = python_for_apache_user()
    with socket_dir() as outdir:
        outdir.chmod(0o770)
        command = [python, str(HERE / "fcgi_capture.py"), str(outdir)]
        with run_apache_fcgid(command, env=env, **kwargs) as fe:

            def pop() -> Popped:
                got = []
                for f in sorted(outdir.glob("*.fcgi")):
                    got.append((f.read_bytes(), f"process {f.stem.split('-')[0]}"))
                    f.unlink()
                return got

            yield fe, pop, []


SOURCES: dict[str, dict[str, Source]] = {
    "scgi": {name: scgi_source for name in FRONTENDS},
    "fastcgi": {
        **{name: fastcgi_source for name in FASTCGI_FRONTENDS},
        "fcgid": fcgid_source,
    },
    "uwsgi": {name: uwsgi_source for name in UWSGI_FRONTENDS},
}
SUFFIX = {"scgi": ".scgi", "fastcgi": ".fcgi", "uwsgi": ".uwsgi"}
# Which requests each protocol's front-ends get (the SCGI captures predate encoded-path).
PROTOCOL_REQUESTS = {"scgi": REQUESTS, "fastcgi": FASTCGI_REQUESTS, "uwsgi": FASTCGI_REQUESTS}

# Extra runs: (protocol, front-end, keyword arguments, {variant in the run: name in the file}).
EXTRA_RUNS: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
    # lighttpd's "/" mount without "fix-root-scriptname": SCRIPT_NAME = first segment.
    ("scgi", "lighttpd", {"fix_root": False}, {"root": "rootnofix"}),
    ("fastcgi", "lighttpd", {"fix_root": False}, {"root": "rootnofix"}),
    # The fast set-ups: connections kept open between requests.
    ("fastcgi", "nginx", {"keep_conn": True}, {"stock": "keep"}),
    ("fastcgi", "apache", {"reuse": True}, {"root": "reuse"}),
    # HAProxy's connection options (keep-conn is on by default). With the default
    # "http-reuse safe", each new client connection gets a new backend connection:
    # "always" lets the next request reuse (and, with mpxs-conns, share) one.
    (
        "fastcgi",
        "haproxy",
        {"mpxs_conns": True, "max_reqs": 8, "http_reuse": "always"},
        {"root": "mpxs"},
    ),
    ("fastcgi", "haproxy", {"get_values": True}, {"root": "getvalues"}),
    ("fastcgi", "haproxy", {"keep_conn": False}, {"root": "nokeep"}),
]


def capture(
    name: str,
    out: Path,
    kwargs: dict[str, Any] | None = None,
    rename: dict[str, str] | None = None,
    *,
    protocol: str = "scgi",
) -> list[str]:
    """Capture every request through every variant of front-end ``name``; return a report."""
    report = []
    suffix = SUFFIX[protocol]
    with SOURCES[protocol][name](name, kwargs or {}) as (fe, pop, notes):
        for variant, prefix in fe.variants.items():
            if rename is not None:
                if variant not in rename:
                    continue
                variant = rename[variant]  # noqa: PLW2901
            for what, send in PROTOCOL_REQUESTS[protocol].items():
                pop()
                resp = send(fe, prefix)
                got = pop()
                fname = f"{name}-{variant}-{what}{suffix}"
                if resp.status == 200 and len(got) == 1:
                    raw, where = got[0]
                    (out / fname).write_bytes(raw)
                    report.append(f"{fname}: {len(raw)} bytes" + (f" ({where})" if where else ""))
                else:
                    (out / fname).unlink(missing_ok=True)
                    report.append(
                        f"{fname}: NOT captured: HTTP {resp.status} {resp.reason},"
                        f" {len(got)} request(s) reached the backend"
                    )
    label = f"{name} {kwargs}" if kwargs else name
    return report + [f"{label}: {note}" for note in notes]


# cgi-fcgi is a client, not an HTTP front-end: it sends its own environment as PARAMS
# and its stdin as STDIN. These are the CGI variables a CGI front-end would set.
CGI_FCGI_REQUESTS: dict[str, tuple[dict[str, str], bytes]] = {
    "get-query": (
        {
            "REQUEST_METHOD": "GET",
            "REQUEST_URI": "/echo/path?a=1&b=two%20words&a=3&empty=&plus=x+y",
            "SCRIPT_NAME": "",
            "PATH_INFO": "/echo/path",
            "QUERY_STRING": "a=1&b=two%20words&a=3&empty=&plus=x+y",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "40000",
            "HTTP_HOST": "localhost",
            "HTTP_ACCEPT": "text/plain",
        },
        b"",
    ),
    "post-form": (
        {
            "REQUEST_METHOD": "POST",
            "REQUEST_URI": "/form",
            "SCRIPT_NAME": "",
            "PATH_INFO": "/form",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "40001",
            "HTTP_HOST": "localhost",
            "CONTENT_TYPE": "application/x-www-form-urlencoded",
            "CONTENT_LENGTH": str(len(FORM)),
        },
        FORM,
    ),
    # A body of several records: how libfcgi splits STDIN (8184-byte records).
    "big-body": (
        {
            "REQUEST_METHOD": "PUT",
            "REQUEST_URI": "/big",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_TYPE": "application/octet-stream",
            "CONTENT_LENGTH": "20000",
        },
        bytes(range(256)) * 78 + b"x" * 32,
    ),
}


def capture_cgi_fcgi(out: Path) -> list[str]:
    """libfcgi's ``cgi-fcgi -bind -connect`` as the client: ``cgifcgi-bind-<what>.fcgi``."""
    report = []
    with FcgiCaptureBackend() as backend:
        for what, (environ, body) in CGI_FCGI_REQUESTS.items():
            stdout = cgi_fcgi(backend.backend, environ, body)
            got = backend.pop_all()
            fname = f"cgifcgi-bind-{what}.fcgi"
            if stdout.startswith(b"Status: 200 OK") and len(got) == 1:
                (out / fname).write_bytes(got[0].raw)
                report.append(f"{fname}: {len(got[0].raw)} bytes")
            else:
                report.append(f"{fname}: NOT captured: {stdout[:80]!r}, {len(got)} request(s)")
        if backend.errors:
            report.append(f"backend errors: {backend.errors!r}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--protocol",
        choices=sorted(SOURCES),
        action="append",
        help="only this protocol's front-ends (default: all)",
    )
    every = sorted({*FRONTENDS, *SOURCES["fastcgi"], *SOURCES["uwsgi"], "cgifcgi"})
    parser.add_argument("frontends", nargs="*", default=every, help=f"any of {every}")
    args = parser.parse_args(argv)
    unknown = set(args.frontends) - set(every)
    if unknown:
        parser.error(f"unknown front-end(s) {sorted(unknown)}; choose from {every}")
    args.out.mkdir(parents=True, exist_ok=True)
    for protocol in args.protocol or list(SOURCES):
        for name in args.frontends:
            if name == "cgifcgi" and protocol == "fastcgi":
                report = capture_cgi_fcgi(args.out)
            elif name in SOURCES[protocol]:
                report = capture(name, args.out, protocol=protocol)
                for extra_protocol, extra, kwargs, rename in EXTRA_RUNS:
                    if (extra_protocol, extra) == (protocol, name):
                        report += capture(name, args.out, kwargs, rename, protocol=protocol)
            else:
                continue
            for line in report:
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
