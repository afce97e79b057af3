"""Turn ``bind`` strings into bound, listening, non-blocking sockets.

Kinds: ``unix:PATH`` (and Linux abstract ``unix:@NAME``), ``HOST:PORT``,
``[V6]:PORT``, ``fd://N`` (an inherited socket) and ``systemd`` /
``systemd:NAME`` (socket activation). The strings themselves, and the
``trusted_peers`` filter, are parsed in :mod:`trioscgi._addresses`.
"""

from __future__ import annotations

import errno
import grp
import ipaddress
import os
import pwd
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ._addresses import UNIX_PATH_MAX, BindSpec, PeerFilter, parse_bind, parse_trusted_peers
from ._config import Config

__all__ = [
    "PATH_CHECK_INTERVAL",
    "BindError",
    "BindSpec",
    "Listener",
    "PeerFilter",
    "bind_all",
    "check_binds",
    "parse_bind",
    "parse_trusted_peers",
    "path_problem_message",
    "rebind",
]

# sd_listen_fds(3): passed sockets start at fd 3.
_SD_LISTEN_FDS_START = 3


class BindError(Exception):
    """A listener could not be created; the message names the address and the cause."""


# --------------------------------------------------------------------------- listener


@dataclass
class Listener:
    """A bound, listening, non-blocking socket and what to say about it.

    Attributes:
        sock: the listening socket (stdlib, non-blocking).
        description: for logs: ``"unix:/p.sock"``, ``"127.0.0.1:4000"``,
            ``"[::1]:4000"``, ``"fd://3"``, ``"systemd:web"``.
        unix_path: the socket file we created, removed by :meth:`close`; else None.
        peer_filter: for TCP listeners, which peers are trusted; None = all.
    """

    sock: socket.socket
    description: str
    unix_path: str | None = None
    peer_filter: PeerFilter | None = None
    _inode: tuple[int, int] | None = field(default=None, repr=False)

    def is_trusted(self, peer: Any) -> bool:
        """Whether a peer returned by ``accept()`` may be served.

        Unix-socket peers are always trusted (file permissions guard them).
        """
        f = self.peer_filter
        if f is None:
            return True
        if isinstance(peer, tuple):
            return f(peer[0])
        # AF_UNIX peers arrive as '' / b'': only possible on an inherited unix
        # socket given a filter by hand; the file permissions decide there.
        return True

    def path_problem(self) -> str | None:
        """Whether the socket file we created is still there: ``None`` when it is
        (or when there is no file to watch), else ``"gone"`` or ``"replaced"``.

        A deleted socket file is a silent outage: the socket still listens, the
        workers still run, and no front-end can reach them any more.
        """
        path = self.unix_path
        if path is None or self._inode is None:
            return None
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return "gone"
        except OSError:
            return None  # can't tell (EACCES on the directory): don't cry wolf
        if (st.st_dev, st.st_ino) != self._inode:
            return "replaced"
        return None

    def close(self) -> None:
        """Close the socket and remove our socket file if it is still ours."""
        self.sock.close()
        path, self.unix_path = self.unix_path, None
        if path is None:
            return
        try:
            st = os.lstat(path)
        except OSError:
            return
        # Another instance may have replaced the file (a new deployment started
        # before we stopped): only remove the inode we created.
        if self._inode == (st.st_dev, st.st_ino) and stat.S_ISSOCK(st.st_mode):
            try:
                os.unlink(path)
            except OSError:
                pass


# Seconds between two checks that our socket files are still there.
PATH_CHECK_INTERVAL = 2.0

_PATH_PROBLEMS = {
    "gone": "the socket file is gone (deleted?): the front-end can't connect any more,"
    " although trioscgi still runs",
    "replaced": "the socket file was replaced by another file: the front-end no longer"
    " reaches trioscgi",
}


def path_problem_message(listener: Listener, problem: str, remedy: str) -> str:
    """The ERROR line for a socket file found gone or replaced."""
    return f"{listener.description}: {_PATH_PROBLEMS[problem]}; {remedy}"


def rebind(listener: Listener, config: Config) -> Listener:
    """A new listening socket at the path of ``listener``, whose file is gone or replaced.

    Raises:
        BindError: as at the start (another server listens there, the path is
            not a socket, the directory is gone).
    """
    return _bind_unix(parse_bind(listener.description), config)


