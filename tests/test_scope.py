"""The ASGI scope built from the environs real front-ends send (trioscgi._asgi.scope)."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest
from fcgi_capture import GET_VALUES, STDIN, FcgiRequest, decode_pairs, parse_fcgi
from hypothesis import event, given
from hypothesis import strategies as st

from trioscgi._apps.wsgi_environ import build_environ
from trioscgi._asgi.scope import ScopeError, http_scope, request_target
from trioscgi.scgi import Connection, Request

Environ = list[tuple[bytes, bytes]]


def pairs(*items: tuple[str, str]) -> Environ:
    return [(k.encode(), v.encode("utf-8", "surrogateescape")) for k, v in items]


def nginx_stock(
    uri: str = "/hello?x=1",
    *,
    method: str = "GET",
    length: str = "0",
    content_type: str = "",
    extra: Environ | None = None,
) -> Environ:
    """What nginx 1.22 sends with Debian's stock scgi_params (no SCRIPT_NAME, no PATH_INFO)."""
    path, _, query = uri.partition("?")
    return pairs(
        ("CONTENT_LENGTH", length),
        ("REQUEST_METHOD", method),
        ("REQUEST_URI", uri),
        ("QUERY_STRING", query),
        ("CONTENT_TYPE", content_type),
        ("DOCUMENT_URI", path),
        ("DOCUMENT_ROOT", "/usr/share/nginx/html"),
        ("SCGI", "1"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "51234"),
        ("SERVER_PORT", "8080"),
        ("SERVER_NAME", "localhost"),
        ("HTTP_HOST", "localhost"),
        ("HTTP_USER_AGENT", "curl/7.88.1"),
        ("HTTP_ACCEPT", "*/*"),
    ) + (extra or [])


def scope_of(environ: Environ, root_path: str = "", state: dict[str, Any] | None = None) -> Any:
    return http_scope(environ, root_path=root_path, state=state)


# --- nginx, stock scgi_params --------------------------------------------------------------


def test_nginx_stock_get() -> None:
    environ = nginx_stock()
    scope = scope_of(environ)
    assert scope == {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/hello",
        "raw_path": b"/hello",
        "query_string": b"x=1",
        "root_path": "",
        "headers": [
            (b"host", b"localhost"),
            (b"user-agent", b"curl/7.88.1"),
            (b"accept", b"*/*"),
        ],
        "client": ("127.0.0.1", 51234),
        "server": ("localhost", 8080),
        "extensions": {"scgi": {"environ": environ}},
    }


def test_nginx_post_with_body_and_duplicate_length_headers() -> None:
    environ = nginx_stock(
        "/form",
        method="POST",
        length="11",
        content_type="application/x-www-form-urlencoded",
        extra=pairs(
            ("HTTP_CONTENT_TYPE", "application/x-www-form-urlencoded"),
            ("HTTP_CONTENT_LENGTH", "11"),
        ),
    )
    scope = scope_of(environ)
    assert scope["method"] == "POST"
    assert scope["query_string"] == b""
    assert scope["headers"] == [
        (b"host", b"localhost"),
        (b"user-agent", b"curl/7.88.1"),
        (b"accept", b"*/*"),
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"content-length", b"11"),
    ]


def test_nginx_chunked_request_drops_transfer_encoding() -> None:
    # nginx buffers and de-chunks; CONTENT_LENGTH is the real length but
    # HTTP_TRANSFER_ENCODING: chunked is still passed.
    environ = nginx_stock(
        "/up", method="PUT", length="5", extra=pairs(("HTTP_TRANSFER_ENCODING", "chunked"))
    )
    headers = scope_of(environ)["headers"]
    assert (b"content-length", b"5") in headers
    assert all(name != b"transfer-encoding" for name, _ in headers)


def test_nginx_before_1_23_repeats_cookie() -> None:
    environ = nginx_stock(extra=pairs(("HTTP_COOKIE", "a=1"), ("HTTP_COOKIE", "b=2")))
    headers = scope_of(environ)["headers"]
    assert [v for n, v in headers if n == b"cookie"] == [b"a=1", b"b=2"]


def test_nginx_https_and_http2() -> None:
    environ = nginx_stock(extra=pairs(("HTTPS", "on")))
    environ = [
        (k, b"https" if k == b"REQUEST_SCHEME" else b"HTTP/2.0" if k == b"SERVER_PROTOCOL" else v)
        for k, v in environ
    ]
    scope = scope_of(environ)
    assert scope["scheme"] == "https"
    assert scope["http_version"] == "2"


# --- nginx location with SCRIPT_NAME / PATH_INFO ------------------------------------------


def test_nginx_location_with_script_name_and_path_info() -> None:
    environ = nginx_stock("/app/items/%C3%A9t%C3%A9?q=1") + pairs(
        ("SCRIPT_NAME", "/app"), ("PATH_INFO", "/items/été")
    )
    scope = scope_of(environ)
    assert scope["root_path"] == "/app"
    assert scope["path"] == "/app/items/été"
    assert scope["raw_path"] == b"/app/items/%C3%A9t%C3%A9"
    assert scope["query_string"] == b"q=1"


# --- Apache mod_proxy_scgi ----------------------------------------------------------------


