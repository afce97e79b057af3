"""Listeners: every bind kind on real sockets, unix permissions, trust, inheritance."""

from __future__ import annotations

import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trioscgi._config import Config
from trioscgi._listeners import BindError, Listener, bind_all, check_binds

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # Short paths: sun_path holds 107 bytes and pytest's tmp_path can be long.
    d = Path(f"/tmp/tsl-{os.getpid()}-{time.monotonic_ns()}")
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def close_all(listeners: list[Listener]) -> None:
    for listener in listeners:
        listener.close()


# --------------------------------------------------------------------------- tcp


def test_tcp_v4_and_v6_listen_non_blocking() -> None:
    listeners = bind_all(Config(bind=["127.0.0.1:0", "[::1]:0", "localhost:0"], backlog=7))
    try:
        v4, v6, local = listeners
        assert v4.description.startswith("127.0.0.1:")
        assert v6.description.startswith("[::1]:")
        # "localhost" is 127.0.0.1, the address the default trusted_peers expects.
        assert local.description.startswith("127.0.0.1:")
        assert v6.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        for listener in listeners:
            assert listener.unix_path is None
            assert listener.sock.getblocking() is False
            assert listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
            assert listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            host, port = listener.sock.getsockname()[:2]
            assert listener.description.endswith(f":{port}")
            with socket.create_connection((host, port), timeout=5) as c:
                select.select([listener.sock], [], [], 5)
                conn, peer = listener.sock.accept()
                # Inherited from the listener: no Nagle delay on responses.
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                conn.close()
                assert listener.is_trusted(peer)
                assert c.fileno() != -1
    finally:
        close_all(listeners)


def test_bind_error_names_address_and_closes_earlier(sockdir: Path) -> None:
    taken = bind_all(Config(bind=["127.0.0.1:0"]))
    try:
        port = taken[0].sock.getsockname()[1]
        path = sockdir / "first.sock"
        with pytest.raises(BindError) as exc:
            bind_all(Config(bind=[f"unix:{path}", f"127.0.0.1:{port}"]))
        assert f"can't bind 127.0.0.1:{port}:" in str(exc.value)
        assert "Errno 98" in str(exc.value)
        # The unix socket opened before the failure was closed and removed.
        assert not path.exists()
    finally:
        close_all(taken)


def test_unresolvable_host() -> None:
    with pytest.raises(BindError, match=r"can't resolve 'no-such-host\.invalid'"):
        bind_all(Config(bind=["no-such-host.invalid:0"]))


def test_invalid_config_values_are_bind_errors() -> None:
    with pytest.raises(BindError, match="invalid bind"):
        bind_all(Config(bind=["nonsense"]))
    with pytest.raises(BindError, match="trusted_peers"):
        bind_all(Config(bind=["127.0.0.1:0"], trusted_peers=["10.0.0.300"]))
    with pytest.raises(BindError, match="empty"):
        bind_all(Config(bind=[]))


# --------------------------------------------------------------------------- trust


def test_listener_trust_applies_to_tcp_only(sockdir: Path) -> None:
    config = Config(bind=["127.0.0.1:0", f"unix:{sockdir}/t.sock"], trusted_peers=["10.0.0.1"])
    tcp, unix = bind_all(config)
    try:
        assert not tcp.is_trusted(("127.0.0.1", 5555))
        assert tcp.is_trusted(("10.0.0.1", 5555))
        assert unix.is_trusted("")
    finally:
        close_all([tcp, unix])
    star = bind_all(Config(bind=["127.0.0.1:0"], trusted_peers=["*"]))
    try:
        assert star[0].is_trusted(("203.0.113.9", 1))
    finally:
        close_all(star)


# --------------------------------------------------------------------------- unix


def test_unix_mode_owner_and_cleanup(sockdir: Path) -> None:
    path = sockdir / "app.sock"
    nobody = 65534
    config = Config(
        bind=[f"unix:{path}"],
        unix_socket_mode=0o640,
        unix_socket_owner=str(nobody) if os.geteuid() == 0 else None,
        unix_socket_group=str(os.getegid()),
    )
    (listener,) = bind_all(config)
    try:
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert st.st_gid == os.getegid()
        if os.geteuid() == 0:
            assert st.st_uid == nobody
        assert listener.description == f"unix:{path}"
        assert listener.unix_path == str(path)
        assert listener.is_trusted("")
        assert listener.sock.getblocking() is False
        # No temporary directory is left behind next to the socket.
        assert os.listdir(sockdir) == ["app.sock"]
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(path))
    finally:
        listener.close()
    assert not path.exists()


