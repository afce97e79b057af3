"""The ``trioscgi`` command: argv + TOML file -> Config -> app -> run; exit codes.

Exit codes: 0 clean stop, 1 runtime error (e.g. an address that cannot be
bound), 2 usage or configuration error (bad flag, bad config file, app that
cannot be loaded), 3 lifespan startup failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from .. import _config
from .._config import Config, ConfigError
from .._importer import AppLoadError, load_app
from .._types import EXIT_LIFESPAN, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE
from .._version import __version__

# Fields with no command-line flag: ``app`` is the positional argument,
# ``logging`` is a table that only makes sense in the file.
_NO_FLAG = {"app", "factory", "logging", "reload"}
# Flags that take a list and may be repeated, with their singular spelling.
_REPEATED = {
    "bind": "--bind",
    "trusted_peers": "--trusted-peer",
    "reload_dirs": "--reload-dir",
    "reload_include": "--reload-include",
    "reload_exclude": "--reload-exclude",
}
_SHORT = {"bind": "-b", "workers": "-w"}
_METAVARS = {
    "bind": "BIND",
    "trusted_peers": "ADDR",
    "unix_socket_mode": "MODE",
    "root_path": "PATH",
    "pid_file": "PATH",
    "error_log": "PATH",
    "access_log": "PATH",
    "app_dir": "DIR",
    "cpu_affinity": "CPUS",
    "reload_dirs": "DIR",
    "reload_include": "GLOB",
    "reload_exclude": "GLOB",
    "metrics_bind": "ADDR",
}
# What each flag does; "(default: ...)" is added from Config's defaults. pip
# installs no docs, so --help must be enough to run the server: a new key
# gets its line here (tests/test_cli.py checks that every flag has one).
_HELP = {
    "app_dir": "directory put first on sys.path before importing the app",
    "interface": "what the app is: 'auto' takes an async callable of 3 arguments for ASGI "
    "and a plain one of 2 for WSGI, and asks for this flag when it can't tell",
    "app_loop": "event loop the app runs on: 'auto' = asyncio for Django's ASGI handler, "
    "Quart, Channels and asgiref apps, trio for the rest; 'asyncio' for an app on trio or "
    "anyio that calls an asyncio-only library",
    "wsgi_threads": "threads running WSGI requests in each worker process: the most WSGI "
    "requests in progress at once; ASGI apps don't use them",
    "bind": "address to listen on: unix:PATH, unix:@NAME, HOST:PORT, [V6]:PORT, fd://N, "
    "systemd or systemd:NAME; repeat the flag for several (they replace the file's list)",
    "backlog": "listen() backlog: connections the kernel queues while the server is busy",
    "unix_socket_mode": "permissions of the Unix sockets trioscgi creates, in octal "
    "(660 or 0o660), set before any client can connect",
    "unix_socket_owner": "owner (user name or uid) of the Unix sockets trioscgi creates",
    "unix_socket_group": "group (name or gid) of the Unix sockets trioscgi creates",
    "trusted_peers": "peer allowed to connect over TCP (it can forge every header the app "
    "sees): an IP address, a CIDR network or '*' for anyone; repeat the flag for several",
    "root_path": "URL prefix the app is mounted under, like /app, for front-ends that "
    "don't send it as SCRIPT_NAME (nginx's scgi_params); '/' = mounted at the root; '' = "
    "the front-end's SCRIPT_NAME where it means one",
    "lifespan": "the ASGI lifespan protocol: auto = if the app supports it, on = required "
    "(a failure exits with 3), off = never",
    "startup_timeout": "seconds the app gets to finish lifespan startup; past it the server "
    "exits with 3",
    "shutdown_timeout": "seconds the app gets for lifespan shutdown before it is cancelled",
    "graceful_timeout": "seconds requests in flight get to finish after SIGTERM or SIGINT",
    "max_header_size": "largest SCGI header block in bytes; a larger request gets 431",
    "max_body_size": "largest request body in bytes; a larger one gets 413 before it is read",
    "header_timeout": "seconds for a request's whole SCGI header block to arrive",
    "read_timeout": "longest wait in seconds between two reads of the request body",
    "write_timeout": "longest wait in seconds for the front-end to accept more response bytes",
    "drain_timeout": "seconds spent reading and discarding an unread request body after the "
    "response, so that nginx doesn't answer 502",
    "max_connections": "connections served at once by each worker process; at the limit "
    "trioscgi stops accepting",
    "websocket_max_message_size": "largest WebSocket message in bytes (characters for "
    "text); a larger one closes the connection with 1009",
    "websocket_ping_interval": "seconds between the pings that keep an idle WebSocket "
    "alive through the front-end's read timeout; 0 = no pings",
    "websocket_ping_timeout": "seconds a WebSocket peer gets to answer a ping or a close "
    "before the connection is cut",
    "websocket_per_message_deflate": "offer permessage-deflate compression to WebSocket "
    "clients that ask for it",
    "workers": "worker processes: 1 serves in this process; more run under a supervisor "
    "that restarts them and reloads them on SIGHUP",
    "max_requests": "replace a worker after this many requests; 0 = never",
    "max_requests_jitter": "add 0 to N requests at random to max_requests for each worker",
    "worker_timeout": "with workers >= 2: kill and replace a worker whose event loop sent "
    "no heartbeat for this many seconds (blocked, or stopped); 0 = never",
    "reload_dirs": "with --reload: a directory to watch; repeat the flag for several",
    "reload_include": "with --reload: a glob a changed file's name or path must match to "
    "restart the app; repeat the flag for several (they replace the default *.py)",
    "reload_exclude": "with --reload: a glob of files whose changes are ignored; repeat the "
    "flag for several",
    "metrics_bind": "serve Prometheus metrics at GET /metrics over plain HTTP on HOST:PORT "
    "or unix:PATH (needs trioscgi[metrics]); unset = off",
    "pid_file": "write the process id to this file; removed on exit",
    "cpu_affinity": "pin each worker process to one of these CPUs, like 0,1 or 0-3; '' = "
    "no pinning",
    "log_level": "level of the trioscgi logger: critical, error, warning, info or debug",
    "error_log": "where the trioscgi logger writes: a file, or '-' for stderr",
    "access_log": "where one line per request is written: a file, or '-' for stdout; '' "
    "turns off a log the config file set",
    "access_log_format": "the access log line, a %-format over atoms such as %(h)s client, "
    "%(t)s time, %(r)s request line, %(s)s status, %(b)s bytes, %(D)s microseconds, "
    "%({Header}i)s a request header",
    "protocol": "wire protocol: scgi, fastcgi, uwsgi, or auto (each connection's first "
    "byte tells them apart, so one socket serves all three)",
    "idle_timeout": "seconds a kept-alive FastCGI connection may wait for its next request",
    "fastcgi_max_requests": "FastCGI requests one connection may run at once (reported as "
    "FCGI_MAX_REQS); 1 = no multiplexing",
}
# Defaults that read better in words than as the value itself.
_DEFAULT_TEXT = {
    "app_dir": "the current directory",
    "unix_socket_mode": "660",
    "unix_socket_owner": "the server's user",
    "unix_socket_group": "the server's group",
    "max_body_size": "no limit",
    "pid_file": "none",
    "error_log": "'-'",
    "access_log": "off",
    "reload_dirs": "app_dir, else the current directory",
    "reload_exclude": "none",
    "metrics_bind": "off",
}
_EPILOG = f"""\
Precedence: command-line flag > config file (-c) > default. An empty value
(--access-log '') unsets an optional key the config file set.