def apache(uri: str, script_name: str) -> Environ:
    """Apache 2.4 mod_proxy_scgi for `ProxyPass /app/ scgi://127.0.0.1:4000/`."""
    path, _, query = uri.partition("?")
    return pairs(
        ("CONTENT_LENGTH", "0"),
        ("SCGI", "1"),
        ("HTTP_HOST", "localhost:8081"),
        ("HTTP_USER_AGENT", "curl/7.88.1"),
        ("HTTP_ACCEPT", "*/*"),
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("SERVER_SIGNATURE", "<address>Apache/2.4.62 (Debian)</address>\n"),
        ("SERVER_SOFTWARE", "Apache/2.4.62 (Debian)"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_ADDR", "127.0.0.1"),
        ("SERVER_PORT", "8081"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("DOCUMENT_ROOT", "/var/www/html"),
        ("REQUEST_SCHEME", "http"),
        ("CONTEXT_PREFIX", ""),
        ("CONTEXT_DOCUMENT_ROOT", "/var/www/html"),
        ("SERVER_ADMIN", "webmaster@localhost"),
        ("SCRIPT_FILENAME", "proxy:scgi://127.0.0.1:4000/" + path[5:]),
        ("REMOTE_PORT", "40000"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_METHOD", "GET"),
        ("QUERY_STRING", query),
        ("REQUEST_URI", uri),
        ("SCRIPT_NAME", script_name),
    )


def test_apache_script_name_is_never_root_path() -> None:
    scope = scope_of(apache("/app/a%2Fb?x=%20", "/app/a/b"))
    assert scope["root_path"] == ""
    assert scope["path"] == "/app/a/b"
    assert scope["raw_path"] == b"/app/a%2Fb"
    assert scope["query_string"] == b"x=%20"
    assert scope["server"] == ("127.0.0.1", 8081)
    assert scope["client"] == ("127.0.0.1", 40000)
    assert scope["headers"][0] == (b"host", b"localhost:8081")


def test_apache_with_configured_root_path() -> None:
    scope = scope_of(apache("/app/a%2Fb", "/app/a/b"), root_path="/app/")
    assert (scope["root_path"], scope["path"]) == ("/app", "/app/a/b")


def test_apache_absolute_form_target() -> None:
    scope = scope_of(apache("http://localhost:8081/app/x?y=1", "/app/x"))
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == (
        "/app/x",
        b"/app/x",
        b"y=1",
    )


# --- lighttpd mod_scgi --------------------------------------------------------------------


def lighttpd(uri: str, script_name: str, path_info: str | None) -> Environ:
    """lighttpd 1.4 for scgi.server = ("/app" => ...): prefix split, empty values skipped."""
    query = uri.partition("?")[2]
    items = [
        ("CONTENT_LENGTH", "0"),
        ("SERVER_SOFTWARE", "lighttpd/1.4.69"),
        ("SERVER_NAME", "localhost"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("SERVER_PORT", "8082"),
        ("SERVER_ADDR", "127.0.0.1"),
        ("REMOTE_ADDR", "::1"),
        ("REMOTE_PORT", "40001"),
        ("SCRIPT_NAME", script_name),
    ]
    if path_info is not None:
        items.append(("PATH_INFO", path_info))
    if query:
        items.append(("QUERY_STRING", query))
    items += [
        ("REQUEST_URI", uri),
        ("REDIRECT_STATUS", "200"),
        ("SERVER_PROTOCOL", "HTTP/1.0"),
        ("REQUEST_METHOD", "get"),
        ("HTTP_HOST", "localhost:8082"),
        ("HTTP_X_WITH_UNDERSCORE", "kept"),
        ("SCGI", "1"),
    ]
    return pairs(*items)


def test_lighttpd_prefix_split() -> None:
    scope = scope_of(lighttpd("/app/x%20y?a=b", "/app", "/x y"))
    assert scope["root_path"] == "/app"
    assert scope["path"] == "/app/x y"
    assert scope["raw_path"] == b"/app/x%20y"
    assert scope["query_string"] == b"a=b"
    assert scope["method"] == "GET"
    assert scope["http_version"] == "1.0"
    assert scope["client"] == ("::1", 40001)
    assert (b"x-with-underscore", b"kept") in scope["headers"]


def test_lighttpd_without_query_has_empty_query_string() -> None:
    # lighttpd skips empty values: no QUERY_STRING at all.
    assert scope_of(lighttpd("/app/x", "/app", "/x"))["query_string"] == b""


# --- request_target directly --------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "root", "expected"),
    [
        ({b"REQUEST_URI": b"/"}, "", ("", "/", b"/", b"")),
        ({b"REQUEST_URI": b"/a?"}, "", ("", "/a", b"/a", b"")),
        ({b"REQUEST_URI": b"/a?b?c"}, "", ("", "/a", b"/a", b"b?c")),
        ({b"REQUEST_URI": b"/app"}, "/app", ("/app", "/app", b"/app", b"")),
        ({b"REQUEST_URI": b"/application"}, "/app", ("", "/application", b"/application", b"")),
        ({b"REQUEST_URI": b"/other"}, "/app", ("", "/other", b"/other", b"")),
        ({b"REQUEST_URI": b"/caf%E9"}, "", ("", "/caf\ufffd", b"/caf%E9", b"")),
        ({b"REQUEST_URI": b"*"}, "", ("", "*", b"*", b"")),
        ({b"REQUEST_URI": b"https://h"}, "", ("", "/", b"/", b"")),
        ({b"PATH_INFO": b"/a b", b"SCRIPT_NAME": b""}, "", ("", "/a b", b"/a%20b", b"")),
        ({b"PATH_INFO": b"/x", b"SCRIPT_NAME": b"/s"}, "", ("/s", "/s/x", b"/s/x", b"")),
        # The configured root wins over SCRIPT_NAME ("/" = mounted at the root).
        ({b"PATH_INFO": b"/x", b"SCRIPT_NAME": b"/s"}, "/", ("", "/s/x", b"/s/x", b"")),
        ({b"PATH_INFO": b"/x", b"SCRIPT_NAME": b"/s"}, "/cfg", ("", "/s/x", b"/s/x", b"")),
        ({b"PATH_INFO": b"/s/x", b"SCRIPT_NAME": b""}, "/s", ("/s", "/s/x", b"/s/x", b"")),
        ({b"PATH_INFO": b"/cfg/x"}, "/cfg", ("/cfg", "/cfg/x", b"/cfg/x", b"")),
        ({b"SCRIPT_NAME": b"/p q"}, "", ("", "/p q", b"/p%20q", b"")),
        ({b"DOCUMENT_URI": b"/d", b"QUERY_STRING": b"z"}, "", ("", "/d", b"/d", b"z")),
        # lighttpd decodes %2e in QUERY_STRING: REQUEST_URI's query is the raw one.
        ({b"REQUEST_URI": b"/?q=%2e", b"QUERY_STRING": b"q=."}, "", ("", "/", b"/", b"q=%2e")),
        ({b"REQUEST_URI": b"/", b"QUERY_STRING": b"q"}, "", ("", "/", b"/", b"")),
    ],
)
def test_request_target(
    env: dict[bytes, bytes], root: str, expected: tuple[str, str, bytes, bytes]
) -> None:
    assert request_target(env, root) == expected


@pytest.mark.parametrize(
    "env",
    [{}, {b"REQUEST_URI": b""}, {b"REQUEST_URI": b"a/b"}, {b"REQUEST_URI": b"://x/"}],
)
def test_request_target_refuses(env: dict[bytes, bytes]) -> None:
    with pytest.raises(ScopeError):
        request_target(env, "")


# --- the other fields ---------------------------------------------------------------------


def test_missing_or_empty_method_is_a_scope_error() -> None:
    environ = [(k, v) for k, v in nginx_stock() if k != b"REQUEST_METHOD"]
    with pytest.raises(ScopeError, match="REQUEST_METHOD"):
        scope_of(environ)
    with pytest.raises(ScopeError, match="REQUEST_METHOD"):
        scope_of([*environ, (b"REQUEST_METHOD", b"")])


@pytest.mark.parametrize("method", ["GET /", "G\u00c9T", "GE\tT", "(GET)"])
def test_method_that_is_not_a_token_is_a_scope_error(method: str) -> None:
    with pytest.raises(ScopeError, match="not an HTTP token"):
        scope_of(nginx_stock(method=method))


@pytest.mark.parametrize(("method", "expected"), [("get", "GET"), ("PROPFIND", "PROPFIND")])
def test_method_is_upper_case(method: str, expected: str) -> None:
    assert scope_of(nginx_stock(method=method))["method"] == expected


def test_bad_content_length_is_a_scope_error() -> None:
    with pytest.raises(ScopeError, match="CONTENT_LENGTH"):
        scope_of(nginx_stock(length="-1"))


@pytest.mark.parametrize(
    ("method", "length", "content_type", "expected"),
    [
        ("GET", "0", "", []),
        ("GET", "3", "", [(b"content-length", b"3")]),
        ("POST", "0", "", [(b"content-length", b"0")]),
        ("DELETE", "0", "text/plain", [(b"content-type", b"text/plain")]),
        ("PUT", "00", "a/b", [(b"content-type", b"a/b"), (b"content-length", b"00")]),
    ],
)
def test_content_headers(
    method: str, length: str, content_type: str, expected: list[tuple[bytes, bytes]]
) -> None:
    environ = pairs(
        ("CONTENT_LENGTH", length),
        ("REQUEST_METHOD", method),
        ("REQUEST_URI", "/"),
        ("CONTENT_TYPE", content_type),
    )
    assert scope_of(environ)["headers"] == expected


@pytest.mark.parametrize(
    ("extra", "scheme"),
    [
        ({}, "http"),
        ({"HTTPS": "on"}, "https"),
        ({"HTTPS": "ON"}, "https"),
        ({"HTTPS": "1"}, "https"),
        ({"HTTPS": "off"}, "http"),
        ({"REQUEST_SCHEME": "HTTPS"}, "https"),
        ({"REQUEST_SCHEME": "http", "HTTPS": "on"}, "http"),
        ({"REQUEST_SCHEME": "gopher", "HTTPS": "on"}, "https"),
    ],
)
def test_scheme(extra: dict[str, str], scheme: str) -> None:
    environ = pairs(("CONTENT_LENGTH", "0"), ("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/"))
    assert scope_of(environ + pairs(*extra.items()))["scheme"] == scheme


@pytest.mark.parametrize(
    ("protocol", "version"),
    [(None, "1.1"), ("HTTP/1.0", "1.0"), ("HTTP/1.1", "1.1"), ("HTTP/2", "2"), ("XYZ", "1.1")],
)
def test_http_version(protocol: str | None, version: str) -> None:
    environ = pairs(("CONTENT_LENGTH", "0"), ("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/"))
    if protocol is not None:
        environ += pairs(("SERVER_PROTOCOL", protocol))
    assert scope_of(environ)["http_version"] == version


@pytest.mark.parametrize(
    ("extra", "client", "server"),
    [
        ({}, None, None),
        ({"REMOTE_ADDR": "10.0.0.1"}, ("10.0.0.1", 0), None),
        ({"REMOTE_ADDR": "10.0.0.1", "REMOTE_PORT": "x1"}, ("10.0.0.1", 0), None),
        ({"REMOTE_ADDR": "10.0.0.1", "REMOTE_PORT": "123456"}, ("10.0.0.1", 0), None),
        ({"SERVER_NAME": "example.org"}, None, ("example.org", None)),
        ({"SERVER_NAME": "n", "SERVER_ADDR": "::1", "SERVER_PORT": "443"}, None, ("::1", 443)),
        ({"SERVER_NAME": "n", "SERVER_PORT": " 80"}, None, ("n", None)),
        # nginx with no server_name: SERVER_NAME empty; HTTP_HOST ($host) names the server.
        (
            {"SERVER_NAME": "", "SERVER_PORT": "8080", "HTTP_HOST": "127.0.0.1"},
            None,
            ("127.0.0.1", 8080),
        ),
        ({"HTTP_HOST": "example.org:8443", "SERVER_PORT": "443"}, None, ("example.org", 443)),
        ({"HTTP_HOST": "[::1]:8080", "SERVER_PORT": "8080"}, None, ("::1", 8080)),
        ({"HTTP_HOST": "example.org"}, None, ("example.org", None)),
        # SERVER_ADDR, then SERVER_NAME, win over the Host header.
        ({"SERVER_NAME": "n", "HTTP_HOST": "h", "SERVER_PORT": "80"}, None, ("n", 80)),
        ({"SERVER_ADDR": "::1", "HTTP_HOST": "h", "SERVER_PORT": "80"}, None, ("::1", 80)),
        ({"SERVER_NAME": "", "HTTP_HOST": ""}, None, None),
    ],
)
def test_client_and_server(
    extra: dict[str, str], client: tuple[str, int] | None, server: tuple[str, int | None] | None
) -> None:
    environ = pairs(("CONTENT_LENGTH", "0"), ("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/"))
    scope = scope_of(environ + pairs(*extra.items()))
    assert (scope["client"], scope["server"]) == (client, server)


def test_header_name_mapping() -> None:
    environ = pairs(
        ("CONTENT_LENGTH", "0"),
        ("REQUEST_METHOD", "GET"),
        ("REQUEST_URI", "/"),
        ("HTTP_X_FORWARDED_FOR", "1.2.3.4"),
        ("HTTP_ACCEPT_LANGUAGE", "fr"),
        ("HTTP_", "nameless"),
        ("HTTP_X_EMPTY", ""),
        ("HTTPS", "on"),
    )
    assert scope_of(environ)["headers"] == [
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"accept-language", b"fr"),
        (b"x-empty", b""),
    ]


def test_header_name_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from trioscgi._asgi import scope as _scope

    monkeypatch.setattr(_scope, "_NAMES", dict(_scope._NAMES))
    many = [(f"HTTP_X_H{i}".encode(), b"v") for i in range(3 * _scope._NAME_CACHE_MAX)]
    for _ in range(2):  # second round: past the bound, names are worked out, not stored
        headers = scope_of([(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/"), *many])["headers"]
        assert headers == [(f"x-h{i}".encode(), b"v") for i in range(3 * _scope._NAME_CACHE_MAX)]
        assert len(_scope._NAMES) == _scope._NAME_CACHE_MAX


def test_state_is_a_shallow_copy_and_absent_without_lifespan() -> None:
    shared = {"db": object()}
    state = {"pool": shared}
    scope = scope_of(nginx_stock(), state=state)
    assert scope["state"] == state
    assert scope["state"] is not state
    assert scope["state"]["pool"] is shared
    assert "state" not in scope_of(nginx_stock())


def test_scopes_share_no_mutable_parts() -> None:
    first, second = scope_of(nginx_stock()), scope_of(nginx_stock())
    first["asgi"]["version"] = "2.0"
    first["headers"].append((b"x", b"y"))
    assert second["asgi"]["version"] == "3.0"
    assert (b"x", b"y") not in second["headers"]


# --- FastCGI ------------------------------------------------------------------------------


def test_fastcgi_params_go_in_their_own_extension() -> None:
    params = nginx_stock()
    scope = http_scope(params, root_path="", state=None, wire="fastcgi")
    assert scope["extensions"] == {"fastcgi": {"params": params}}
    assert scope["extensions"]["fastcgi"]["params"] is params
    # The same pairs over SCGI: the SCGI key, nothing else differs.
    scgi = scope_of(params)
    assert scgi["extensions"] == {"scgi": {"environ": params}}
    assert {k: v for k, v in scope.items() if k != "extensions"} == {
        k: v for k, v in scgi.items() if k != "extensions"
    }


def test_missing_method_advice_names_the_protocol_params() -> None:
    # nginx without `include fastcgi_params;` sends HTTP_* only.
    with pytest.raises(ScopeError, match="include fastcgi_params"):
        http_scope(pairs(("HTTP_HOST", "h")), root_path="", state=None, wire="fastcgi")
    with pytest.raises(ScopeError, match="include scgi_params"):
        scope_of(pairs(("CONTENT_LENGTH", "0"), ("HTTP_HOST", "h")))


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_empty_content_length_means_absent(method: str) -> None:
    # nginx's fastcgi_params: `CONTENT_LENGTH $content_length`, empty on a GET and on a
    # chunked upload with `fastcgi_request_buffering off` (the body is the STDIN stream).
    environ = nginx_stock(method=method, length="", content_type="text/plain")
    environ += pairs(("HTTP_TRANSFER_ENCODING", "chunked"))
    notes: list[str] = []
    scope = http_scope(environ, root_path="", state=None, notes=notes, wire="fastcgi")
    assert [h for h in scope["headers"] if h[0].startswith(b"content-")] == [
        (b"content-type", b"text/plain")
    ]
    assert all(n != b"transfer-encoding" for n, _ in scope["headers"])
    assert notes == []


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        # HAProxy's fcgi-app: SERVER_NAME = the Host header, port and all; no SERVER_ADDR.
        ("example.org:8080", "example.org"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:8080", "::1"),
        ("[::1]", "::1"),
        ("example.org:", "example.org"),
        ("example.org", "example.org"),
        # Not a host:port: left as it is.
        ("::1", "::1"),
        ("a:b", "a:b"),
        ("[::1", "[::1"),
    ],
)
def test_server_name_loses_its_port(server_name: str, expected: str) -> None:
    environ = pairs(
        ("REQUEST_METHOD", "GET"),
        ("REQUEST_URI", "/"),
        ("SERVER_NAME", server_name),
        ("SERVER_PORT", "8080"),
    )
    assert scope_of(environ)["server"] == (expected, 8080)


def test_server_addr_is_never_cut() -> None:
    environ = pairs(
        ("REQUEST_METHOD", "GET"),
        ("REQUEST_URI", "/"),
        ("SERVER_ADDR", "::1"),
        ("SERVER_NAME", "example.org:8080"),
        ("SERVER_PORT", "8080"),
    )
    assert scope_of(environ)["server"] == ("::1", 8080)


# --- property -------------------------------------------------------------------------------

_KNOWN = [
    "REQUEST_URI",
    "PATH_INFO",
    "SCRIPT_NAME",
    "QUERY_STRING",
    "DOCUMENT_URI",
    "CONTENT_LENGTH",
    "CONTENT_TYPE",
    "REQUEST_SCHEME",
    "HTTPS",
    "SERVER_PROTOCOL",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "SERVER_ADDR",
    "SERVER_NAME",
    "SERVER_PORT",
    "HTTP_HOST",
    "HTTP_COOKIE",
    "HTTP_CONTENT_LENGTH",
    "HTTP_TRANSFER_ENCODING",
    "HTTP_",
]
_printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF), max_size=30)
_path_like = st.builds(
    lambda parts, q: "/" + "/".join(parts) + q,
    st.lists(st.text("ab%2Fé?./", max_size=6), max_size=4),
    st.sampled_from(["", "?", "?a=1"]),
)
_value = st.one_of(_printable, _path_like, st.sampled_from(["0", "12", "on", "https", "/app"]))
_name = st.one_of(st.sampled_from(_KNOWN), _printable.filter(bool))


@given(
    items=st.lists(st.tuples(_name, _value), max_size=12),
    method=st.one_of(st.sampled_from(["GET", "post"]), _printable),
    uri=st.one_of(st.none(), _path_like),
    root_path=st.one_of(_printable, st.sampled_from(["", "/app", "/app/", "/"])),
    with_state=st.booleans(),
    wire=st.sampled_from(["scgi", "fastcgi", "uwsgi"]),
)
def test_any_printable_environ_gives_a_scope_or_a_scope_error(
    *,
    items: list[tuple[str, str]],
    method: str,
    uri: str | None,
    root_path: str,
    with_state: bool,
    wire: str,
) -> None:
    if uri is not None:
        items = [("REQUEST_URI", uri), *items]
    environ = pairs(("REQUEST_METHOD", method), *items)
    try:
        scope = http_scope(
            environ, root_path=root_path, state={} if with_state else None, wire=wire
        )
    except ScopeError as error:
        assert str(error)
        event("ScopeError")
        return
    event("scope")
    assert scope["path"].startswith(scope["root_path"])
    assert scope["method"] == scope["method"].upper() != ""
    assert isinstance(scope["raw_path"], bytes)
    assert isinstance(scope["query_string"], bytes)
    assert scope["scheme"] in ("http", "https")
    extensions = dict(scope["extensions"])
    # The TLS extension is there exactly when the request came over TLS (test_scope_tls.py).
    assert (extensions.pop("tls", None) is not None) == (scope["scheme"] == "https")
    if wire == "fastcgi":
        assert extensions == {"fastcgi": {"params": environ}}
    else:
        assert extensions == {wire: {"environ": environ}}
    for name, value in scope["headers"]:
        assert name == name.lower() != b""
        assert b"_" not in name
        assert isinstance(value, bytes)
    # The WSGI builder gets the same answer from the same variables.
    env = dict(environ)
    assert request_target(env, root_path) == (
        scope["root_path"],
        scope["path"],
        scope["raw_path"],
        scope["query_string"],
    )


# --- captured requests (tests/data/captures, see its README) --------------------------------

CAPTURES = Path(__file__).parent / "data" / "captures"
_ODD_RAW = b"/p/a%2Fb/x/%2e%2e/caf%C3%A9/\xc3\xbc"
_QUERY = b"a=1&b=two%20words&a=3&empty=&plus=x+y"


def captured_environ(name: str) -> Environ:
    conn = Connection()
    conn.receive_data((CAPTURES / f"{name}.scgi").read_bytes())
    event = conn.next_event()
    assert isinstance(event, Request)
    return event.environ


@pytest.mark.parametrize("name", sorted(p.stem for p in CAPTURES.glob("*.scgi")))
def test_every_capture_gives_a_consistent_scope(name: str) -> None:
    environ = captured_environ(name)
    if name.startswith("nginx-noparams-"):
        # No scgi_params: no REQUEST_METHOD, no REQUEST_URI. 400 with advice.
        with pytest.raises(ScopeError, match="scgi_params"):
            scope_of(environ)
        return
    scope = scope_of(environ)
    assert scope["path"].startswith(scope["root_path"])
    assert scope["scheme"] == "http"
    assert scope["http_version"] == "1.1"
    assert scope["client"][0] == "127.0.0.1"
    assert isinstance(scope["client"][1], int)
    assert isinstance(scope["server"][1], int)
    names = [n for n, _ in scope["headers"]]
    assert b"host" in names
    assert b"transfer-encoding" not in names
    assert names.count(b"content-length") <= 1
    assert names.count(b"content-type") <= 1
    assert scope["extensions"]["scgi"]["environ"] is environ


@pytest.mark.parametrize(
    ("name", "root_path", "expected"),
    [
        ("nginx-stock-get-query", "", ("", "/echo/path", b"/echo/path", _QUERY)),
        ("nginx-prefix-get-query", "", ("/app", "/app/echo/path", b"/app/echo/path", _QUERY)),
        ("apache-root-get-query", "", ("", "/echo/path", b"/echo/path", _QUERY)),
        # Apache's SCRIPT_NAME is the whole path: root_path only from the config.
        ("apache-prefix-get-query", "", ("", "/app/echo/path", b"/app/echo/path", _QUERY)),
        ("apache-prefix-get-query", "/app", ("/app", "/app/echo/path", b"/app/echo/path", _QUERY)),
        ("lighttpd-root-get-query", "", ("", "/echo/path", b"/echo/path", _QUERY)),
        ("lighttpd-prefix-get-query", "", ("/app", "/app/echo/path", b"/app/echo/path", _QUERY)),
        # lighttpd at "/" without fix-root-scriptname sends SCRIPT_NAME=/echo: the trap;
        # root_path = "/" in the config puts it right.
        ("lighttpd-rootnofix-get-query", "", ("/echo", "/echo/path", b"/echo/path", _QUERY)),
        ("lighttpd-rootnofix-get-query", "/", ("", "/echo/path", b"/echo/path", _QUERY)),
        # Raw target: %2F and %2e%2e stay in raw_path; the path nginx-stock and Apache give
        # is REQUEST_URI decoded, not normalised; with PATH_INFO it is the front-end's.
        ("nginx-stock-odd-path", "", ("", "/p/a/b/x/../café/ü", _ODD_RAW, b"q=%2F%2e%2e")),
        ("apache-root-odd-path", "", ("", "/p/a/b/x/../café/ü", _ODD_RAW, b"q=%2F%2e%2e")),
        (
            "nginx-prefix-odd-path",
            "",
            ("/app", "/app/p/a/b/café/ü", b"/app" + _ODD_RAW, b"q=%2F%2e%2e"),
        ),
        # lighttpd's QUERY_STRING is "q=%2F.." (it decoded %2e): the raw query wins.
        ("lighttpd-root-odd-path", "", ("", "/p/a/b/café/ü", _ODD_RAW, b"q=%2F%2e%2e")),
    ],
)
def test_capture_paths(name: str, root_path: str, expected: tuple[str, str, bytes, bytes]) -> None:
    scope = scope_of(captured_environ(name), root_path)
    assert (scope["root_path"], scope["path"], scope["raw_path"], scope["query_string"]) == expected
    assert scope["method"] == "GET"


@pytest.mark.parametrize(
    ("name", "cookies", "dups"),
    [
        # nginx 1.22 repeats duplicate headers; Apache and lighttpd join them.
        ("nginx-stock-dup-headers", [b"a=1", b"b=2"], [b"first", b"second"]),
        ("apache-root-dup-headers", [b"a=1, b=2"], [b"first, second"]),
        ("lighttpd-root-dup-headers", [b"a=1; b=2"], [b"first, second"]),
    ],
)
def test_capture_duplicate_headers(name: str, cookies: list[bytes], dups: list[bytes]) -> None:
    headers = scope_of(captured_environ(name))["headers"]
    assert [v for n, v in headers if n == b"cookie"] == cookies
    assert [v for n, v in headers if n == b"x-dup"] == dups


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # nginx and Apache drop names with "_" and pass empty values; lighttpd the reverse.
        ("nginx-stock-odd-headers", [(b"x-empty", b""), (b"x-spaces", b"a  b")]),
        ("apache-root-odd-headers", [(b"x-empty", b""), (b"x-spaces", b"a  b")]),
        ("lighttpd-root-odd-headers", [(b"x-under-score", b"underscore"), (b"x-spaces", b"a  b")]),
    ],
)
def test_capture_odd_headers(name: str, expected: list[tuple[bytes, bytes]]) -> None:
    headers = scope_of(captured_environ(name))["headers"]
    assert [h for h in headers if h[0].startswith(b"x-")] == expected


