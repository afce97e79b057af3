"""Parse ``bind`` entries and ``trusted_peers``: pure functions, no sockets.

A leaf module: it imports nothing of trioscgi, so the configuration checks
these strings without importing the listeners (which take a Config).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = ["UNIX_PATH_MAX", "BindSpec", "PeerFilter", "parse_bind", "parse_trusted_peers"]

# sun_path is 108 bytes on Linux, including the terminating NUL.
UNIX_PATH_MAX = 107


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class BindSpec:
    """One parsed ``bind`` entry.

    Attributes:
        kind: ``"unix"``, ``"tcp"``, ``"fd"`` or ``"systemd"``.
        text: the entry as written.
        path: unix socket path (``"@name"`` = Linux abstract namespace).
        host: TCP host (IP literal or name), without brackets.
        port: TCP port (0 = any free port).
        fd: inherited file descriptor for ``fd://N``.
        name: systemd socket name (``FileDescriptorName=``), or None for every socket.
    """

    kind: Literal["unix", "tcp", "fd", "systemd"]
    text: str
    path: str | None = None
    host: str | None = None
    port: int | None = None
    fd: int | None = None
    name: str | None = None


def _invalid(s: str, why: str) -> ValueError:
    return ValueError(f"invalid bind {s!r}: {why}")


def _parse_port(s: str, port: str) -> int:
    if not port.isdigit() or not port.isascii():
        raise _invalid(s, f"port {port!r} is not a number")
    n = int(port)
    if n > 65535:
        raise _invalid(s, f"port {n} is out of range (0-65535)")
    return n


def parse_bind(s: str) -> BindSpec:
    """Parse one ``bind`` entry.

    Accepted forms: ``unix:/path.sock``, ``unix:@abstract``, ``HOST:PORT``,
    ``[V6ADDR]:PORT``, ``fd://N``, ``systemd``, ``systemd:NAME``.

    Raises:
        ValueError: ``"invalid bind 'x': why"``.
    """
    if not isinstance(s, str) or not s:
        raise _invalid(str(s), "empty")
    if s.startswith("unix:"):
        path = s[5:]
        if not path or path == "@":
            raise _invalid(s, "no socket path after 'unix:'")
        if "\0" in path:
            raise _invalid(s, "NUL byte in the path")
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise _invalid(s, f"unix socket paths are limited to {UNIX_PATH_MAX} bytes")
        return BindSpec("unix", s, path=path)
    if s.startswith("fd://"):
        num = s[5:]
        if not num.isdigit() or not num.isascii():
            raise _invalid(s, "expected fd://N with N a file descriptor number")
        return BindSpec("fd", s, fd=int(num))
    if s == "systemd":
        return BindSpec("systemd", s)
    if s.startswith("systemd:"):
        name = s[8:]
        # systemd: "FileDescriptorName= ... may contain up to 255 ASCII characters,
        # excluding control characters and ':'".
        if not name or ":" in name or len(name) > 255 or not name.isprintable():
            raise _invalid(s, "expected systemd:NAME (the socket unit's FileDescriptorName=)")
        return BindSpec("systemd", s, name=name)
    if s.startswith("["):
        end = s.find("]")
        if end == -1 or s[end + 1 : end + 2] != ":":
            raise _invalid(s, "expected [IPV6]:PORT")
        host = s[1:end]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _invalid(s, f"{host!r} is not an IPv6 address") from None
        return BindSpec("tcp", s, host=host, port=_parse_port(s, s[end + 2 :]))
    host, sep, port = s.rpartition(":")
    if not sep or not host:
        raise _invalid(s, "expected unix:PATH, HOST:PORT, [IPV6]:PORT, fd://N or systemd[:NAME]")
    if ":" in host:
        raise _invalid(s, "write IPv6 addresses in brackets: [::1]:4000")
    return BindSpec("tcp", s, host=host, port=_parse_port(s, port))


# --------------------------------------------------------------------------- trust


class PeerFilter:
    """Which TCP peers may talk to us.

    SCGI hands REMOTE_ADDR, HTTPS and every header to the app as facts, so a
    peer that can connect can claim anything: by default only loopback.
    """

    __slots__ = ("_exact", "_networks")

    def __init__(
        self,
        exact: Iterable[str],
        networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
    ) -> None:
        self._exact = frozenset(exact)
        self._networks = tuple(networks)

    def __call__(self, host: str) -> bool:
        # Fast path: accept() gives the canonical inet_ntop() text, which is what
        # str(ip_address(...)) produced for the exact entries.
        if host in self._exact:
            return True
        if not self._networks and not host.startswith("::ffff:"):
            return False
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host)
        except ValueError:
            return False
        # A dual-stack socket inherited through fd:// reports IPv4 peers as
        # ::ffff:a.b.c.d; judge them as the IPv4 address they are.
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
            if str(ip) in self._exact:
                return True
        return any(ip in net for net in self._networks)


def parse_trusted_peers(peers: Iterable[str]) -> PeerFilter | None:
    """Parse ``trusted_peers``: addresses, CIDR networks, or ``"*"``.

    Returns:
        None when ``"*"`` is present (every peer trusted), else a PeerFilter.

    Raises:
        ValueError: an entry is neither an address, a network nor ``"*"``.
    """
    exact: set[str] = set()
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for p in peers:
        if p == "*":
            return None
        try:
            if "/" in p:
                net = ipaddress.ip_network(p, strict=False)
                if net.num_addresses == 1:
                    exact.add(str(net.network_address))
                else:
                    networks.append(net)
            else:
                exact.add(str(ipaddress.ip_address(p)))
        except ValueError:
            raise ValueError(
                f"invalid trusted_peers entry {p!r}: expected an IP address, a CIDR "
                'network like "10.0.0.0/24", or "*"'
            ) from None
    return PeerFilter(exact, networks)
