"""Access-log atoms and the logger they write to."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import pytest

from trioscgi import Config
from trioscgi._accesslog import AccessLogger, compile_format


def scope(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": "/app/caf\u00e9",
        "raw_path": b"/app/caf%C3%A9",
        "query_string": b"a=1&b=%20",
        "root_path": "/app",
        "headers": [
            (b"host", b"example.org"),
            (b"user-agent", b"curl/8.0"),
            (b"referer", b"https://example.org/"),
            (b"x-dup", b"one"),
            (b"x-dup", b"two"),
        ],
        "client": ("203.0.113.9", 51234),
        "server": ("127.0.0.1", 8080),
    }
    base.update(overrides)
    return base


def line(fmt: str, the_scope: dict[str, Any] | None = None, **kw: Any) -> str:
    logger = AccessLogger(fmt)
    args = {"status": 201, "size": 1234, "duration": 1.25, **kw}
    return logger.format(the_scope if the_scope is not None else scope(), **args)


@pytest.mark.parametrize(
    ("atom", "expected"),
    [
        ("h", "203.0.113.9"),
        ("l", "-"),
        ("u", "-"),
        ("r", "POST /app/caf%C3%A9?a=1&b=%20 HTTP/1.1"),
        ("R", "/app/caf%C3%A9?a=1&b=%20"),
        ("m", "POST"),
        ("U", "/app/caf\u00e9"),
        ("q", "a=1&b=%20"),
        ("H", "HTTP/1.1"),
        ("S", "https"),
        ("s", "201"),
        ("st", "Created"),
        ("b", "1234"),
        ("B", "1234"),
        ("f", "https://example.org/"),
        ("a", "curl/8.0"),
        ("T", "1"),
        ("D", "1250000"),
        ("L", "1.250000"),
        ("p", str(os.getpid())),
        ("{host}i", "example.org"),
        ("{Host}i", "example.org"),
        ("{x-dup}i", "one"),
        ("{x-missing}i", "-"),
    ],
)
def test_atoms(atom: str, expected: str) -> None:
    assert line(f"%({atom})s") == expected


def test_time_atom_looks_like_common_log_format() -> None:
    assert re.fullmatch(r"\[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]", line("%(t)s"))


def test_environment_atom(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIOSCGI_TEST_NODE", "node-7")
    monkeypatch.delenv("TRIOSCGI_TEST_ABSENT", raising=False)
    assert line("%({TRIOSCGI_TEST_NODE}e)s %({TRIOSCGI_TEST_ABSENT}e)s") == "node-7 -"


def test_missing_pieces_of_the_scope() -> None:
    bare = scope(client=None, raw_path=None, query_string=b"", headers=[])
    assert line("%(h)s %(r)s %(a)s %(f)s", bare) == "- POST /app/caf\u00e9 HTTP/1.1 - -"


def test_zero_bytes_and_unknown_status() -> None:
    assert line("%(b)s %(B)s %(st)s", size=0, status=599) == "- 0 -"


def test_default_format() -> None:
    assert line(Config().access_log_format) == (
        '203.0.113.9 "POST /app/caf%C3%A9?a=1&b=%20 HTTP/1.1" 201 1234 1250000'
    )


def test_other_conversions_and_literal_percent() -> None:
    assert line("%(s)d %(D)08d 100%%") == "201 01250000 100%"


@pytest.mark.parametrize(
    ("fmt", "error"),
    [
        ("%(nope)s", "unknown atom %(nope)s"),
        ("%({}i)s", "empty name"),
        ("%(s)s %", "invalid format"),
        ("%(h)d", "invalid format"),
    ],
)
def test_bad_formats(fmt: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        compile_format(fmt)


def test_log_writes_to_the_access_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = AccessLogger("%(m)s %(s)s")
    with caplog.at_level(logging.INFO, logger="trioscgi.access"):
        logger.log(scope(), 404, 0, 0.01)
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("trioscgi.access", "POST 404")]


def test_log_is_silent_when_the_logger_is_off(caplog: pytest.LogCaptureFixture) -> None:
    logger = AccessLogger("%(m)s")
    with caplog.at_level(logging.WARNING, logger="trioscgi.access"):
        logger.log(scope(), 200, 1, 0.01)
    assert caplog.records == []


def test_percent_in_request_is_not_reformatted(caplog: pytest.LogCaptureFixture) -> None:
    # A client-controlled "%s" in the path must reach the log as written.
    logger = AccessLogger("%(U)s")
    with caplog.at_level(logging.INFO, logger="trioscgi.access"):
        logger.log(scope(path="/%s%(h)s"), 200, 1, 0.01)
    assert caplog.records[0].getMessage() == "/%s%(h)s"