@pytest.mark.parametrize(
    "name",
    ["nginx-stock-post-form", "apache-root-post-form", "lighttpd-root-post-form"],
)
def test_capture_post_form_content_headers(name: str) -> None:
    scope = scope_of(captured_environ(name))
    assert scope["method"] == "POST"
    content = [(n, v) for n, v in scope["headers"] if n.startswith(b"content-")]
    assert content == [
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"content-length", b"46"),
    ]


@pytest.mark.parametrize("name", ["nginx-stock-chunked", "lighttpd-root-chunked"])
def test_capture_chunked_is_announced_by_its_real_length(name: str) -> None:
    headers = scope_of(captured_environ(name))["headers"]
    assert (b"content-length", b"19") in headers
    assert all(n != b"transfer-encoding" for n, _ in headers)


def test_capture_nginx_get_has_no_content_headers() -> None:
    # nginx sends CONTENT_TYPE="" and CONTENT_LENGTH=0 on a GET.
    headers = scope_of(captured_environ("nginx-stock-get-query"))["headers"]
    assert all(not n.startswith(b"content-") for n, _ in headers)


# --- captured FastCGI requests (tests/data/captures/*.fcgi, see its README) -----------------

FCGI_CAPTURES = sorted(p.stem for p in CAPTURES.glob("*.fcgi"))
_ENCODED_RAW = b"/p/a%2Fb/x/%2e%2e/caf%C3%A9"
_ODD_QUERY = b"q=%2F%2e%2e"