def test_missing_directory(sockdir: Path) -> None:
    with pytest.raises(
        BindError,
        match=f"can't bind unix:{sockdir}/no/a.sock: can't create a socket in {sockdir}/no",
    ):
        bind_all(Config(bind=[f"unix:{sockdir}/no/a.sock"]))


def test_unknown_owner_and_group(sockdir: Path) -> None:
    with pytest.raises(BindError, match="no such user 'no-such-user-xyz'"):
        bind_all(Config(bind=[f"unix:{sockdir}/a.sock"], unix_socket_owner="no-such-user-xyz"))
    with pytest.raises(BindError, match="no such group 'no-such-group-xyz'"):
        bind_all(Config(bind=[f"unix:{sockdir}/a.sock"], unix_socket_group="no-such-group-xyz"))
    assert os.listdir(sockdir) == []


WATCHER = textwrap.dedent(
    """
    import os, socket, stat, sys, time
    path, rounds = sys.argv[1], int(sys.argv[2])
    print("ready", flush=True)
    for _ in range(rounds):
        deadline = time.monotonic() + 20
        while True:
            try:
                st = os.lstat(path)
                break
            except FileNotFoundError:
                if time.monotonic() > deadline:
                    sys.exit("timed out waiting for the socket")
        # First sight of the path: its mode, and whether it already accepts.
        mode = stat.S_IMODE(st.st_mode)
        c = socket.socket(socket.AF_UNIX)
        try:
            c.connect(path)
            ok = "connected"
        except OSError as e:
            ok = type(e).__name__
        c.close()
        print(oct(mode), ok, flush=True)
        sys.stdin.readline()  # the parent removed the socket: next round
    """
)


