"""Capture the raw SCGI requests that real nginx, Apache and lighttpd send.

Run from the repository root: ``python tests/capture_requests.py [--out DIR] [FRONTEND...]``.
Writes ``<frontend>-<variant>-<what>.scgi`` files (see tests/data/captures/README.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from frontends import (
    FRONTENDS,
    CaptureBackend,
    FrontEnd,
    HTTPResponse,
    parse_raw_response,
    raw_http,
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


REQUESTS: dict[str, Callable[[FrontEnd, str], HTTPResponse]] = {
    "get-query": get_query,
    "post-form": post_form,
    "dup-headers": dup_headers,
    "odd-headers": odd_headers,
    "odd-path": odd_path,
    "chunked": chunked,
}


# Extra runs: (front-end, keyword arguments, {variant in the run: name in the file}).
EXTRA_RUNS: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    # lighttpd's "/" mount without "fix-root-scriptname": SCRIPT_NAME = whole path.
    ("lighttpd", {"fix_root": False}, {"root": "rootnofix"}),
]


def capture(
    name: str, out: Path, kwargs: dict[str, Any] | None = None, rename: dict[str, str] | None = None
) -> list[str]:
    """Capture every request through every variant of front-end ``name``; return a report."""
    report = []
    with CaptureBackend() as backend, FRONTENDS[name](backend.backend, **(kwargs or {})) as fe:
        for variant, prefix in fe.variants.items():
            if rename is not None:
                if variant not in rename:
                    continue
                variant = rename[variant]  # noqa: PLW2901
            for what, send in REQUESTS.items():
                backend.pop_all()
                resp = send(fe, prefix)
                got = backend.pop_all()
                fname = f"{name}-{variant}-{what}.scgi"
                if resp.status == 200 and len(got) == 1:
                    (out / fname).write_bytes(got[0])
                    report.append(f"{fname}: {len(got[0])} bytes")
                else:
                    (out / fname).unlink(missing_ok=True)
                    report.append(
                        f"{fname}: NOT captured: HTTP {resp.status} {resp.reason},"
                        f" {len(got)} request(s) reached the backend"
                    )
        if backend.errors:
            report.append(f"backend errors: {backend.errors!r}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("frontends", nargs="*", default=list(FRONTENDS))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.frontends:
        for line in capture(name, args.out):
            print(line)
        for extra, kwargs, rename in EXTRA_RUNS:
            if extra == name:
                for line in capture(name, args.out, kwargs, rename):
                    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