def captured_request(name: str) -> FcgiRequest:
    return parse_fcgi((CAPTURES / f"{name}.fcgi").read_bytes())


def fcgi_scope(name: str, root_path: str = "") -> Any:
    return http_scope(
        captured_request(name).params, root_path=root_path, state=None, wire="fastcgi"
    )


def wsgi_split(scope: Any) -> tuple[str, str]:
    """SCRIPT_NAME and PATH_INFO of the WSGI environ built from ``scope``, back in UTF-8."""
    environ = build_environ(scope, io.BytesIO(), sys.stderr, False)
    script_name, path_info = environ["SCRIPT_NAME"], environ["PATH_INFO"]
    return (
        script_name.encode("latin-1").decode("utf-8"),
        path_info.encode("latin-1").decode("utf-8"),
    )


def test_there_are_fastcgi_captures_of_every_front_end() -> None:
    front_ends = {name.split("-", 1)[0] for name in FCGI_CAPTURES}
    assert front_ends == {"nginx", "apache", "lighttpd", "haproxy", "fcgid", "cgifcgi"}


@pytest.mark.parametrize("name", FCGI_CAPTURES)
def test_every_fastcgi_capture_gives_a_consistent_scope(name: str) -> None:
    request = captured_request(name)
    assert request.role == 1  # RESPONDER, from every front-end
    params = request.params
    if name.startswith("nginx-noparams-"):
        # No fastcgi_params: HTTP_* only (not even CONTENT_LENGTH). 400 with advice.
        assert all(n.startswith(b"HTTP_") for n, _ in params)
        with pytest.raises(ScopeError, match="fastcgi_params"):
            http_scope(params, root_path="", state=None, wire="fastcgi")
        return
    scope = http_scope(params, root_path="", state=None, wire="fastcgi")
    assert scope["extensions"] == {"fastcgi": {"params": params}}
    assert scope["extensions"]["fastcgi"]["params"] is params
    assert scope["path"].startswith(scope["root_path"])
    assert scope["scheme"] == "http"
    assert scope["http_version"] == "1.1"
    assert scope["client"][0] == "127.0.0.1"
    if scope["server"] is not None:  # cgi-fcgi's big-body request names no server
        assert ":" not in scope["server"][0]  # HAProxy's SERVER_NAME has the port
        assert isinstance(scope["server"][1], int)
    names = [n for n, _ in scope["headers"]]
    assert b"transfer-encoding" not in names
    assert names.count(b"content-length") <= 1
    assert names.count(b"content-type") <= 1
    # The body is the STDIN stream; when CONTENT_LENGTH is given, it is its length.
    length = [v for n, v in scope["headers"] if n == b"content-length"]
    if length:
        assert int(length[0]) == len(request.stdin)
    # WSGI splits the same path the same way.
    assert wsgi_split(scope) == (
        scope["root_path"],
        scope["path"][len(scope["root_path"]) :],
    )