@pytest.mark.parametrize("long_path", [False, True])
def test_unix_mode_is_final_when_the_path_appears(sockdir: Path, long_path: bool) -> None:
    # A separate process spins on lstat() and looks at the socket the instant
    # its path exists. With bind() + chmod() it would, in some round, see the
    # umask-derived 0777 (umask 0 here) or find nobody listening yet.
    if long_path:
        # Too long for the private temporary directory: the in-place fallback.
        sub = sockdir / ("d" * (100 - len(str(sockdir)) - 8))
        sub.mkdir()
        path = sub / "a.sock"
        assert 96 < len(str(path)) <= 107
    else:
        path = sockdir / "a.sock"
    rounds = 15
    old_umask = os.umask(0)
    watcher = subprocess.Popen(
        [sys.executable, "-c", WATCHER, str(path), str(rounds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None and watcher.stdin is not None
        assert watcher.stdout.readline().strip() == "ready"
        seen = []
        for _ in range(rounds):
            (listener,) = bind_all(Config(bind=[f"unix:{path}"], unix_socket_mode=0o600))
            try:
                seen.append(watcher.stdout.readline().split())
            finally:
                listener.close()
            watcher.stdin.write("\n")
            watcher.stdin.flush()
        assert watcher.wait(timeout=20) == 0
    finally:
        os.umask(old_umask)
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        for f in (watcher.stdin, watcher.stdout):
            if f is not None:
                f.close()
    assert len(seen) == rounds
    for mode, _ in seen:
        assert mode == "0o600"
    if not long_path:
        # rename() of a listening socket: connectable the moment it appears.
        assert all(outcome == "connected" for _, outcome in seen), seen


class Inotify:
    """Directory events through inotify(7), by ctypes (no dependency)."""

    IN_CREATE = 0x100
    IN_MOVED_TO = 0x80

    def __init__(self, directory: Path) -> None:
        import ctypes
        import ctypes.util

        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        wd = self.libc.inotify_add_watch(
            self.fd, os.fsencode(directory), self.IN_CREATE | self.IN_MOVED_TO
        )
        assert wd >= 0

    def events(self) -> list[tuple[str, str]]:
        import struct

        out: list[tuple[str, str]] = []
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return out
        i = 0
        while i < len(data):
            _, mask, _, length = struct.unpack_from("iIII", data, i)
            name = data[i + 16 : i + 16 + length].rstrip(b"\0").decode()
            kind = "create" if mask & self.IN_CREATE else "moved_to"
            out.append((kind, name))
            i += 16 + length
        return out

    def close(self) -> None:
        os.close(self.fd)


def test_unix_socket_appears_by_rename(sockdir: Path) -> None:
    # Deterministic proof that the final path never exists half-made: bind()
    # creates a file (IN_CREATE); our socket must instead arrive by rename()
    # (IN_MOVED_TO), with mode, owner and listen() already done.
    watch = Inotify(sockdir)
    try:
        (listener,) = bind_all(Config(bind=[f"unix:{sockdir}/a.sock"], unix_socket_mode=0o600))
        listener.close()
        events = watch.events()
    finally:
        watch.close()
    assert ("moved_to", "a.sock") in events, events
    assert ("create", "a.sock") not in events, events
    # The socket was made in a private directory next to the target.
    created = [name for kind, name in events if kind == "create"]
    assert len(created) == 1 and created[0].startswith(".trioscgi-"), events


def test_refuses_to_remove_a_non_socket(sockdir: Path) -> None:
    path = sockdir / "data.txt"
    path.write_text("precious")
    with pytest.raises(BindError, match="exists and is not a socket; refusing to remove it"):
        bind_all(Config(bind=[f"unix:{path}"]))
    assert path.read_text() == "precious"
    os.mkdir(sockdir / "dir")
    with pytest.raises(BindError, match="not a socket"):
        bind_all(Config(bind=[f"unix:{sockdir}/dir"]))
    assert (sockdir / "dir").is_dir()


def test_stale_socket_is_replaced_live_one_refused(sockdir: Path) -> None:
    path = sockdir / "app.sock"
    # A stale socket: bound, then closed without removing the file.
    old = socket.socket(socket.AF_UNIX)
    old.bind(str(path))
    old.close()
    old_ino = path.lstat().st_ino
    (listener,) = bind_all(Config(bind=[f"unix:{path}"]))
    try:
        assert path.lstat().st_ino != old_ino
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(path))
        # Now it is live: a second server must not steal it.
        with pytest.raises(BindError, match="address in use"):
            bind_all(Config(bind=[f"unix:{path}"]))
        assert stat.S_ISSOCK(path.lstat().st_mode)
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(path))
    finally:
        listener.close()


def test_close_leaves_a_replaced_socket_alone(sockdir: Path) -> None:
    path = sockdir / "app.sock"
    (listener,) = bind_all(Config(bind=[f"unix:{path}"]))
    # A new deployment replaced our file with its own socket.
    os.unlink(path)
    newer = socket.socket(socket.AF_UNIX)
    try:
        newer.bind(str(path))
        listener.close()
        assert stat.S_ISSOCK(path.lstat().st_mode)
    finally:
        newer.close()


def test_abstract_unix_socket() -> None:
    name = f"trioscgi-test-{os.getpid()}-{time.monotonic_ns()}"
    (listener,) = bind_all(Config(bind=[f"unix:@{name}"]))
    try:
        assert listener.description == f"unix:@{name}"
        assert listener.unix_path is None
        with socket.socket(socket.AF_UNIX) as c:
            c.connect("\0" + name)
    finally:
        listener.close()


# --------------------------------------------------------------------------- inherited

CHILD = textwrap.dedent(
    """
    import json, os, select, sys
    from trioscgi._config import Config
    from trioscgi._listeners import BindError, bind_all
    try:
        listeners = bind_all(Config(bind=sys.argv[1:]))
    except BindError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        sys.exit(1)
    env = sorted(k for k in os.environ if k.startswith("LISTEN_"))
    print(json.dumps({"bound": [l.description for l in listeners], "env": env}), flush=True)
    # Serve one connection per listener: proof that the socket really listens.
    pending = {l.sock: l for l in listeners}
    while pending:
        r, _, _ = select.select(list(pending), [], [], 20)
        if not r:
            sys.exit("no connection")
        for s in r:
            conn, peer = s.accept()
            conn.sendall(pending.pop(s).description.encode())
            conn.close()
    for l in listeners:
        l.close()
    """
)


def _read_json(proc: subprocess.Popen[str]) -> dict[str, object]:
    import json

    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "child printed nothing"
    result: dict[str, object] = json.loads(line)
    return result


def _fetch(addr: str | tuple[str, int], family: int = socket.AF_INET) -> bytes:
    with socket.socket(family) as c:
        c.settimeout(10)
        c.connect(addr)
        data = b""
        while chunk := c.recv(100):
            data += chunk
        return data


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_fd_inherited_tcp_socket() -> None:
    parent = socket.socket()
    parent.bind(("127.0.0.1", 0))
    parent.listen()
    fd = parent.fileno()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, f"fd://{fd}"],
        pass_fds=[fd],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        addr = parent.getsockname()
        assert _read_json(proc) == {"bound": [f"fd://{fd}"], "env": []}
        assert _fetch(addr) == f"fd://{fd}".encode()
        assert proc.wait(timeout=20) == 0
    finally:
        parent.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_fd_zero_inherited_unix_socket(sockdir: Path) -> None:
    # mod_fcgid / inetd style: the listening socket is the child's stdin.
    path = str(sockdir / "in.sock")
    parent = socket.socket(socket.AF_UNIX)
    parent.bind(path)
    parent.listen()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, "fd://0"],
        stdin=parent.fileno(),
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert _read_json(proc)["bound"] == ["fd://0"]
        assert _fetch(path, socket.AF_UNIX) == b"fd://0"
        assert proc.wait(timeout=20) == 0
    finally:
        parent.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.parametrize("what", ["udp", "not-listening", "pipe", "closed"])
