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

from . import _config
from ._config import Config, ConfigError
from ._importer import AppLoadError, load_app
from ._types import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE
from ._version import __version__

# Fields with no command-line flag: ``app`` is the positional argument,
# ``logging`` is a table that only makes sense in the file.
_NO_FLAG = {"app", "factory", "logging"}
# Flags that take a list and may be repeated, with their singular spelling.
_REPEATED = {"bind": "--bind", "trusted_peers": "--trusted-peer"}
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
}
_HELP = {
    "bind": "address to listen on: unix:PATH, HOST:PORT, [V6]:PORT, fd://N, systemd, "
    "systemd:NAME (repeatable)",
    "trusted_peers": "peer address or CIDR allowed to connect over TCP, or '*' (repeatable)",
    "unix_socket_mode": "permissions of Unix sockets we create, octal (660, 0o660)",
    "app_dir": "directory put first on sys.path before importing the app "
    "(default: the current directory)",
    "access_log": "access log file, '-' = stdout ('' = off)",
    "error_log": "error log file, '-' = stderr",
    "lifespan": "run the ASGI lifespan protocol",
    "interface": "application interface (auto detects; ambiguous apps need the flag)",
    "app_loop": "event loop the application runs on (auto: asyncio for Django and Quart, "
    "else trio; docs/asyncio.md)",
    "cpu_affinity": "pin each worker process to one of these CPUs, e.g. 0,1 or 0-3 ('' = off)",
}


def _flag_name(key: str) -> str:
    return _REPEATED.get(key, "--" + key.replace("_", "-"))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every flag's default is 'not given' so the file can apply."""
    parser = _Parser(
        prog="trioscgi",
        description="Serve an ASGI or WSGI application over SCGI behind nginx, Apache or lighttpd.",
        epilog="Precedence: command-line flag > config file > default. "
        "Every key is documented in docs/configuration.md.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "app", nargs="?", metavar="MODULE:ATTR", help="the application, e.g. myproject.asgi:app"
    )
    parser.add_argument("-c", "--config", metavar="FILE", help="TOML config file")
    parser.add_argument(
        "--factory",
        action="store_true",
        help="MODULE:ATTR is a callable returning the application",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print the effective settings and exit",
    )
    parser.add_argument("--version", action="version", version=f"trioscgi {__version__}")
    for key in _config.FIELD_NAMES:
        if key in _NO_FLAG:
            continue
        flags = [_flag_name(key)]
        if key in _SHORT:
            flags.insert(0, _SHORT[key])
        hint, _ = _config._strip_optional(_config._HINTS[key])
        kwargs: dict[str, Any] = {
            "dest": key,
            "metavar": _METAVARS.get(key, key.split("_")[-1].upper()),
            "help": _HELP.get(key, f"see '{key}' in docs/configuration.md"),
        }
        if key in _REPEATED:
            kwargs["action"] = "append"
        choices = getattr(hint, "__args__", None)
        if key in ("lifespan", "interface", "app_loop") and choices:
            kwargs["choices"] = choices
            kwargs["metavar"] = "|".join(choices)
        parser.add_argument(*flags, **kwargs)
    return parser


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
        ConfigError: naming the file or flag at fault.
    """
    options = vars(args)
    path = options.get("config")
    config = _config.load_config(path) if path else Config()
    changes: dict[str, Any] = {}
    for key in _config.FIELD_NAMES:
        if key in options:
            changes[key] = _flag_value(key, options[key])
    config = config.replace(**changes)
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
    if config.app is None:
        raise AppLoadError("no application given: pass MODULE:ATTR or set 'app' in the config file")
    app = load_app(config.app, factory=config.factory, app_dir=config.app_dir)
    return _adapt_interface(app, config)


def _adapt_interface(app: Any, config: Config) -> Any:
    from ._wsgi import detect_interface, wrap_wsgi  # noqa: PLC0415

    try:
        interface = detect_interface(app, config.interface)
    except ValueError as exc:
        raise AppLoadError(str(exc)) from None
    return wrap_wsgi(app, config) if interface == "wsgi" else app


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trioscgi`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = resolve_config(args)
        if config.app is None and not getattr(args, "check_config", False):
            parser.print_usage(sys.stderr)
            _print_error("no application given: pass MODULE:ATTR or set 'app' in the config file")
            return EXIT_USAGE
        if getattr(args, "check_config", False):
            sys.stdout.write(_config.render_config(config))
            return EXIT_OK
        from ._logging import setup_logging  # noqa: PLC0415

        setup_logging(config)
    except ConfigError as exc:
        _print_error(f"config error: {exc}")
        return EXIT_USAGE

    if config.workers > 1:
        return _run_supervised(config, argv)

    from ._run import pin_to_cpu  # noqa: PLC0415

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


def _run_single(app: Any, config: Config) -> int:
    from . import _notify  # noqa: PLC0415
    from ._listeners import BindError  # noqa: PLC0415
    from ._logging import reopen_logs  # noqa: PLC0415
    from ._run import run  # noqa: PLC0415

    try:
        return run(
            app,
            config,
            on_ready=_notify.ready,
            on_stopping=_notify.stopping,
            on_reopen_logs=reopen_logs,
        )
    except BindError as exc:
        _print_error(f"cannot listen: {exc}")
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_OK


def _run_supervised(config: Config, argv: Sequence[str] | None) -> int:
    from ._supervisor import run_supervisor  # noqa: PLC0415

    def reload_config() -> Config:
        # SIGHUP: read the same file and flags again (new code and config).
        # Raising keeps the old configuration (the supervisor logs why).
        new = resolve_config(build_parser().parse_args(argv))
        from ._logging import setup_logging  # noqa: PLC0415

        setup_logging(new, install_sigusr1=False)
        return new

    # Each worker loads the app named by the config of its own generation
    # (after fork), so a reload that fails leaves the old app in place.
    with _pid_file(config.pid_file):
        return run_supervisor(config, load_app=load_configured_app, reload_config=reload_config)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