@pytest.mark.parametrize(
    ("name", "root_path", "expected"),
    [
        # nginx's stock fastcgi_params: SCRIPT_NAME = the whole path, no PATH_INFO.
        ("nginx-stock-get-query", "", ("", "/echo/path", b"/echo/path", _QUERY)),
        ("nginx-stock-get-query", "/echo", ("/echo", "/echo/path", b"/echo/path", _QUERY)),
        ("nginx-keep-get-query", "", ("", "/echo/path", b"/echo/path", _QUERY)),
        ("nginx-stock-odd-path", "", ("", "/p/a/b/x/../café/ü", _ODD_RAW, _ODD_QUERY)),
        # fastcgi_split_path_info: SCRIPT_NAME = /app, PATH_INFO = the (normalised) rest.
        ("nginx-prefix-get-query", "", ("/app", "/app/echo/path", b"/app/echo/path", _QUERY)),
        (
            "nginx-prefix-odd-path",
            "",
            ("/app", "/app/p/a/b/café/ü", b"/app" + _ODD_RAW, _ODD_QUERY),
        ),
        # Apache mod_proxy_fcgi: SCRIPT_NAME = the whole path, prefix or not.
        ("apache-root-get-query", "", ("", "/echo/path", b"/echo/path", _QUERY)),
        ("apache-prefix-get-query", "", ("", "/app/echo/path", b"/app/echo/path", _QUERY)),
        ("apache-prefix-get-query", "/app", ("/app", "/app/echo/path", b"/app/echo/path", _QUERY)),
        ("apache-root-odd-path", "", ("", "/p/a/b/x/../café/ü", _ODD_RAW, _ODD_QUERY)),
        # lighttpd mod_fastcgi: as mod_scgi, the "/" trap included.
        ("lighttpd-root-get-query", "", ("", "/echo/path", b"/echo/path", _QUERY)),
        ("lighttpd-prefix-get-query", "", ("/app", "/app/echo/path", b"/app/echo/path", _QUERY)),
        ("lighttpd-rootnofix-get-query", "", ("/echo", "/echo/path", b"/echo/path", _QUERY)),
        ("lighttpd-rootnofix-get-query", "/", ("", "/echo/path", b"/echo/path", _QUERY)),
        ("lighttpd-root-odd-path", "", ("", "/p/a/b/café/ü", _ODD_RAW, _ODD_QUERY)),
        # HAProxy: SCRIPT_NAME = the whole decoded (not normalised) path; with `path-info`
        # the regex's two captures. It answers 400 to odd-path's raw UTF-8 byte.
        ("haproxy-root-get-query", "", ("", "/echo/path", b"/echo/path", _QUERY)),
        ("haproxy-prefix-get-query", "", ("/app", "/app/echo/path", b"/app/echo/path", _QUERY)),
        ("haproxy-root-encoded-path", "", ("", "/p/a/b/x/../café", _ENCODED_RAW, _ODD_QUERY)),
        (
            "haproxy-prefix-encoded-path",
            "",
            ("/app", "/app/p/a/b/x/../café", b"/app" + _ENCODED_RAW, _ODD_QUERY),
        ),
        # mod_fcgid: SCRIPT_NAME = the script's URL (or the Alias), PATH_INFO = the rest.
        (
            "fcgid-script-get-query",
            "",
            ("/x/index.fcgi", "/x/index.fcgi/echo/path", b"/x/index.fcgi/echo/path", _QUERY),
        ),
        ("fcgid-alias-get-query", "", ("/app", "/app/echo/path", b"/app/echo/path", _QUERY)),
        # Apache with AllowEncodedSlashes NoDecode leaves %2F encoded in PATH_INFO.
        (
            "fcgid-script-odd-path",
            "",
            (
                "/x/index.fcgi",
                "/x/index.fcgi/p/a%2Fb/café/ü",
                b"/x/index.fcgi" + _ODD_RAW,
                _ODD_QUERY,
            ),
        ),
        # The configured root_path wins over mod_fcgid's SCRIPT_NAME (fcgisgi's
        # force_script_name), and applies only inside it.
        ("fcgid-alias-get-query", "/", ("", "/app/echo/path", b"/app/echo/path", _QUERY)),
        ("cgifcgi-bind-get-query", "", ("", "/echo/path", b"/echo/path", _QUERY)),
    ],
)
def test_fastcgi_capture_paths(
    name: str, root_path: str, expected: tuple[str, str, bytes, bytes]
) -> None:
    scope = fcgi_scope(name, root_path)
    assert (scope["root_path"], scope["path"], scope["raw_path"], scope["query_string"]) == expected
    assert scope["method"] == "GET"
    assert wsgi_split(scope) == (expected[0], expected[1][len(expected[0]) :])