Exit codes:
  {EXIT_OK}  clean stop; for --check-config, everything checked is fine
  {EXIT_RUNTIME}  runtime error: an address that can't be bound, a worker crash loop
  {EXIT_USAGE}  usage or configuration error, or an application that can't be loaded
  {EXIT_LIFESPAN}  the application's lifespan startup failed or timed out

The reference for every key, the [logging] table, config.example.toml and the
deployment guides (nginx, Apache, lighttpd, systemd) are in the docs/ directory
of the trioscgi source repository: pip does not install them.
"""


_DEFAULT_BIND = Config().bind


def _flag_name(key: str) -> str:
    if key == "app":
        return "app (the positional argument)"
    return _REPEATED.get(key, "--" + key.replace("_", "-"))


def _default_text(key: str) -> str:
    if key in _DEFAULT_TEXT:
        return _DEFAULT_TEXT[key]
    value = getattr(Config(), key)
    if value is None:
        return "unset"
    if isinstance(value, list):
        return ", ".join(value)
    if isinstance(value, float):
        return f"{value:g}"
    if value == "":
        return "''"
    return str(value)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every flag's default is 'not given' so the file can apply."""
    parser = _Parser(
        prog="trioscgi",
        description=(
            "Serve an ASGI or WSGI application over SCGI or FastCGI behind nginx, Apache,"
            " lighttpd or HAProxy."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
        # A daemon's flags are exact: "--grace 7" must not quietly set graceful_timeout.
        allow_abbrev=False,
    )
    parser.add_argument(
        "app",
        nargs="?",
        metavar="MODULE:ATTR",
        help="the application, like myproject.asgi:app (or 'app' in the config file)",
    )
    parser.add_argument("-c", "--config", metavar="FILE", help="TOML config file (default: none)")
    parser.add_argument(
        "--factory",
        action="store_true",
        help="MODULE:ATTR is a callable returning the application, called once per worker "
        "(default: off)",
    )
    parser.add_argument(
        "--reload",
        action="store_true",
        help="development: restart the app when its source changes, keeping the sockets "
        "bound (needs trioscgi[reload]; one worker only) (default: off)",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="check everything a start needs without starting: the settings, that the app "
        "imports, that the Unix socket and log directories are usable; print what was "
        "checked (stderr) and the effective settings as TOML (stdout), then exit",
    )
    parser.add_argument("--version", action="version", version=f"trioscgi {__version__}")
    for key in _config.FIELD_NAMES:
        if key in _NO_FLAG:
            continue
        flags = [_flag_name(key)]
        if key in _SHORT:
            flags.insert(0, _SHORT[key])
        hint, _ = _config._strip_optional(_config._HINTS[key])
        what = _HELP.get(key, f"the {key!r} setting")
        # argparse %-formats help strings: the access log atoms need escaping.
        text = f"{what} (default: {_default_text(key)})".replace("%", "%%")
        metavar = "SECONDS" if hint is float else key.split("_")[-1].upper()
        kwargs: dict[str, Any] = {
            "dest": key,
            "metavar": _METAVARS.get(key, metavar),
            "help": text,
        }
        if key in _REPEATED:
            kwargs["action"] = "append"
        choices = getattr(hint, "__args__", None)
        if key in ("lifespan", "interface", "protocol", "app_loop") and choices:
            kwargs["choices"] = choices
            kwargs["metavar"] = "|".join(choices)
        parser.add_argument(*flags, **kwargs)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; an unknown flag exits 2 with the nearest real flag.

    argparse lumps unknown arguments together with no suggestion; the config
    file's unknown keys get one (the same helper), so flags get one too.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
        unknown = next((x for x in extra if x.startswith("-")), None)
        if unknown is None:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        name = unknown.partition("=")[0]
        parser.error(f"unrecognized argument {name!r}{_config.did_you_mean(name, flags)}")
    return args


def _flag_value(key: str, text: Any) -> Any:
    """Convert a flag's text to the field's type; errors name the flag."""
    flag = _flag_name(key)
    hint, nullable = _config._strip_optional(_config._HINTS[key])
    try:
        if isinstance(text, str):
            if nullable and text == "":
                return None
            if key == "unix_socket_mode":
                return _config.check_value(key, text)
            if hint is int:
                try:
                    text = int(text)
                except ValueError:
                    raise ConfigError(f"must be an integer, got {text!r}") from None
            elif hint is float:
                try:
                    text = float(text)
                except ValueError:
                    raise ConfigError(f"must be a number (seconds), got {text!r}") from None
        return _config.check_value(key, text)
    except ConfigError as exc:
        message = str(exc).replace(f"key {key!r} ", "", 1).replace(f"key {key!r}: ", "", 1)
        raise ConfigError(f"{flag}: {message}") from None


def resolve_config(args: argparse.Namespace) -> Config:
    """Defaults, then the file, then the flags.

    Raises:
        ConfigError: every problem in the file and the flags, each naming the
            file or the flag at fault.
    """
    options = vars(args)
    path = options.get("config")
    problems: list[str] = []
    try:
        config = _config.load_config(path) if path else Config()
    except ConfigError as exc:
        problems.extend(exc.problems)
        config = Config()
    changes: dict[str, Any] = {}
    for key in _config.FIELD_NAMES:
        if key in options:
            try:
                changes[key] = _flag_value(key, options[key])
            except ConfigError as exc:
                problems.extend(exc.problems)
    if problems:
        raise ConfigError(*problems)
    config = config.replace(**changes)
    if config.bind == _DEFAULT_BIND and "bind" not in changes:
        from .._listeners import spawned_with_listening_socket  # noqa: PLC0415

        if spawned_with_listening_socket():
            # No address given and a listening socket on fd 0: started by
            # mod_fcgid or spawn-fcgi (FCGI_LISTENSOCK_FILENO); serve it.
            config = config.replace(bind=["fd://0"])
    config.validate()
    return config


def _print_error(message: str, details: str = "") -> None:
    if details:
        sys.stderr.write(details if details.endswith("\n") else details + "\n")
    sys.stderr.write(f"trioscgi: {message}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def _pid_file(path: str | None) -> Iterator[None]:
    if path is None:
        yield
        return
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(f"{os.getpid()}\n")
    except OSError as exc:
        raise ConfigError(f"pid_file: cannot write {path!r}: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def load_configured_app(config: Config) -> Any:
    """Load ``config.app`` as configured (factory, app_dir, interface).

    Raises:
        AppLoadError: the app cannot be imported or is not usable.
    """
    return _load_configured(config)[0]


def _load_configured(config: Config) -> tuple[Any, str]:
    """The app ready to serve (a WSGI app wrapped), and its interface."""
    from .._apps.wsgi import detect_interface, wrap_wsgi  # noqa: PLC0415

    if config.app is None:
        raise AppLoadError("no application given: pass MODULE:ATTR or set 'app' in the config file")
    app = load_app(config.app, factory=config.factory, app_dir=config.app_dir)
    try:
        interface = detect_interface(app, config.interface)
    except ValueError as exc:
        raise AppLoadError(str(exc)) from None
    return (wrap_wsgi(app, config) if interface == "wsgi" else app), interface


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trioscgi`` command; returns the exit code."""
    args = parse_args(argv)
    try:
        config = resolve_config(args)
        from .metrics import check_metrics  # noqa: PLC0415
        from .reload import check_reload  # noqa: PLC0415

        check_reload(config)
        check_metrics(config)
        if config.app is None:
            build_parser().print_usage(sys.stderr)
            _print_error("no application given: pass MODULE:ATTR or set 'app' in the config file")
            return EXIT_USAGE
        if getattr(args, "check_config", False):
            return _check_config(config, getattr(args, "config", None))
        from .logging import setup_logging  # noqa: PLC0415

        setup_logging(config)
    except ConfigError as exc:
        for problem in exc.problems:
            _print_error(f"config error: {problem}")
        return EXIT_USAGE

    # --reload: the supervisor with one worker, which it replaces on a change
    # as on SIGHUP (the supervisor itself never imports the app).
    if config.workers > 1 or config.reload:
        return _run_supervised(config, argv)

    from .run import pin_to_cpu  # noqa: PLC0415

    # Before the app is imported: threads it starts inherit the affinity.
    cpu = next(iter(_config.parse_cpu_list(config.cpu_affinity)), None)
    try:
        pin_to_cpu(cpu)
    except OSError as exc:  # a CPU outside this process's cgroup cpuset
        _print_error(f"config error: cpu_affinity: can't run on CPU {cpu}: {exc}")
        return EXIT_USAGE
    try:
        app = load_configured_app(config)
    except AppLoadError as exc:
        _print_error(str(exc), exc.details)
        return EXIT_USAGE
    try:
        with _pid_file(config.pid_file):
            return _run_single(app, config)
    except ConfigError as exc:
        _print_error(f"config error: {exc}")
        return EXIT_USAGE


def _check_config(config: Config, path: str | None) -> int:
    """``--check-config``: what a start does before it serves, short of binding.

    Each check that passes is reported on stderr as it is made; the first that
    fails is reported as a start would report it, with the exit code a start
    would have. When all pass, the effective settings go to stdout as TOML.

    Raises:
        ConfigError: a log file or the pid file can't be written, or the
            ``[logging]`` table is invalid.
    """
    from .._listeners import BindError, check_binds  # noqa: PLC0415
    from .logging import setup_logging  # noqa: PLC0415

    def report(what: str, checked: bool = True) -> None:
        sys.stderr.write(f"trioscgi: {'checked' if checked else 'not checked'}: {what}\n")
        sys.stderr.flush()

    report(f"the settings ({'defaults, ' + path if path else 'defaults'}, command line)")
    setup_logging(config, install_sigusr1=False)
    logs = f"error_log {config.error_log!r}, access_log " + (
        repr(config.access_log) if config.access_log is not None else "off"
    )
    report(f"the logs open ({logs}{', [logging] table' if config.logging else ''})")
    if config.pid_file is not None:
        _check_pid_file(config.pid_file)
        report(f"pid_file {config.pid_file!r} can be written")
    try:
        _, interface = _load_configured(config)
    except AppLoadError as exc:
        _print_error(str(exc), exc.details)
        return EXIT_USAGE
    kind = "an ASGI" if interface == "asgi" else "a WSGI"
    report(f"the app {config.app!r} imports ({kind} application)")
    try:
        for checked, line in check_binds(config):
            report(f"bind {line}", checked)
    except BindError as exc:
        _print_error(f"cannot listen: {exc}")
        return EXIT_RUNTIME
    sys.stdout.write(_config.render_config(config))
    return EXIT_OK


def _check_pid_file(path: str) -> None:
    """The checks :func:`_pid_file` would fail, without writing the file.

    Raises:
        ConfigError: ``pid_file: cannot write ...``, as a start says it.
    """
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ConfigError(f"pid_file: cannot write {path!r}: directory {parent} does not exist")
    target = path if os.path.lexists(path) else parent
    if not os.access(target, os.W_OK):
        raise ConfigError(f"pid_file: cannot write {path!r}: permission denied")


def _run_single(app: Any, config: Config) -> int:
    from .._listeners import BindError  # noqa: PLC0415
    from . import notify  # noqa: PLC0415
    from .logging import reopen_logs  # noqa: PLC0415
    from .run import run  # noqa: PLC0415

    metrics_listener = None
    try:
        if config.metrics_bind is not None:
            from .metrics_http import bind_metrics  # noqa: PLC0415

            try:
                metrics_listener = bind_metrics(config.metrics_bind)
            except OSError as exc:
                raise BindError(f"metrics_bind {config.metrics_bind}: {exc}") from None
        return run(
            app,
            config,
            on_ready=notify.ready,
            on_stopping=notify.stopping,
            on_reopen_logs=reopen_logs,
            metrics_listener=metrics_listener,
        )
    except BindError as exc:
        _print_error(f"cannot listen: {exc}")
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if metrics_listener is not None:
            from .metrics_http import close_metrics  # noqa: PLC0415

            close_metrics(metrics_listener)


def _run_supervised(config: Config, argv: Sequence[str] | None) -> int:
    from .supervisor import run_supervisor  # noqa: PLC0415

    def reload_config() -> Config:
        # SIGHUP: read the same file and flags again (new code and config).
        # Raising keeps the old configuration (the supervisor logs why).
        new = resolve_config(parse_args(argv))
        from .logging import setup_logging  # noqa: PLC0415
        from .reload import check_reload  # noqa: PLC0415

        check_reload(new)

        setup_logging(new, install_sigusr1=False)
        return new

    # Each worker loads the app named by the config of its own generation
    # (after fork), so a reload that fails leaves the old app in place.
    with _pid_file(config.pid_file):
        return run_supervisor(config, load_app=load_configured_app, reload_config=reload_config)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