# --------------------------------------------------------------------------- unix


def _resolve_owner(config: Config) -> tuple[int, int]:
    uid = _resolve_id(
        config.unix_socket_owner, "unix_socket_owner", "user", lambda n: pwd.getpwnam(n).pw_uid
    )
    gid = _resolve_id(
        config.unix_socket_group, "unix_socket_group", "group", lambda n: grp.getgrnam(n).gr_gid
    )
    return uid, gid


def _resolve_id(value: object, key: str, kind: str, by_name: Callable[[str], int]) -> int:
    """A user or group id from a number or a name; -1 (leave it) when unset."""
    if value is None:
        return -1
    name = str(value)
    try:
        return int(name) if name.isdigit() else by_name(name)
    except KeyError:
        raise BindError(f"{key}: no such {kind} {name!r}") from None


def _check_existing(path: str, desc: str) -> None:
    """Allow replacing only a stale socket file; refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise BindError(f"can't bind {desc}: {e}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise BindError(
            f"can't bind {desc}: {path} exists and is not a socket; refusing to remove it"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        return  # stale: a socket file with nobody listening; rename() replaces it
    except OSError as e:
        raise BindError(f"can't bind {desc}: can't tell whether {path} is in use: {e}") from None
    else:
        raise BindError(
            f"can't bind {desc}: [Errno {errno.EADDRINUSE}] address in use "
            "(another server is listening on it)"
        )
    finally:
        probe.close()


def _bind_unix(spec: BindSpec, config: Config) -> Listener:
    path = spec.path
    assert path is not None
    desc = f"unix:{path}"
    if path.startswith("@"):
        # Linux abstract namespace: no file, no permissions (anyone in the
        # network namespace may connect), nothing to remove on exit.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind("\0" + path[1:])
            sock.listen(config.backlog)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise BindError(f"can't bind {desc}: {e}") from None
        return Listener(sock, desc, None)

    uid, gid = _resolve_owner(config)
    mode = config.unix_socket_mode
    _check_existing(path, desc)
    parent = os.path.dirname(os.path.abspath(path))
    # Why a private directory and rename(): bind() creates the file with
    # 0777 & ~umask, and a chmod() afterwards leaves a window with looser
    # permissions. We bind inside a fresh 0700 directory next to the target
    # (same file system), set mode and owner, listen(), then rename() the
    # finished socket into place: the path appears atomically, already with
    # its final permissions, and already accepting. Unlike os.umask() around
    # bind() this does not touch process-wide state other threads share.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmpdir: str | None = None
    try:
        try:
            tmpdir = tempfile.mkdtemp(prefix=".trioscgi-", dir=parent)
        except OSError as e:
            # Name the directory, not our temporary name inside it.
            raise BindError(
                f"can't bind {desc}: can't create a socket in {parent}: "
                f"[Errno {e.errno}] {e.strerror}"
            ) from None
        tmp = os.path.join(tmpdir, "s")
        try:
            if len(os.fsencode(tmp)) > UNIX_PATH_MAX:
                # The temporary path would not fit sun_path: bind in place,
                # under a umask that leaves no permission beyond the final
                # mode (still nobody can connect() before listen()).
                if os.path.lexists(path):
                    os.unlink(path)  # the stale socket _check_existing() found
                old = os.umask(0o777 & ~mode)
                try:
                    sock.bind(path)
                finally:
                    os.umask(old)
                where = path
            else:
                sock.bind(tmp)
                where = tmp
            os.chmod(where, mode)
            if uid != -1 or gid != -1:
                os.chown(where, uid, gid)
            sock.listen(config.backlog)
            if where != path:
                os.rename(where, path)
            st = os.lstat(path)
        except OSError as e:
            raise BindError(f"can't bind {desc}: {e}") from None
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    finally:
        if tmpdir is not None:
            try:
                tmp_s = os.path.join(tmpdir, "s")
                if os.path.lexists(tmp_s):
                    os.unlink(tmp_s)
                os.rmdir(tmpdir)
            except OSError:
                pass
    return Listener(sock, desc, path, _inode=(st.st_dev, st.st_ino))


# --------------------------------------------------------------------------- tcp


def _bind_tcp(spec: BindSpec, config: Config, peers: PeerFilter | None) -> Listener:
    host, port = spec.host, spec.port
    assert host is not None and port is not None
    # Hostnames: "localhost" is 127.0.0.1 (predictable, and what the default
    # trusted_peers expects); any other name takes getaddrinfo()'s first
    # answer. Bind literals if you need a specific address.
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        addr: tuple[Any, ...] = (host, port)
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except OSError as e:
            raise BindError(f"can't bind {spec.text}: can't resolve {host!r}: {e}") from None
        family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # One listener, one family: "[::]:4000" means IPv6 only; bind
            # 0.0.0.0:4000 as well for IPv4.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        _no_delay(sock)
        sock.bind(addr)
        sock.listen(config.backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise BindError(f"can't bind {spec.text}: {e}") from None
    return Listener(sock, _describe_inet(sock), None, peers)


def _no_delay(sock: socket.socket) -> None:
    """TCP_NODELAY on the listener: Linux copies it to every accepted socket.

    A response leaves in several writes (head, body chunks); with Nagle's
    algorithm a small write queued behind unacknowledged data waits for the
    peer's delayed ACK (up to 40 ms on Linux). Setting it once here saves a
    setsockopt() per connection.
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _describe_inet(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


# --------------------------------------------------------------------------- inherited


def _adopt(fd: int, desc: str, peers: PeerFilter | None) -> Listener:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        raise BindError(f"can't use {desc}: {e}") from None
    try:
        if sock.type != socket.SOCK_STREAM:
            raise BindError(f"can't use {desc}: not a stream socket")
        if sock.family not in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
            raise BindError(f"can't use {desc}: unsupported address family {sock.family!r}")
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError as e:
            raise BindError(f"can't use {desc}: {e}") from None
        if not listening:
            raise BindError(f"can't use {desc}: the socket is not listening")
    except BindError:
        # Not ours to close: leave the inherited descriptor as we found it.
        sock.detach()
        raise
    sock.set_inheritable(False)
    sock.setblocking(False)
    if sock.family != socket.AF_UNIX:
        try:
            _no_delay(sock)
        except OSError:
            pass
    filt = None if sock.family == socket.AF_UNIX else peers
    return Listener(sock, desc, None, filt)


class _SystemdFds:
    """The sockets systemd passed us, read once and removed from the environment."""

    def __init__(self) -> None:
        self.loaded = False
        self.fds: list[tuple[int, str]] = []
        self.taken: set[int] = set()

    def load(self) -> None:
        if self.loaded:
            return
        env = os.environ
        pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
        names = env.get("LISTEN_FDNAMES")
        if pid is None or count is None:
            return
        self.loaded = True
        # sd_listen_fds(3): the variables are for LISTEN_PID only; a child that
        # inherited them must not take the sockets. Children never see them.
        for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(k, None)
        if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
            return
        n = int(count)
        name_list = names.split(":") if names is not None else []
        for i in range(n):
            fd = _SD_LISTEN_FDS_START + i
            # systemd's default name for an unnamed socket is "unknown".
            name = name_list[i] if i < len(name_list) else "unknown"
            self.fds.append((fd, name))


_systemd = _SystemdFds()


def _bind_systemd(spec: BindSpec, peers: PeerFilter | None) -> list[Listener]:
    _systemd.load()
    if not _systemd.fds:
        raise BindError(
            f"can't bind {spec.text}: not socket-activated (LISTEN_PID/LISTEN_FDS not "
            "set for this process); start it from a systemd .socket unit or "
            "systemd-socket-activate"
        )
    wanted = [(fd, n) for fd, n in _systemd.fds if spec.name is None or n == spec.name]
    if not wanted:
        have = ", ".join(sorted({n for _, n in _systemd.fds}))
        raise BindError(f"can't bind {spec.text}: systemd passed no socket named it (has: {have})")
    out: list[Listener] = []
    try:
        for fd, name in wanted:
            if fd in _systemd.taken:
                raise BindError(f"can't bind {spec.text}: fd {fd} ({name}) is already in use")
            listener = _adopt(fd, f"systemd:{name}", peers)
            _systemd.taken.add(fd)
            out.append(listener)
    except BaseException:
        for listener in out:
            listener.close()
        raise
    return out


# --------------------------------------------------------------------------- all


def bind_all(config: Config) -> list[Listener]:
    """Create a listener for every ``config.bind`` entry.

    Raises:
        BindError: an entry could not be bound (everything opened so far is
            closed first). An invalid entry or ``trusted_peers`` value is a
            BindError too, naming it.
    """
    try:
        peers = parse_trusted_peers(config.trusted_peers)
        specs = [parse_bind(b) for b in config.bind]
    except ValueError as e:
        raise BindError(str(e)) from None
    if not specs:
        raise BindError("nothing to bind: the bind list is empty")
    out: list[Listener] = []
    try:
        for spec in specs:
            if spec.kind == "unix":
                out.append(_bind_unix(spec, config))
            elif spec.kind == "tcp":
                out.append(_bind_tcp(spec, config, peers))
            elif spec.kind == "fd":
                assert spec.fd is not None
                out.append(_adopt(spec.fd, spec.text, peers))
            else:
                out.extend(_bind_systemd(spec, peers))
    except BaseException:
        for listener in out:
            listener.close()
        raise
    return out


# --------------------------------------------------------------------------- check


def check_binds(config: Config) -> Iterator[tuple[bool, str]]:
    """Check what :func:`bind_all` will need, without binding (``--check-config``).

    The running server may hold the addresses while a new configuration is
    checked, so nothing is bound or probed: Unix socket directories must exist
    and let this user create the socket, a path there must not be something
    other than a socket, host names must resolve, owner and group must exist.

    Yields:
        Per address (and owner/group), as it is checked: whether it could be
        checked here, and what was found (or why it can't be before the start).

    Raises:
        BindError: what :func:`bind_all` would raise for it, naming the address.
    """
    try:
        parse_trusted_peers(config.trusted_peers)
        specs = [parse_bind(b) for b in config.bind]
    except ValueError as e:
        raise BindError(str(e)) from None
    if not specs:
        raise BindError("nothing to bind: the bind list is empty")
    files = [s for s in specs if s.kind == "unix" and not (s.path or "").startswith("@")]
    if files and (config.unix_socket_owner is not None or config.unix_socket_group is not None):
        _resolve_owner(config)
        yield True, "unix_socket_owner and unix_socket_group exist"
    for spec in specs:
        yield _check_bind(spec)


def _check_bind(spec: BindSpec) -> tuple[bool, str]:
    desc = spec.text
    if spec.kind == "unix":
        path = spec.path
        assert path is not None
        if path.startswith("@"):
            return True, f"{desc}: an abstract socket (no file)"
        parent = os.path.dirname(os.path.abspath(path))
        # _bind_unix creates a directory next to the socket: the parent must
        # exist and let us write and enter it.
        if not os.path.isdir(parent):
            raise BindError(f"can't bind {desc}: directory {parent} does not exist")
        if not os.access(
            parent, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids
        ):
            raise BindError(
                f"can't bind {desc}: can't create a socket in {parent}: permission denied"
            )
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return True, f"{desc}: the socket can be created in {parent}"
        except OSError as e:
            raise BindError(f"can't bind {desc}: {e}") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise BindError(
                f"can't bind {desc}: {path} exists and is not a socket; refusing to remove it"
            )
        return True, f"{desc}: a socket is there, replaced at start if nothing listens on it"
    if spec.kind == "tcp":
        host = spec.host
        assert host is not None
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host != "localhost":
                try:
                    socket.getaddrinfo(host, spec.port, type=socket.SOCK_STREAM)
                except OSError as e:
                    raise BindError(f"can't bind {desc}: can't resolve {host!r}: {e}") from None
                return True, f"{desc}: {host!r} resolves (the port is bound at start)"
        return True, f"{desc}: a TCP address (the port is bound at start)"
    if spec.kind == "fd":
        return False, f"{desc}: the socket is inherited at start"
    return False, f"{desc}: systemd passes the sockets at start"


def spawned_with_listening_socket() -> bool:
    """fd 0 is a listening stream socket: a FastCGI spawner started us.

    Apache mod_fcgid, spawn-fcgi and lighttpd's ``bin-path`` start the
    application with its listening socket as standard input
    (``FCGI_LISTENSOCK_FILENO``, FastCGI spec 2.2) and pass no address.
    """
    try:
        sock = socket.socket(fileno=0)
    except OSError:
        return False  # not a socket (a terminal, /dev/null, a pipe) or closed
    try:
        return (
            sock.type == socket.SOCK_STREAM
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        )
    except OSError:
        return False
    finally:
        sock.detach()
