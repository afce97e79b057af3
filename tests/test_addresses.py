"""The bind and trusted_peers parsers: strings in, specs and filters out, no sockets."""

from __future__ import annotations

import pytest

from trioscgi._addresses import parse_bind, parse_trusted_peers
from trioscgi._config import Config

# --------------------------------------------------------------------------- parse


@pytest.mark.parametrize(
    ("text", "kind", "attrs"),
    [
        ("unix:/run/app.sock", "unix", {"path": "/run/app.sock"}),
        ("unix:rel.sock", "unix", {"path": "rel.sock"}),
        ("unix:@abstract", "unix", {"path": "@abstract"}),
        ("127.0.0.1:4000", "tcp", {"host": "127.0.0.1", "port": 4000}),
        ("localhost:0", "tcp", {"host": "localhost", "port": 0}),
        ("[::1]:4000", "tcp", {"host": "::1", "port": 4000}),
        ("[::]:65535", "tcp", {"host": "::", "port": 65535}),
        ("fd://0", "fd", {"fd": 0}),
        ("fd://3", "fd", {"fd": 3}),
        ("systemd", "systemd", {"name": None}),
        ("systemd:web", "systemd", {"name": "web"}),
    ],
)
def test_parse_bind_valid(text: str, kind: str, attrs: dict[str, object]) -> None:
    spec = parse_bind(text)
    assert spec.kind == kind
    assert spec.text == text
    for k, v in attrs.items():
        assert getattr(spec, k) == v


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("4000", "expected unix:PATH"),
        (":4000", "expected unix:PATH"),
        ("127.0.0.1:", "not a number"),
        ("127.0.0.1:http", "not a number"),
        ("127.0.0.1:-1", "not a number"),
        ("127.0.0.1:65536", "out of range"),
        ("::1:4000", "brackets"),
        ("[::1]4000", "[IPV6]:PORT"),
        ("[nope]:4000", "not an IPv6 address"),
        ("unix:", "no socket path"),
        ("unix:" + "x" * 200, "107 bytes"),
        ("fd://", "fd://N"),
        ("fd://three", "fd://N"),
        ("systemd:", "systemd:NAME"),
        ("systemd:a:b", "systemd:NAME"),
    ],
)
def test_parse_bind_invalid(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid bind ") as exc:
        parse_bind(text)
    assert why in str(exc.value)
    assert repr(text) in str(exc.value)


# --------------------------------------------------------------------------- trust


def test_trusted_peers_default_is_loopback() -> None:
    f = parse_trusted_peers(Config().trusted_peers)
    assert f is not None
    assert f("127.0.0.1")
    assert f("::1")
    assert not f("127.0.0.2")
    assert not f("10.0.0.2")
    assert not f("::ffff:10.0.0.2")
    assert f("::ffff:127.0.0.1")  # dual-stack socket inherited via fd://


def test_trusted_peers_networks_and_star() -> None:
    f = parse_trusted_peers(["10.0.0.0/24", "2001:db8::/32", "192.0.2.7/32", "::1"])
    assert f is not None
    assert f("10.0.0.200")
    assert not f("10.0.1.1")
    assert f("192.0.2.7")
    assert f("2001:db8::5")
    assert not f("2001:db9::5")
    assert f("::ffff:10.0.0.3")
    assert not f("not-an-address")
    assert parse_trusted_peers(["10.0.0.1", "*"]) is None
    with pytest.raises(ValueError, match=r"invalid trusted_peers entry '10\.0\.0\.0/33'"):
        parse_trusted_peers(["10.0.0.0/33"])
    with pytest.raises(ValueError, match="invalid trusted_peers entry 'nginx'"):
        parse_trusted_peers(["nginx"])
