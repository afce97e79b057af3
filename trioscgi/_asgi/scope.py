"""Turn SCGI or uwsgi vars or FastCGI params into an ASGI HTTP scope (pure functions: no I/O).

The path rules live in :func:`request_target`, shared with the WSGI environ builder so that
``root_path``/``path`` (ASGI) and ``SCRIPT_NAME``/``PATH_INFO`` (WSGI) always agree. Every
front-end quirk lives here, with the front-end named; docs/fastcgi-frontends.md,
docs/uwsgi-frontends.md and tests/data/captures/README.md show what each front-end sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote_from_bytes, unquote_to_bytes

__all__ = ["ScopeError", "http_scope", "request_target", "tls_extension"]


class ScopeError(Exception):
    """The environ cannot make a scope; the server answers 400 and logs ``str(error)``."""


# SERVER_PROTOCOL -> ASGI http_version. nginx says "HTTP/2.0" for HTTP/2 and "HTTP/3.0" for
# HTTP/3; anything unknown (or absent) is treated as "1.1", the protocol SCGI front-ends speak.
_HTTP_VERSIONS = {
    b"HTTP/1.1": "1.1",
    b"HTTP/1.0": "1.0",
    b"HTTP/2.0": "2",
    b"HTTP/2": "2",
    b"HTTP/3.0": "3",
    b"HTTP/3": "3",
}

# REQUEST_SCHEME (nginx, Apache and lighttpd all send it), lower-cased -> ASGI scheme.
_SCHEMES = {b"http": "http", b"https": "https"}

# Interned method strings for the common methods (saves a decode + upper per request).
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}

# RFC 9110 tchar: what a method may be made of.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# Methods whose requests carry a body by definition: for them "CONTENT_LENGTH: 0" is a fact
# worth passing on (an empty form POST); for the others SCGI's mandatory "0" means "no body",
# not "the client sent Content-Length: 0", so it is left out.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

# Environ name -> ASGI header name, cached: HTTP_X_FOO -> b"x-foo"; b"" for a CGI variable
# and for the HTTP_* names we don't pass on as headers (those stay CGI variables). Bounded,
# because a client chooses header names: past _NAME_CACHE_MAX entries new names are worked
# out per request and not stored.
_NAME_CACHE_MAX = 512
_NAMES: dict[bytes, bytes] = {
    # Duplicates of CONTENT_LENGTH / CONTENT_TYPE (nginx passes the client's header as well
    # as the CGI variable); the CGI variables are the ones the front-end vouches for.
    b"HTTP_CONTENT_LENGTH": b"",
    b"HTTP_CONTENT_TYPE": b"",
    # nginx de-chunks the body itself and passes HTTP_TRANSFER_ENCODING: chunked anyway;
    # CONTENT_LENGTH is the real length, so the app must not see a chunked body announced.
    b"HTTP_TRANSFER_ENCODING": b"",
    # "HTTP_" alone names no header.
    b"HTTP_": b"",
}
# The one header http_scope looks at itself (by identity: the cached name object).
_UPGRADE = b"upgrade"
_NAMES |= {
    b"HTTP_UPGRADE": _UPGRADE,
}


def _header_name(name: bytes) -> bytes:
    # HTTP_X_FOO -> b"x-foo". nginx and Apache drop client header names containing "_", so
    # there "_" always stands for "-"; lighttpd passes them, and "X_Foo" and "X-Foo" both
    # arrive as HTTP_X_FOO (joined with ", " if both were sent): nothing here can tell.
    header = name[5:].lower().replace(b"_", b"-") if name.startswith(b"HTTP_") else b""
    if len(_NAMES) < _NAME_CACHE_MAX:
        _NAMES[name] = header
    return header


# RFC 3986 pchar plus "/": what a path may carry unescaped (used to rebuild raw_path when the
# front-end sent no REQUEST_URI).
_PATH_SAFE = "/:@!$&'()*+,;=~"


def _origin_path(target: bytes) -> bytes:
    """The path part of a raw request target (query already removed).

    nginx sends origin-form only (it strips the scheme and authority of an absolute-form
    target itself); Apache copies the request line's target verbatim, so absolute-form
    (``http://host/p``) can arrive and is reduced to its path here. ``*`` (``OPTIONS *``) is
    kept as is. Anything else is not a request target.
    """
    if target.startswith(b"/") or target == b"*":
        return target
    scheme_end = target.find(b"://")
    if scheme_end > 0 and target[:scheme_end].isalpha():
        path_start = target.find(b"/", scheme_end + 3)
        return target[path_start:] if path_start >= 0 else b"/"
    raise ScopeError(f"REQUEST_URI {target[:200]!r} is neither a path nor an absolute URI")


def request_target(env: Mapping[bytes, bytes], root_path: str) -> tuple[str, str, bytes, bytes]:
    """Work out where a request goes, with the rules every front-end needs.

    - ``path``: with ``PATH_INFO`` present (lighttpd mod_scgi and mod_fastcgi; an nginx
      location that sets SCRIPT_NAME and PATH_INFO or uses ``fastcgi_split_path_info``;
      Apache mod_fcgid, where SCRIPT_NAME is the script's URL; HAProxy's ``path-info``),
      ``SCRIPT_NAME + PATH_INFO``, both already decoded (and normalised, except by HAProxy)
      by the front-end. Apache with ``AllowEncodedSlashes NoDecode`` leaves ``%2F`` encoded
      in them, so the path keeps ``%2F`` (as a WSGI app under mod_fcgid sees it too).
      Otherwise the percent-decoded path of ``REQUEST_URI``, not normalised (``%2e%2e``
      becomes ``..``), as uvicorn and hypercorn pass what the client sent: nginx's stock
      ``scgi_params`` sends neither variable, and these send ``SCRIPT_NAME`` = the whole
      decoded path and no PATH_INFO: nginx's stock ``fastcgi_params``
      (``$fastcgi_script_name``), Apache mod_proxy_scgi and mod_proxy_fcgi, HAProxy's
      ``fcgi-app`` without ``path-info``.
    - ``root_path``: the configured one when set (``"/"`` means "mounted at the root":
      ``""``). It applies when it is a prefix of ``path`` at a ``/`` boundary; otherwise the
      request came in outside the mount point, so ``root_path`` is ``""`` and ``path`` is
      left as is. With no configured root, ``SCRIPT_NAME`` when ``PATH_INFO`` is present,
      else ``""``: a SCRIPT_NAME without PATH_INFO (the whole path, above) is never a
      root path. The configured value wins over SCRIPT_NAME because a front-end can be
      wrong: lighttpd (mod_scgi and mod_fastcgi) mounted at ``"/"`` without
      ``fix-root-scriptname`` sends the first path segment as SCRIPT_NAME.
    - ``raw_path``: ``REQUEST_URI`` without its query (the raw target: ``%2F`` intact);
      absent that, the path re-encoded.
    - ``query_string``: what follows ``?`` in ``REQUEST_URI``; ``QUERY_STRING`` only when
      there is no REQUEST_URI, because lighttpd decodes ``%2e`` in QUERY_STRING.

    Args:
        env: the CGI variables (duplicates resolved; values as sent).
        root_path: the configured root path (``Config.root_path``), ``""`` for none. A
            trailing ``/`` is ignored.

    Returns:
        ``(root_path, path, raw_path, query_string)``; ``path`` starts with ``root_path``.

    Raises:
        ScopeError: no way to tell the path, or a ``REQUEST_URI`` that is not a request
            target.
    """
    uri = env.get(b"REQUEST_URI")
    if uri is not None:
        raw_path: bytes | None
        raw_path, _, query = uri.partition(b"?")
        if not raw_path.startswith(b"/"):
            raw_path = _origin_path(raw_path)
    else:
        raw_path = None
        query = env.get(b"QUERY_STRING", b"")

    path_info = env.get(b"PATH_INFO")
    if path_info is not None:
        script_name = env.get(b"SCRIPT_NAME", b"")
        full = script_name + path_info if script_name else path_info
        path = full.decode("utf-8", "replace")
        if raw_path is None:
            raw_path = quote_from_bytes(full, _PATH_SAFE).encode("ascii")
        if not root_path:
            return script_name.decode("utf-8", "replace"), path, raw_path, query
    elif raw_path is not None:
        # Invalid UTF-8 after decoding becomes U+FFFD, as in uvicorn and hypercorn (urllib's
        # unquote default): the request is still served, and raw_path keeps the exact bytes.
        # 37 is ord("%"): an int needle is `in`'s fast path on bytes (see SERVER_NAME below).
        path = (unquote_to_bytes(raw_path) if 37 in raw_path else raw_path).decode(
            "utf-8", "replace"
        )
    else:
        # No REQUEST_URI and no PATH_INFO: a hand-written front-end config. Apache's
        # SCRIPT_NAME and nginx's DOCUMENT_URI are the whole decoded path.
        decoded = env.get(b"SCRIPT_NAME") or env.get(b"DOCUMENT_URI")
        if not decoded:
            raise ScopeError("no REQUEST_URI, PATH_INFO or SCRIPT_NAME: cannot tell the path")
        path = decoded.decode("utf-8", "replace")
        raw_path = quote_from_bytes(decoded, _PATH_SAFE).encode("ascii")

    if root_path:
        root_path = root_path.rstrip("/")
        if root_path and path.startswith(root_path):
            end = len(root_path)
            if len(path) == end or path[end] == "/":
                return root_path, path, raw_path, query
    return "", path, raw_path, query


def http_scope(
    environ: list[tuple[bytes, bytes]],
    *,
    root_path: str,
    state: dict[str, Any] | None,
    notes: list[str] | None = None,
    wire: str = "scgi",
    websocket: bool = False,
) -> dict[str, Any]:
    """Build the ASGI HTTP connection scope for one SCGI, uwsgi or FastCGI request.

    With ``websocket``, a WebSocket handshake (a GET with ``Upgrade: websocket``) gets the
    ASGI ``websocket`` scope instead (``scope["type"]`` tells which).

    Args:
        environ: the request's ``(name, value)`` pairs in wire order, duplicates kept: the
            SCGI environ, the uwsgi vars, or the FastCGI PARAMS.
        root_path: the configured root path (``Config.root_path``); see
            :func:`request_target` for when it applies.
        state: the lifespan state; the scope gets a shallow copy, or no ``state`` key when
            ``None`` (no lifespan).
        notes: where to append what the operator should hear about (the request is served
            all the same); ``None`` to skip those checks.
        wire: the protocol the pairs came in: ``"scgi"``, ``"uwsgi"`` (whose front-ends
            send PATH_INFO with the prefix in it: see :func:`_uwsgi_path_info`) or
            ``"fastcgi"``. The ``extensions`` key and the advice in errors differ too.
        websocket: the wire can carry a WebSocket after a 101 (SCGI or uwsgi, with wsproto
            installed). Without it a handshake is an HTTP request and a note says why.

    Returns:
        The scope, ``extensions`` holding ``{"scgi": {"environ": environ}}``,
        ``{"uwsgi": {"environ": environ}}`` or ``{"fastcgi": {"params": environ}}``: the raw
        pairs, for apps that need a variable the scope has no field for.

    Raises:
        ScopeError: the environ cannot describe an HTTP request (no ``REQUEST_METHOD``, no
            path, a bad ``CONTENT_LENGTH``); the message says which.
    """
    env: dict[bytes, bytes] = {}
    headers: list[tuple[bytes, bytes]] = []
    header_name = _NAMES.get
    add_header = headers.append
    upgrade = None
    for name, value in environ:
        header = header_name(name)
        if header is None:
            header = _header_name(name)
        if header:
            # Values pass through as sent; nginx < 1.23 repeats a header sent twice (two
            # HTTP_COOKIE), and ASGI keeps duplicates in order.
            add_header((header, value))
            if header is _UPGRADE:
                upgrade = value
        else:
            # Names are unique by the SCGI spec; if one repeats, the last one wins.
            env[name] = value

    raw_method = env.get(b"REQUEST_METHOD")
    if not raw_method:
        # nginx without `include scgi_params;` sends only CONTENT_LENGTH and HTTP_*; without
        # `include fastcgi_params;` only HTTP_*.
        what = _WIRE_NAMES.get(wire, wire)
        raise ScopeError(
            f"the {what} request has no REQUEST_METHOD"
            f" (nginx: is `include {what.lower()}_params;` missing?)"
        )
    method = _METHODS.get(raw_method)
    if method is None:
        if raw_method.translate(None, _TCHAR):
            # Front-ends check the request line; this guards apps that echo or log the method.
            raise ScopeError(f"REQUEST_METHOD {raw_method[:40]!r} is not an HTTP token")
        method = raw_method.decode("ascii").upper()

    content_type = env.get(b"CONTENT_TYPE")
    if content_type:  # nginx sends CONTENT_TYPE="" on a GET: empty means absent.
        add_header((b"content-type", content_type))
    content_length = env.get(b"CONTENT_LENGTH")
    # Empty means absent: nginx's fastcgi_params sends `CONTENT_LENGTH $content_length`,
    # empty on a GET and on a chunked upload with `fastcgi_request_buffering off`. (A FastCGI
    # body is the STDIN stream whatever CONTENT_LENGTH says; SCGI's is always digits.)
    if content_length:
        if not content_length.isdigit():
            raise ScopeError(f"CONTENT_LENGTH {content_length[:40]!r} is not a number")
        if content_length.strip(b"0") or method in _BODY_METHODS:
            add_header((b"content-length", content_length))
        if notes is not None:
            # nginx before 1.29.6 with `scgi_request_buffering off` sends as CONTENT_LENGTH
            # only what it has received so far, and the client's own Content-Length beside
            # it: the app would get a truncated body with nothing to show for it. (A chunked
            # body has no Content-Length of the client's; nginx de-chunks it and counts.)
            announced = env.get(b"HTTP_CONTENT_LENGTH")
            if (
                announced is not None
                and announced != content_length
                and b"HTTP_TRANSFER_ENCODING" not in env
            ):
                client_says = announced[:20].decode("latin-1")
                notes.append(
                    f"the front-end sent CONTENT_LENGTH {content_length[:20].decode()} but the"
                    f" client's Content-Length was {client_says!r}: the application gets"
                    " the body as CONTENT_LENGTH frames it (nginx before 1.29.6 cuts bodies"
                    " short this way with `scgi_request_buffering off`; leave it on)"
                )

    is_websocket = False
    if upgrade is not None and b"websocket" in upgrade.lower():
        why = _no_tunnel(env, method, websocket, wire)
        if why is None:
            is_websocket = True
        elif notes is not None:
            # The app gets the handshake as a plain HTTP request (a server may ignore
            # Upgrade, RFC 9110 7.8) and answers it as it would any GET: never a 101.
            notes.append(f"a WebSocket upgrade request, served as plain HTTP: {why}")

    scheme_value = env.get(b"REQUEST_SCHEME")
    scheme = _SCHEMES.get(scheme_value.lower()) if scheme_value else None
    if scheme is None:
        # No (usable) REQUEST_SCHEME: the CGI convention, HTTPS=on (nginx, Apache) or 1.
        https = env.get(b"HTTPS")
        scheme = "https" if https and https.lower() in (b"on", b"1") else "http"

    if wire == "uwsgi":
        _uwsgi_path_info(env)
    root, path, raw_path, query = request_target(env, root_path)

    remote_addr = env.get(b"REMOTE_ADDR")
    if remote_addr:
        # ASGI wants an int port for the client; 0 when the front-end sent none we can read.
        client: tuple[str, int] | None = (
            remote_addr.decode("latin-1"),
            _port(env.get(b"REMOTE_PORT")) or 0,
        )
    else:
        client = None
    server_host = env.get(b"SERVER_ADDR")
    if not server_host:
        # nginx's scgi_params send no SERVER_ADDR, and SERVER_NAME = $server_name is
        # empty in a server block without server_name: then the Host header names the
        # server (the ASGI spec allows it), so that URLs an app builds have a host.
        server_host = env.get(b"SERVER_NAME") or _host_header(headers)
        # 58 is ord(":"). An int is `in`'s fast path on bytes: a bytes needle first fails
        # a conversion to int (a TypeError raised and cleared), ~100 ns a test.
        if server_host and 58 in server_host:
            server_host = _strip_port(server_host)
    server = (
        (server_host.decode("latin-1"), _port(env.get(b"SERVER_PORT"))) if server_host else None
    )

    scope: dict[str, Any] = {
        "type": "http",
        # ASGI 3.0, HTTP spec 2.4: send() after the connection is gone raises OSError.
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": _HTTP_VERSIONS.get(env.get(b"SERVER_PROTOCOL", b""), "1.1"),
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root,
        "headers": headers,
        "client": client,
        "server": server,
        "extensions": (
            {"fastcgi": {"params": environ}} if wire == "fastcgi" else {wire: {"environ": environ}}
        ),
    }
    if scheme == "https":
        # The front-end says its client came over TLS: the ASGI "tls" extension, which
        # must only be there for a TLS connection. (A plain-http request pays this one
        # comparison.)
        scope["extensions"]["tls"] = tls_extension(env)
    if is_websocket:
        # ASGI WebSocket scope: the HTTP one without method, with a ws scheme and the
        # client's subprotocols (Sec-WebSocket-Protocol, possibly repeated), in order.
        scope["type"] = "websocket"
        del scope["method"]
        scope["scheme"] = "wss" if scheme == "https" else "ws"
        scope["subprotocols"] = [
            token.strip()
            for name, value in headers
            if name == b"sec-websocket-protocol"
            for token in value.decode("latin-1").split(",")
            if token.strip()
        ]
        scope["extensions"]["websocket.http.response"] = {}
    if state is not None:
        scope["state"] = state.copy()
    return scope


# --------------------------------------------------------------------------- TLS

# SSL_PROTOCOL (OpenSSL's SSL_get_version(): nginx $ssl_protocol, Apache mod_ssl and
# lighttpd mod_openssl all report it) -> the protocol's version number on the wire, as the
# ASGI TLS extension wants it.
_TLS_VERSIONS: dict[bytes, int] = {
    b"SSLv3": 0x0300,
    b"TLSv1": 0x0301,
    b"TLSv1.1": 0x0302,
    b"TLSv1.2": 0x0303,
    b"TLSv1.3": 0x0304,
}

# SSL_CIPHER (OpenSSL's cipher names: nginx $ssl_cipher, Apache, lighttpd) -> the IANA
# cipher suite code (TLS Cipher Suites registry). The suites a front-end negotiates today;
# an unknown name gives None, as the extension allows. tests/test_scope.py checks each
# code against the local OpenSSL's own table (SSLContext.get_ciphers()).
_CIPHER_SUITES: dict[bytes, int] = {
    # TLS 1.3: OpenSSL uses the IANA names.
    b"TLS_AES_128_GCM_SHA256": 0x1301,
    b"TLS_AES_256_GCM_SHA384": 0x1302,
    b"TLS_CHACHA20_POLY1305_SHA256": 0x1303,
    b"TLS_AES_128_CCM_SHA256": 0x1304,
    b"TLS_AES_128_CCM_8_SHA256": 0x1305,
    # TLS 1.2 and older: ECDHE.
    b"ECDHE-ECDSA-AES128-GCM-SHA256": 0xC02B,
    b"ECDHE-ECDSA-AES256-GCM-SHA384": 0xC02C,
    b"ECDHE-RSA-AES128-GCM-SHA256": 0xC02F,
    b"ECDHE-RSA-AES256-GCM-SHA384": 0xC030,
    b"ECDHE-ECDSA-CHACHA20-POLY1305": 0xCCA9,
    b"ECDHE-RSA-CHACHA20-POLY1305": 0xCCA8,
    b"ECDHE-ECDSA-AES128-SHA256": 0xC023,
    b"ECDHE-ECDSA-AES256-SHA384": 0xC024,
    b"ECDHE-RSA-AES128-SHA256": 0xC027,
    b"ECDHE-RSA-AES256-SHA384": 0xC028,
    b"ECDHE-ECDSA-AES128-SHA": 0xC009,
    b"ECDHE-ECDSA-AES256-SHA": 0xC00A,
    b"ECDHE-RSA-AES128-SHA": 0xC013,
    b"ECDHE-RSA-AES256-SHA": 0xC014,
    # DHE.
    b"DHE-RSA-AES128-GCM-SHA256": 0x009E,
    b"DHE-RSA-AES256-GCM-SHA384": 0x009F,
    b"DHE-RSA-CHACHA20-POLY1305": 0xCCAA,
    b"DHE-RSA-AES128-SHA256": 0x0067,
    b"DHE-RSA-AES256-SHA256": 0x006B,
    b"DHE-RSA-AES128-SHA": 0x0033,
    b"DHE-RSA-AES256-SHA": 0x0039,
    # RSA key exchange.
    b"AES128-GCM-SHA256": 0x009C,
    b"AES256-GCM-SHA384": 0x009D,
    b"AES128-SHA256": 0x003C,
    b"AES256-SHA256": 0x003D,
    b"AES128-SHA": 0x002F,
    b"AES256-SHA": 0x0035,
    b"DES-CBC3-SHA": 0x000A,
}

# Apache mod_ssl (`SSLOptions +ExportCertData`) exports the client's chain as
# SSL_CLIENT_CERT_CHAIN_0, _1...: at most this many are read.
_MAX_CHAIN = 16


def _pem(value: bytes) -> str:
    """A PEM certificate as the front-end passed it, as text.

    nginx's ``$ssl_client_escaped_cert`` is URL-escaped (``-----BEGIN%20CERTIFICATE...``,
    ``%0A`` for newlines), the deprecated ``$ssl_client_cert`` starts each line after the
    first with a tab; Apache's and lighttpd's are plain PEM. Base64 has no ``%``, so a
    ``%`` means escaped.
    """
    if 37 in value:  # ord("%")
        value = unquote_to_bytes(value)
    if 9 in value:  # ord("\t")
        value = value.replace(b"\n\t", b"\n")
    return value.decode("ascii", "replace")


def tls_extension(env: Mapping[bytes, bytes]) -> dict[str, Any]:
    """The ASGI ``tls`` extension (asgiref TLS 0.2) from the front-end's ``SSL_*`` variables.

    Call it only for a request the front-end says came over TLS. What each front-end
    must be told to pass (docs/tls.md): Apache mod_ssl with
    ``SSLOptions +StdEnvVars +ExportCertData`` and lighttpd mod_openssl send the
    ``SSL_*`` variables themselves; nginx sends none, and takes ``*_param`` lines with the
    same names (``SSL_PROTOCOL $ssl_protocol``, ``SSL_CIPHER $ssl_cipher``,
    ``SSL_CLIENT_CERT $ssl_client_escaped_cert``, ``SSL_CLIENT_S_DN $ssl_client_s_dn``,
    ``SSL_CLIENT_VERIFY $ssl_client_verify``).

    The values are as trusted as every other variable the front-end sends (REMOTE_ADDR,
    HTTPS): only peers in ``trusted_peers`` (and Unix-socket peers) can connect at all.

    Returns:
        ``server_cert`` (SSL_SERVER_CERT, Apache only; else None), ``client_cert_chain``
        (SSL_CLIENT_CERT then SSL_CLIENT_CERT_CHAIN_n; empty without a client
        certificate), ``client_cert_name`` (SSL_CLIENT_S_DN or None),
        ``client_cert_error`` (None when SSL_CLIENT_VERIFY is SUCCESS, NONE or absent; its
        value else, e.g. ``FAILED:certificate has expired``), ``tls_version`` and
        ``cipher_suite`` (numbers from SSL_PROTOCOL and SSL_CIPHER; None when absent or
        unknown).
    """
    get = env.get
    chain: list[str] = []
    cert = get(b"SSL_CLIENT_CERT")
    if cert:
        chain.append(_pem(cert))
        for i in range(_MAX_CHAIN):
            link = get(b"SSL_CLIENT_CERT_CHAIN_%d" % i)
            if not link:
                break
            chain.append(_pem(link))
    server_cert = get(b"SSL_SERVER_CERT")
    name = get(b"SSL_CLIENT_S_DN")
    verify = get(b"SSL_CLIENT_VERIFY")
    protocol = get(b"SSL_PROTOCOL")
    cipher = get(b"SSL_CIPHER")
    return {
        "server_cert": _pem(server_cert) if server_cert else None,
        "client_cert_chain": chain,
        "client_cert_name": name.decode("utf-8", "replace") if name else None,
        "client_cert_error": (
            verify.decode("utf-8", "replace")
            if verify and verify not in (b"SUCCESS", b"NONE")
            else None
        ),
        "tls_version": _TLS_VERSIONS.get(protocol) if protocol else None,
        "cipher_suite": _CIPHER_SUITES.get(cipher) if cipher else None,
    }


# What a 400 for a missing REQUEST_METHOD calls the request (and its nginx params file).
_WIRE_NAMES = {"scgi": "SCGI", "fastcgi": "FastCGI", "uwsgi": "uwsgi"}


def _uwsgi_path_info(env: dict[bytes, bytes]) -> None:
    """Take SCRIPT_NAME off the front of PATH_INFO where a uwsgi front-end left it on.

    nginx's stock ``uwsgi_params`` sends ``PATH_INFO $document_uri``: the whole decoded
    path. An app under a prefix gets ``uwsgi_param SCRIPT_NAME /app``, and PATH_INFO still
    starts with ``/app`` (with ``uwsgi_modifier1 30`` too: that modifier asked uWSGI to
    strip it, as its ``manage-script-name`` option does). Apache's mod_proxy_uwsgi
    (SERVER_SOFTWARE ``Apache/...``) sends the pair already split: ``/app/app/x`` is
    SCRIPT_NAME ``/app``, PATH_INFO ``/app/x`` there, and is left alone.
    """
    script_name = env.get(b"SCRIPT_NAME")
    if not script_name:
        return  # the stock params: PATH_INFO is the path
    path_info = env.get(b"PATH_INFO")
    if path_info is None:
        return
    software = env.get(b"SERVER_SOFTWARE")
    if software and software.startswith(b"Apache"):
        return
    script_name = script_name.rstrip(b"/")
    end = len(script_name)
    # 47 is ord("/"): the prefix ends at a segment boundary, or is the whole path.
    if path_info.startswith(script_name) and (len(path_info) == end or path_info[end] == 47):
        env[b"SCRIPT_NAME"] = script_name
        env[b"PATH_INFO"] = path_info[end:]


# lighttpd tunnels a 101 from mod_scgi with `"upgrade" => "enable"` since 1.4.74.
_LIGHTTPD_UPGRADE = (1, 4, 74)


def _no_tunnel(env: Mapping[bytes, bytes], method: str, tunnel: bool, wire: str) -> str | None:
    """Why a WebSocket handshake can't be served as one here (``None``: it can).

    Only a front-end that turns a ``101`` into a two-way tunnel may get one; any other
    passes the 101 to its client and then hangs. nginx's SCGI and uwsgi modules tunnel
    (since 1.3.14) and their stock params send no SERVER_SOFTWARE; Apache's
    mod_proxy_scgi and mod_proxy_uwsgi (SERVER_SOFTWARE ``Apache/...``) do not tunnel;
    lighttpd's mod_scgi does from 1.4.74 (SERVER_SOFTWARE ``lighttpd/1.4.74``). No FastCGI
    front-end tunnels.
    """
    if wire == "fastcgi":
        return "FastCGI front-ends can't tunnel a WebSocket; use SCGI or uwsgi behind nginx"
    if method != "GET":
        return f"a {method} can't open a WebSocket"
    if not tunnel:
        return "the wsproto package is missing (pip install 'trioscgi[websocket]')"
    software = env.get(b"SERVER_SOFTWARE")
    if software:
        if software.startswith(b"Apache"):
            return f"Apache's mod_proxy_{wire} can't tunnel a WebSocket"
        if software.startswith(b"lighttpd/"):
            version = tuple(
                int(x) if x.isdigit() else 0 for x in software[9:].split(b" ")[0].split(b".")
            )
            if version < _LIGHTTPD_UPGRADE:
                return "lighttpd tunnels a WebSocket over SCGI only from 1.4.74"
    return None


def _host_header(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The first Host header's value, or ``None``. Off the fast path: only without
    SERVER_ADDR and SERVER_NAME."""
    for name, value in headers:
        if name == b"host":
            return value
    return None


def _strip_port(host: bytes) -> bytes:
    """``SERVER_NAME`` without a port: HAProxy's fcgi-app sends the Host header there
    (``example.org:8080``, ``[::1]:8080``) and no SERVER_ADDR. A bare IPv6 address (more
    than one ``:``, no brackets) is left as is."""
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[1:end] if end > 0 else host
    name, _, port = host.partition(b":")
    return name if port.isdigit() or not port else host


def _port(value: bytes | None) -> int | None:
    """A TCP port from its digits; ``None`` when absent or not a port (no crash, no 400:
    the port is informational and a front-end bug there shouldn't refuse the request)."""
    if value and len(value) <= 5 and value.isdigit():
        port = int(value)
        if port <= 65535:
            return port
    return None
