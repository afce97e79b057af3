"""End to end: nginx over TLS, with a client certificate, in front of the real trioscgi
process; the app reads the ASGI ``tls`` extension (docs/tls.md) over SCGI and FastCGI."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from frontends import (
    HTTP_TIMEOUT,
    FrontEnd,
    TrioscgiProcess,
    make_test_certificates,
    run_nginx_tls,
    run_trioscgi,
)

from trioscgi._asgi.scope import _CIPHER_SUITES, _TLS_VERSIONS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def certs(e2e_dir: Path) -> dict[str, Path]:
    d = e2e_dir / "certs"
    d.mkdir()
    return make_test_certificates(d)


@pytest.fixture(scope="module")
def tls_server(e2e_dir: Path) -> Iterator[TrioscgiProcess]:
    with run_trioscgi("tls_app:app", sockdir=e2e_dir, logdir=e2e_dir, name="tls") as s:
        yield s


@pytest.fixture(scope="module", params=["unix", "tcp"])
def nginx(
    request: pytest.FixtureRequest, tls_server: TrioscgiProcess, certs: dict[str, Path]
) -> Iterator[FrontEnd]:
    with run_nginx_tls(tls_server.backends[request.param], certs) as fe:
        yield fe


def fetch(fe: FrontEnd, target: str, ctx: ssl.SSLContext) -> tuple[Any, str, tuple[str, str, int]]:
    """GET over TLS: the JSON body, and the TLS version and cipher the client negotiated."""
    conn = http.client.HTTPSConnection("localhost", fe.port, context=ctx, timeout=HTTP_TIMEOUT)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (resp.status, body, fe.log_text()[-2000:])
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        version, cipher = sock.version(), sock.cipher()
        assert version is not None and cipher is not None
        return json.loads(body), version, cipher
    finally:
        conn.close()


def client_context(certs: dict[str, Path], *, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    if with_cert:
        ctx.load_cert_chain(str(certs["client"]), str(certs["client_key"]))
    return ctx


@pytest.mark.parametrize("prefix", ["", "/fcgi"], ids=["scgi", "fastcgi"])
def test_client_certificate(nginx: FrontEnd, certs: dict[str, Path], prefix: str) -> None:
    got, version, cipher = fetch(nginx, f"{prefix}/who", client_context(certs, with_cert=True))
    assert got["scheme"] == "https"
    assert ("fastcgi" if prefix else "scgi") in got["wire"]
    tls = got["tls"]
    # What the client negotiated, as numbers: both tables know what nginx picked here.
    assert tls["tls_version"] == _TLS_VERSIONS[version.encode()]
    assert tls["cipher_suite"] == _CIPHER_SUITES[cipher[0].encode()]
    assert tls["client_cert_chain"] == [certs["client"].read_text()]
    assert "CN=alice" in tls["client_cert_name"]
    assert tls["client_cert_error"] is None
    assert tls["server_cert"] is None  # nginx has no variable for it


def test_no_client_certificate(nginx: FrontEnd, certs: dict[str, Path]) -> None:
    got, version, _ = fetch(nginx, "/who", client_context(certs, with_cert=False))
    tls = got["tls"]
    assert tls["tls_version"] == _TLS_VERSIONS[version.encode()]
    assert (tls["client_cert_chain"], tls["client_cert_name"]) == ([], None)
    assert tls["client_cert_error"] is None


def test_tls_1_2(nginx: FrontEnd, certs: dict[str, Path]) -> None:
    ctx = client_context(certs, with_cert=True)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    got, version, cipher = fetch(nginx, "/who", ctx)
    assert version == "TLSv1.2"
    assert got["tls"]["tls_version"] == 0x0303
    assert got["tls"]["cipher_suite"] == _CIPHER_SUITES[cipher[0].encode()]