def test_fastcgi_wsgi_environ_under_mod_fcgid() -> None:
    scope = fcgi_scope("fcgid-script-get-query")
    environ = build_environ(scope, io.BytesIO(), sys.stderr, False)
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/x/index.fcgi", "/echo/path")
    assert environ["SCRIPT_FILENAME"].endswith("/cgi/index.fcgi")  # raw params are kept
    assert environ["QUERY_STRING"] == _QUERY.decode()


def test_fastcgi_wsgi_environ_under_stock_nginx() -> None:
    # The params say SCRIPT_NAME=/echo/path; WSGI gets what the ASGI scope has.
    scope = fcgi_scope("nginx-stock-get-query")
    assert (b"SCRIPT_NAME", b"/echo/path") in scope["extensions"]["fastcgi"]["params"]
    environ = build_environ(scope, io.BytesIO(), sys.stderr, False)
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("", "/echo/path")
    assert "CONTENT_LENGTH" not in environ  # nginx's empty one
    assert "CONTENT_TYPE" not in environ


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # A GET: nginx sends CONTENT_LENGTH and CONTENT_TYPE empty, Apache no
        # CONTENT_LENGTH, lighttpd, HAProxy and mod_fcgid "0": no content headers.
        ("nginx-stock-get-query", []),
        ("apache-root-get-query", []),
        ("lighttpd-root-get-query", []),
        ("haproxy-root-get-query", []),
        ("fcgid-script-get-query", []),
        *[
            (
                f"{fe}-post-form",
                [
                    (b"content-type", b"application/x-www-form-urlencoded"),
                    (b"content-length", b"46"),
                ],
            )
            for fe in (
                "nginx-stock",
                "apache-root",
                "lighttpd-root",
                "haproxy-root",
                "fcgid-script",
            )
        ],
        # Buffered chunked uploads arrive with their de-chunked length.
        (
            "nginx-stock-chunked",
            [(b"content-type", b"application/octet-stream"), (b"content-length", b"19")],
        ),
        (
            "apache-root-chunked",
            [(b"content-type", b"application/octet-stream"), (b"content-length", b"19")],
        ),
        (
            "haproxy-root-chunked",
            [(b"content-type", b"application/octet-stream"), (b"content-length", b"19")],
        ),
        # nginx with fastcgi_request_buffering off: CONTENT_LENGTH empty, the body is
        # streamed as STDIN records.
        ("nginx-unbuffered-chunked", [(b"content-type", b"application/octet-stream")]),
    ],
)
def test_fastcgi_capture_content_headers(name: str, expected: list[tuple[bytes, bytes]]) -> None:
    scope = fcgi_scope(name)
    assert [h for h in scope["headers"] if h[0].startswith(b"content-")] == expected