def test_fd_rejects_what_is_not_a_listening_stream(what: str) -> None:
    keep: list[socket.socket] = []
    r = w = -1
    if what == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        keep.append(s)
        fd, expect = s.fileno(), "not a stream socket"
    elif what == "not-listening":
        s = socket.socket()
        keep.append(s)
        fd, expect = s.fileno(), "not listening"
    elif what == "pipe":
        r, w = os.pipe()
        fd, expect = r, "Socket operation on non-socket"
    else:
        r, w = os.pipe()
        os.close(w)
        os.close(r)
        fd, expect = r, "Bad file descriptor"
    try:
        with pytest.raises(BindError, match=f"can't use fd://{fd}: .*{expect}"):
            bind_all(Config(bind=[f"fd://{fd}"]))
        if what != "closed":
            # The inherited descriptor is left open: it was never ours.
            os.fstat(fd)
    finally:
        for s in keep:
            s.close()
        if what == "pipe":
            os.close(r)
            os.close(w)


# --------------------------------------------------------------------------- systemd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _activate(args: list[str], binds: list[str]) -> subprocess.Popen[str]:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-socket-activate is missing (apt-get install systemd)")
        pytest.skip("systemd-socket-activate not installed (Debian package systemd)")
    return subprocess.Popen(
        [tool, *args, sys.executable, "-c", CHILD, *binds],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def _wait_listening(proc: subprocess.Popen[str], count: int) -> None:
    # systemd-socket-activate logs "Listening on ADDR as N." per socket, then
    # execs the program on the first connection.
    assert proc.stderr is not None
    for _ in range(count):
        line = proc.stderr.readline()
        assert "Listening on" in line, line


def _finish(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


def test_systemd_one_named_socket() -> None:
    port = _free_port()
    proc = _activate(["-l", f"127.0.0.1:{port}", "--fdname=web"], ["systemd:web"])
    try:
        _wait_listening(proc, 1)
        # The first connection makes the tool exec our child, which serves it.
        assert _fetch(("127.0.0.1", port)) == b"systemd:web"
        result = _read_json(proc)
        assert result == {"bound": ["systemd:web"], "env": []}
        assert proc.wait(timeout=20) == 0
    finally:
        _finish(proc)


def test_systemd_several_sockets_by_name_and_all(sockdir: Path) -> None:
    port = _free_port()
    path = str(sockdir / "adm.sock")
    args = ["-l", f"127.0.0.1:{port}", "-l", path, "--fdname=web:adm"]
    proc = _activate(args, ["systemd:adm", "systemd:web"])
    try:
        _wait_listening(proc, 2)
        assert _fetch(("127.0.0.1", port)) == b"systemd:web"
        assert _fetch(path, socket.AF_UNIX) == b"systemd:adm"
        # LISTEN_* were consumed and removed from the environment.
        assert _read_json(proc) == {"bound": ["systemd:adm", "systemd:web"], "env": []}
        assert proc.wait(timeout=20) == 0
    finally:
        _finish(proc)

    port = _free_port()
    proc = _activate(["-l", f"127.0.0.1:{port}", "-l", path], ["systemd"])
    try:
        _wait_listening(proc, 2)
        # Unnamed sockets are called "unknown" by systemd.
        assert _fetch(("127.0.0.1", port)) == b"systemd:unknown"
        assert _fetch(path, socket.AF_UNIX) == b"systemd:unknown"
        assert _read_json(proc)["bound"] == ["systemd:unknown", "systemd:unknown"]
    finally:
        _finish(proc)


def test_systemd_missing_name_and_reuse() -> None:
    port = _free_port()
    proc = _activate(["-l", f"127.0.0.1:{port}", "--fdname=web"], ["systemd:web", "systemd:admin"])
    try:
        _wait_listening(proc, 1)
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            result = _read_json(proc)
        assert result == {
            "error": "can't bind systemd:admin: systemd passed no socket named it (has: web)"
        }
        assert proc.wait(timeout=20) == 1
    finally:
        _finish(proc)


def test_systemd_without_activation() -> None:
    with pytest.raises(BindError, match="not socket-activated"):
        bind_all(Config(bind=["systemd"]))


# --------------------------------------------------------------------------- check


def test_check_binds_checks_without_binding(sockdir: Path) -> None:
    live = bind_all(Config(bind=[f"unix:{sockdir}/live.sock"]))
    try:
        config = Config(
            bind=[
                f"unix:{sockdir}/new.sock",
                f"unix:{sockdir}/live.sock",  # a running server may hold it: not probed
                "unix:@tsl-check",
                "127.0.0.1:0",
                "localhost:0",
                "fd://3",
                "systemd:web",
            ]
        )
        assert list(check_binds(config)) == [
            (True, f"unix:{sockdir}/new.sock: the socket can be created in {sockdir}"),
            (
                True,
                f"unix:{sockdir}/live.sock: a socket is there, replaced at start if nothing "
                "listens on it",
            ),
            (True, "unix:@tsl-check: an abstract socket (no file)"),
            (True, "127.0.0.1:0: a TCP address (the port is bound at start)"),
            (True, "localhost:0: a TCP address (the port is bound at start)"),
            (False, "fd://3: the socket is inherited at start"),
            (False, "systemd:web: systemd passes the sockets at start"),
        ]
        assert not (sockdir / "new.sock").exists()
        assert sorted(os.listdir(sockdir)) == ["live.sock"]  # no temporary directory left
    finally:
        close_all(live)


def test_check_binds_fails_as_bind_all_would(sockdir: Path) -> None:
    def first_error(config: Config) -> str:
        with pytest.raises(BindError) as info:
            list(check_binds(config))
        return str(info.value)

    (sockdir / "file").write_text("x")
    assert "exists and is not a socket" in first_error(Config(bind=[f"unix:{sockdir}/file"]))
    assert (sockdir / "file").read_text() == "x"
    missing = sockdir / "missing" / "s.sock"
    assert first_error(Config(bind=[f"unix:{missing}"])) == (
        f"can't bind unix:{missing}: directory {missing.parent} does not exist"
    )
    assert "can't resolve 'no-such-host.invalid'" in first_error(
        Config(bind=["no-such-host.invalid:0"])
    )
    owner = Config(bind=[f"unix:{sockdir}/s.sock"], unix_socket_owner="no-such-user-tsl")
    assert "no such user 'no-such-user-tsl'" in first_error(owner)
    assert "invalid bind" in first_error(Config(bind=["nonsense"]))
