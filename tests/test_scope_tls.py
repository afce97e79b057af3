"""The ASGI ``tls`` extension built from the front-end's HTTPS and SSL_* variables.

(trioscgi._asgi.scope.tls_extension; kept apart from test_scope.py, which covers the rest of
the scope.)
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import quote

import pytest

from trioscgi._asgi.scope import _CIPHER_SUITES, _TLS_VERSIONS, http_scope, tls_extension

Environ = list[tuple[bytes, bytes]]

# Not a real certificate: the extension passes PEM text through, it never parses it.
CLIENT_PEM = (
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBszCCAVmgAwIBAgIUclient+/=\n"
    "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\n"
    "-----END CERTIFICATE-----\n"
)
CA_PEM = CLIENT_PEM.replace("client", "issuer")
ROOT_PEM = CLIENT_PEM.replace("client", "rootca")
SERVER_PEM = CLIENT_PEM.replace("client", "server")


def pairs(*items: tuple[str, str]) -> Environ:
    return [(k.encode(), v.encode()) for k, v in items]


def nginx(scheme: str = "https", *extra: tuple[str, str]) -> Environ:
    """nginx's stock scgi_params (HTTPS only over TLS: `$https if_not_empty`), plus ``extra``."""
    base = [
        ("CONTENT_LENGTH", "0"),
        ("REQUEST_METHOD", "GET"),
        ("REQUEST_URI", "/tls"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", scheme),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "443"),
        ("HTTP_HOST", "localhost"),
    ]
    if scheme == "https":
        base.append(("HTTPS", "on"))
    return pairs(*base, *extra)


def scope_of(environ: Environ, **kwargs: Any) -> Any:
    return http_scope(environ, root_path="", state=None, **kwargs)


# nginx's params for it, as docs/configuration.md gives them, with the values nginx 1.22
# gives its variables for a TLS 1.3 connection with a verified client certificate.
NGINX_TLS = (
    ("SSL_PROTOCOL", "TLSv1.3"),
    ("SSL_CIPHER", "TLS_AES_256_GCM_SHA384"),
    # $ssl_client_escaped_cert: the PEM, URL-escaped.
    ("SSL_CLIENT_CERT", quote(CLIENT_PEM, safe="")),
    ("SSL_CLIENT_S_DN", "CN=alice,O=Example"),
    ("SSL_CLIENT_VERIFY", "SUCCESS"),
)


def test_plain_http_has_no_tls_extension() -> None:
    # The spec forbids it for a connection that is not TLS, whatever else came along.
    scope = scope_of(nginx("http", *NGINX_TLS))
    assert "tls" not in scope["extensions"]


def test_nginx_with_the_tls_params() -> None:
    scope = scope_of(nginx("https", *NGINX_TLS))
    assert scope["scheme"] == "https"
    assert scope["extensions"]["tls"] == {
        "server_cert": None,
        "client_cert_chain": [CLIENT_PEM],
        "client_cert_name": "CN=alice,O=Example",
        "client_cert_error": None,
        "tls_version": 0x0304,
        "cipher_suite": 0x1302,
    }
    # The raw params stay where they were.
    assert scope["extensions"]["scgi"]["environ"][-1] == (b"SSL_CLIENT_VERIFY", b"SUCCESS")


def test_nginx_stock_params_over_tls() -> None:
    # No SSL_* params: the extension says TLS, and "unknown" for the rest.
    assert scope_of(nginx("https"))["extensions"]["tls"] == {
        "server_cert": None,
        "client_cert_chain": [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": None,
        "cipher_suite": None,
    }


def test_https_on_without_request_scheme() -> None:
    environ = [pair for pair in nginx("https") if pair[0] != b"REQUEST_SCHEME"]
    scope = scope_of(environ)
    assert scope["scheme"] == "https"
    assert "tls" in scope["extensions"]


def test_nginx_without_a_client_certificate() -> None:
    # $ssl_client_escaped_cert and $ssl_client_s_dn are empty, $ssl_client_verify NONE.
    tls = scope_of(
        nginx(
            "https",
            ("SSL_PROTOCOL", "TLSv1.2"),
            ("SSL_CIPHER", "ECDHE-RSA-AES128-GCM-SHA256"),
            ("SSL_CLIENT_CERT", ""),
            ("SSL_CLIENT_S_DN", ""),
            ("SSL_CLIENT_VERIFY", "NONE"),
        )
    )["extensions"]["tls"]
    assert tls["client_cert_chain"] == []
    assert tls["client_cert_name"] is None
    assert tls["client_cert_error"] is None
    assert (tls["tls_version"], tls["cipher_suite"]) == (0x0303, 0xC02F)


@pytest.mark.parametrize(
    ("verify", "error"),
    [
        ("SUCCESS", None),
        ("NONE", None),
        ("", None),
        ("FAILED:certificate has expired", "FAILED:certificate has expired"),
        # Apache's optional_no_ca: a certificate, not verified.
        ("GENEROUS", "GENEROUS"),
    ],
)
def test_client_cert_error(verify: str, error: str | None) -> None:
    env = {b"SSL_CLIENT_VERIFY": verify.encode()}
    assert tls_extension(env)["client_cert_error"] == error


def test_apache_exports_plain_pem_the_chain_and_the_server_cert() -> None:
    # mod_ssl with `SSLOptions +StdEnvVars +ExportCertData`.
    env = {
        b"HTTPS": b"on",
        b"SSL_PROTOCOL": b"TLSv1.3",
        b"SSL_CIPHER": b"TLS_AES_128_GCM_SHA256",
        b"SSL_CLIENT_CERT": CLIENT_PEM.encode(),
        b"SSL_CLIENT_CERT_CHAIN_0": CA_PEM.encode(),
        b"SSL_CLIENT_CERT_CHAIN_1": ROOT_PEM.encode(),
        b"SSL_SERVER_CERT": SERVER_PEM.encode(),
        b"SSL_CLIENT_S_DN": b"CN=alice,O=Example",
        b"SSL_CLIENT_VERIFY": b"SUCCESS",
    }
    tls = tls_extension(env)
    assert tls["client_cert_chain"] == [CLIENT_PEM, CA_PEM, ROOT_PEM]
    assert tls["server_cert"] == SERVER_PEM
    assert (tls["tls_version"], tls["cipher_suite"]) == (0x0304, 0x1301)


def test_chain_without_a_client_cert_is_ignored() -> None:
    # The chain only means something after the client's own certificate.
    assert tls_extension({b"SSL_CLIENT_CERT_CHAIN_0": CA_PEM.encode()})["client_cert_chain"] == []


def test_chain_is_bounded() -> None:
    env = {b"SSL_CLIENT_CERT": CLIENT_PEM.encode()}
    env |= {b"SSL_CLIENT_CERT_CHAIN_%d" % i: CA_PEM.encode() for i in range(100)}
    assert len(tls_extension(env)["client_cert_chain"]) == 17


def test_nginx_old_tab_indented_cert() -> None:
    # The deprecated $ssl_client_cert: every line after the first starts with a tab.
    tabbed = CLIENT_PEM.rstrip("\n").replace("\n", "\n\t") + "\n"
    assert tls_extension({b"SSL_CLIENT_CERT": tabbed.encode()})["client_cert_chain"] == [CLIENT_PEM]


def test_unknown_names_are_none() -> None:
    tls = tls_extension({b"SSL_PROTOCOL": b"QUIC", b"SSL_CIPHER": b"ROT13-PLEASE"})
    assert (tls["tls_version"], tls["cipher_suite"]) == (None, None)


def test_non_utf8_dn_is_replaced_not_an_error() -> None:
    assert tls_extension({b"SSL_CLIENT_S_DN": b"CN=\xff"})["client_cert_name"] == "CN=\ufffd"


def test_websocket_over_tls_gets_it_too() -> None:
    environ = nginx(
        "https",
        *NGINX_TLS,
        ("HTTP_UPGRADE", "websocket"),
        ("HTTP_CONNECTION", "Upgrade"),
        ("HTTP_SEC_WEBSOCKET_KEY", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("HTTP_SEC_WEBSOCKET_VERSION", "13"),
    )
    scope = scope_of(environ, websocket=True)
    assert (scope["type"], scope["scheme"]) == ("websocket", "wss")
    assert scope["extensions"]["tls"]["tls_version"] == 0x0304


def test_fastcgi_gets_it_too() -> None:
    scope = scope_of(nginx("https", *NGINX_TLS), wire="fastcgi")
    assert scope["extensions"]["tls"]["cipher_suite"] == 0x1302


def test_tls_versions_are_the_wire_numbers() -> None:
    assert _TLS_VERSIONS == {
        b"SSLv3": 0x0300,
        b"TLSv1": 0x0301,
        b"TLSv1.1": 0x0302,
        b"TLSv1.2": 0x0303,
        b"TLSv1.3": 0x0304,
    }


def test_cipher_codes_agree_with_the_local_openssl() -> None:
    # OpenSSL's own table: the low 16 bits of a cipher's id are its IANA code. Every name
    # of ours that this OpenSSL knows must map to the same code.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    openssl = {c["name"].encode(): c["id"] & 0xFFFF for c in ctx.get_ciphers()}
    known = {name: code for name, code in _CIPHER_SUITES.items() if name in openssl}
    # Most of the table is checked here (the CCM TLS 1.3 suites and the old ones may be
    # left out of a build), and none disagrees.
    assert len(known) >= len(_CIPHER_SUITES) - 6
    assert {name: openssl[name] for name in known} == known