def test_unbuffered_nginx_streams_a_chunked_body_as_stdin_records() -> None:
    request = captured_request("nginx-unbuffered-chunked")
    assert (b"CONTENT_LENGTH", b"") in request.params
    assert (b"HTTP_TRANSFER_ENCODING", b"chunked") in request.params
    assert request.stdin == b"hello chunked world"
    assert request.records[STDIN] == 4  # one record per chunk, then the empty one


@pytest.mark.parametrize(
    ("name", "cookies", "dups"),
    [
        # nginx 1.22 and HAProxy repeat duplicate headers; Apache and lighttpd join them.
        ("nginx-stock-dup-headers", [b"a=1", b"b=2"], [b"first", b"second"]),
        ("haproxy-root-dup-headers", [b"a=1", b"b=2"], [b"first", b"second"]),
        ("apache-root-dup-headers", [b"a=1, b=2"], [b"first, second"]),
        ("fcgid-script-dup-headers", [b"a=1, b=2"], [b"first, second"]),
        ("lighttpd-root-dup-headers", [b"a=1; b=2"], [b"first, second"]),
    ],
)
def test_fastcgi_capture_duplicate_headers(
    name: str, cookies: list[bytes], dups: list[bytes]
) -> None:
    headers = fcgi_scope(name)["headers"]
    assert [v for n, v in headers if n == b"cookie"] == cookies
    assert [v for n, v in headers if n == b"x-dup"] == dups


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # Names with "_": dropped by all but lighttpd, which skips empty values instead.
        ("nginx-stock-odd-headers", [(b"x-empty", b""), (b"x-spaces", b"a  b")]),
        ("apache-root-odd-headers", [(b"x-empty", b""), (b"x-spaces", b"a  b")]),
        ("haproxy-root-odd-headers", [(b"x-empty", b""), (b"x-spaces", b"a  b")]),
        ("fcgid-script-odd-headers", [(b"x-empty", b""), (b"x-spaces", b"a  b")]),
        ("lighttpd-root-odd-headers", [(b"x-under-score", b"underscore"), (b"x-spaces", b"a  b")]),
    ],
)
def test_fastcgi_capture_odd_headers(name: str, expected: list[tuple[bytes, bytes]]) -> None:
    headers = fcgi_scope(name)["headers"]
    assert [h for h in headers if h[0].startswith(b"x-")] == expected


def test_haproxy_server_name_carries_the_port() -> None:
    request = captured_request("haproxy-root-get-query")
    params = dict(request.params)
    port = params[b"SERVER_PORT"]
    assert params[b"SERVER_NAME"] == b"127.0.0.1:" + port
    assert b"SERVER_ADDR" not in params
    assert b"REQUEST_SCHEME" not in params
    assert fcgi_scope("haproxy-root-get-query")["server"] == ("127.0.0.1", int(port))


def test_mod_fcgid_adds_connection_close() -> None:
    # The client sent no Connection header; mod_fcgid passes HTTP_CONNECTION=close.
    assert (b"connection", b"close") in fcgi_scope("fcgid-script-get-query")["headers"]
    assert all(n != b"connection" for n, _ in fcgi_scope("apache-root-get-query")["headers"])


@pytest.mark.parametrize(
    ("prefix", "flags", "ids"),
    [
        # KEEP_CONN only where the config asks for it; HAProxy asks by default.
        ("nginx-stock-", 0, {1}),
        ("nginx-keep-", 1, {1}),
        ("apache-root-", 0, {1}),
        ("apache-reuse-", 1, {1}),
        ("lighttpd-root-", 0, {1}),
        ("fcgid-script-", 0, {1}),
        ("cgifcgi-bind-", 0, {1}),
        ("haproxy-root-", 1, {1}),
        ("haproxy-nokeep-", 0, {1}),
        # With http-reuse always, the next request on a kept connection gets the next odd id.
        ("haproxy-mpxs-", 1, {1, 3, 5, 7, 9, 11}),
    ],
)
def test_fastcgi_captures_keep_conn_flags_and_request_ids(
    prefix: str, flags: int, ids: set[int]
) -> None:
    requests = [captured_request(n) for n in FCGI_CAPTURES if n.startswith(prefix)]
    assert requests
    assert {r.flags for r in requests} == {flags}
    assert {r.request_id for r in requests} <= ids
    if len(ids) > 1:
        assert len({r.request_id for r in requests}) > 1


def test_haproxy_get_values_asks_before_the_first_request() -> None:
    request = captured_request("haproxy-getvalues-get-query")
    [get_values] = request.management
    assert get_values.type == GET_VALUES
    assert decode_pairs(get_values.content) == [(b"FCGI_MAX_REQS", b""), (b"FCGI_MPXS_CONNS", b"")]


# --- what the operator should hear about -----------------------------------------------------


def _notes(environ: Environ) -> list[str]:
    notes: list[str] = []
    http_scope(environ, root_path="", state=None, notes=notes)
    return notes


def test_truncated_body_from_unbuffered_nginx_is_noted() -> None:
    # nginx < 1.29.6, scgi_request_buffering off: CONTENT_LENGTH is what had arrived.
    environ = nginx_stock(
        "/upload", method="POST", length="5", extra=pairs(("HTTP_CONTENT_LENGTH", "10"))
    )
    [note] = _notes(environ)
    assert "CONTENT_LENGTH 5" in note
    assert "'10'" in note
    assert "scgi_request_buffering" in note
    # Served all the same, with the length the front-end vouches for.
    assert (b"content-length", b"5") in scope_of(environ)["headers"]


@pytest.mark.parametrize(
    "extra",
    [
        pairs(("HTTP_CONTENT_LENGTH", "5")),  # nginx with buffering: both agree
        pairs(),  # no client Content-Length at all
        # A chunked body: nginx de-chunks it; any client Content-Length is not the length.
        pairs(("HTTP_TRANSFER_ENCODING", "chunked"), ("HTTP_CONTENT_LENGTH", "3")),
    ],
)
def test_consistent_lengths_are_not_noted(extra: Environ) -> None:
    assert _notes(nginx_stock("/upload", method="POST", length="5", extra=extra)) == []


def test_notes_are_optional() -> None:
    environ = nginx_stock(
        "/u", method="POST", length="5", extra=pairs(("HTTP_CONTENT_LENGTH", "9"))
    )
    assert scope_of(environ)["method"] == "POST"


# --- uwsgi: nginx's PATH_INFO keeps the prefix; Apache's does not ---------------------------

# The mount point of each uwsgi capture family (tests/frontends.py's configs).
_UWSGI_PREFIXES = {
    "nginx-stock": "",
    "nginx-prefix": "/app",
    "nginx-prefix30": "/m30",
    "nginx-unbuffered": "/unbuffered",
    "apache-root": "",
    "apache-prefix": "/app",
}


def uwsgi_scope(name: str, root_path: str = "") -> Any:
    from trioscgi import uwsgi

    conn = uwsgi.Connection()
    conn.receive_data((CAPTURES / f"{name}.uwsgi").read_bytes())
    event = conn.next_event()
    assert isinstance(event, uwsgi.Request)
    return http_scope(event.environ, root_path=root_path, state=None, wire="uwsgi")


@pytest.mark.parametrize("name", sorted(p.stem for p in CAPTURES.glob("*.uwsgi")))
def test_uwsgi_capture_path_is_the_mount_point_and_the_stock_path(name: str) -> None:
    """Under a prefix, the scope is the prefix + what the same request gets at the root:
    nginx's PATH_INFO ($document_uri) starts with the prefix, with modifier1 0 or 30;
    Apache's is already split."""
    family, _, case = name.rpartition("-")
    if family.endswith(("-dup", "-get", "-odd", "-post", "-encoded")):
        family, _, first = family.rpartition("-")
        case = f"{first}-{case}"
    prefix = _UWSGI_PREFIXES[family]
    root = "apache-root" if family.startswith("apache") else "nginx-stock"
    scope = uwsgi_scope(name)
    assert scope["root_path"] == prefix
    assert scope["path"] == prefix + uwsgi_scope(f"{root}-{case}")["path"]
    assert scope["raw_path"].startswith(prefix.encode())
    assert "uwsgi" in scope["extensions"]


def test_uwsgi_prefix_stripped_once_from_nginx_and_never_from_apache() -> None:
    def scope(script_name: str, path_info: str, **more: str) -> Any:
        pairs = [
            (b"REQUEST_METHOD", b"GET"),
            (b"REQUEST_URI", b"/app/app/x"),
            (b"SCRIPT_NAME", script_name.encode()),
            (b"PATH_INFO", path_info.encode()),
            *((k.encode(), v.encode()) for k, v in more.items()),
        ]
        return http_scope(pairs, root_path="", state=None, wire="uwsgi")

    # nginx, `uwsgi_param SCRIPT_NAME /app`: PATH_INFO is $document_uri.
    nginx = scope("/app", "/app/app/x")
    assert (nginx["root_path"], nginx["path"]) == ("/app", "/app/app/x")
    # A trailing slash on the configured SCRIPT_NAME changes nothing.
    slash = scope("/app/", "/app/app/x")
    assert (slash["root_path"], slash["path"]) == ("/app", "/app/app/x")
    # Apache mod_proxy_uwsgi splits the pair itself.
    apache = scope("/app", "/app/x", SERVER_SOFTWARE="Apache/2.4.71 (Debian)")
    assert (apache["root_path"], apache["path"]) == ("/app", "/app/app/x")
    # The mount point itself: PATH_INFO empty.
    top = scope("/app", "/app")
    assert (top["root_path"], top["path"]) == ("/app", "/app")
    # Not at a segment boundary: not the prefix.
    other = scope("/app", "/apple")
    assert other["path"] == "/app/apple"
    # SCGI and FastCGI: PATH_INFO is what follows SCRIPT_NAME (lighttpd), never stripped.
    pairs = [(b"REQUEST_METHOD", b"GET"), (b"SCRIPT_NAME", b"/app"), (b"PATH_INFO", b"/app/x")]
    assert http_scope(pairs, root_path="", state=None)["path"] == "/app/app/x"


def test_uwsgi_wsgi_environ_splits_at_the_prefix() -> None:
    scope = uwsgi_scope("nginx-prefix-get-query")
    environ = build_environ(scope, io.BytesIO(), sys.stderr, False)
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/app", "/echo/path")
    assert environ["DOCUMENT_ROOT"]  # the other vars pass through
