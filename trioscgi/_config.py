"""The one typed configuration object every part of trioscgi takes."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from ._accesslog import compile_format
from ._addresses import parse_bind, parse_trusted_peers
from ._importer import split_app_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or out of range.

    One error may report several problems (every mistake in a config file,
    not only the first): ``problems`` has one line for each, and ``str()``
    joins them with newlines.
    """

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems: tuple[str, ...] = problems


def _describe(value: Any) -> str:
    """``'two' (a string)`` style rendering of a value in an error message."""
    kind = {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)
    return f"{value!r} ({kind})"


# ---------------------------------------------------------------------------
# Validators: the checks beyond the type. Each one takes (key, value), the
# value already type-checked against the field's annotation (None for an
# optional field that is unset), and raises ConfigError naming the key. A
# field lists its validators in its annotation: Annotated[type, check, ...].
# ---------------------------------------------------------------------------


def _non_negative(key: str, value: Any) -> None:
    if value is not None and (math.isnan(value) or value < 0):
        raise ConfigError(f"key {key!r} must be >= 0, got {value!r}")


def _at_least_one(key: str, value: Any) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"key {key!r} must be >= 1, got {value!r}")


def _request_ids(key: str, value: Any) -> None:
    # FastCGI request ids are 16-bit and 0 is for management records.
    if value > 65535:
        raise ConfigError(f"key {key!r} must be at most 65535, got {value!r}")


def _not_empty(key: str, value: Any) -> None:
    if value == "":
        raise ConfigError(f"key {key!r} must not be an empty string")


def _app_spec(key: str, value: Any) -> None:
    if value is not None:
        try:
            split_app_spec(value)
        except ValueError as exc:
            raise ConfigError(f"key {key!r}: {exc}") from None


def _bind_list(key: str, value: list[str]) -> None:
    if not value:
        raise ConfigError(f"key {key!r} must name at least one address")
    for entry in value:
        try:
            parse_bind(entry)
        except ValueError as exc:
            raise ConfigError(f"key {key!r}: {exc}") from None


def _peer_list(key: str, value: list[str]) -> None:
    try:
        parse_trusted_peers(value)
    except ValueError as exc:
        raise ConfigError(f"key {key!r}: {exc}") from None


def _url_prefix(key: str, value: str) -> None:
    # "/" is allowed: "mounted at the root", overriding a SCRIPT_NAME the
    # front-end sends (lighttpd on "/" without fix-root-scriptname).
    if value not in ("", "/") and (not value.startswith("/") or value.endswith("/")):
        raise ConfigError(
            f"key {key!r} must be empty, '/', or start with '/' and not end with '/' "
            f"(like '/app'), got {value!r}"
        )


_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _log_level(key: str, value: str) -> None:
    if value.lower() not in _LOG_LEVELS:
        wanted = ", ".join(repr(v) for v in _LOG_LEVELS)
        raise ConfigError(f"key {key!r} must be one of {wanted}, got {value!r}")


def _cpu_list(key: str, value: str) -> None:
    try:
        parse_cpu_list(value)
    except ValueError as exc:
        raise ConfigError(f"key {key!r}: {exc}") from None


def _log_format(key: str, value: str) -> None:
    try:
        compile_format(value)
    except ValueError as exc:
        raise ConfigError(f"key {key!r}: {exc}") from None


def _metrics_bind(key: str, value: str | None) -> None:
    # Plain HTTP for Prometheus: a TCP address or a unix: path; not the
    # systemd/fd:// forms, which are for the front-end's sockets.
    if value is None:
        return
    try:
        spec = parse_bind(value)
    except ValueError as exc:
        raise ConfigError(f"key {key!r}: {exc}") from None
    if spec.kind not in ("unix", "tcp"):
        raise ConfigError(f"key {key!r} must be HOST:PORT or unix:PATH, got {value!r}")


class _Parse:
    """Annotated metadata for a field whose value needs more than a type check.

    ``parse(value)`` takes the value as written (TOML, a flag's text, code),
    replaces the type check and returns the field's value.
    """

    __slots__ = ("parse",)

    def __init__(self, parse: Callable[[Any], Any]) -> None:
        self.parse = parse


def _octal_mode(value: Any) -> int:
    # TOML can say 0o660 itself; a string ("660", "0o660") is the other
    # spelling operators know from chmod. A decimal 660 is surely a mistake.
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        if not text or any(c not in "01234567" for c in text):
            raise ConfigError(
                f"key 'unix_socket_mode' must be an octal mode like \"660\" or 0o660, "
                f"got {_describe(value)}"
            )
        value = int(text, 8)
    elif not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(
            f"key 'unix_socket_mode' must be an octal mode like 0o660 or \"660\", "
            f"got {_describe(value)}"
        )
    if not 0 <= value <= 0o777:
        raise ConfigError(
            f"key 'unix_socket_mode' must be a mode between 0o000 and 0o777, got {value} "
            '(write 0o660 or "660": a bare 660 is a decimal number)'
        )
    return int(value)


@dataclass(frozen=True)
class Setting:
    """What the command line says about a setting: a :class:`Config` field's metadata.

    The one declaration of each setting is its field: name, type, default,
    checks (in the annotation) and this. ``--help`` is built from it
    (``_daemon/cli.py``); tests/test_config.py checks config.example.toml and
    docs/configuration.md against the fields' defaults.

    Attributes:
        help: what it does, for ``--help`` ("(default: ...)" is added).
        flag: its long flag; ``""`` = ``--`` and the key with ``-`` for ``_``;
            ``None`` = no generic flag (the file, or a flag of its own).
        repeat: the flag may be repeated, each one adding an item (a list).
        short: a short flag too (``-w``).
        metavar: the flag's value in ``--help``, when the type's isn't apt.
        default_text: the default in words, when the value itself reads badly.
    """

    help: str
    flag: str | None = ""
    repeat: bool = False
    short: str | None = None
    metavar: str | None = None
    default_text: str | None = None


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    help: str,
    flag: str | None = "",
    repeat: bool = False,
    short: str | None = None,
    metavar: str | None = None,
    default_text: str | None = None,
) -> Any:
    """A :class:`Config` field: its default (or ``factory``) and its :class:`Setting`."""
    meta = {"setting": Setting(help, flag, repeat, short, metavar, default_text)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


LifespanMode = Literal["auto", "on", "off"]
Interface = Literal["auto", "asgi", "wsgi"]
AppLoop = Literal["auto", "trio", "asyncio"]
ProtocolName = Literal["auto", "scgi", "fastcgi", "uwsgi"]
Seconds = Annotated[float, _non_negative]
AtLeastOne = Annotated[int, _at_least_one]
NonNegative = Annotated[int, _non_negative]
NonEmptyStr = Annotated[str, _not_empty]


@dataclass
class Config:
    """Every setting of trioscgi, with its default.

    The daemon fills it from a TOML file and the command line; an embedding
    program builds it directly. Every key is documented in
    ``config.example.toml`` and ``docs/configuration.md``.
    """

    # To add a setting, add its field here, and only here for the code: name,
    # type, default, its checks beyond the type as Annotated metadata, and what
    # --help says of it (a Setting):
    #
    #     fastcgi_max_requests: Annotated[int, _at_least_one] = setting(16, help="...")
    #     accept_timeout: Seconds = setting(5.0, help="...")
    #     protocol: Literal["scgi", "fastcgi", "auto"] = setting("scgi", help="...")
    #
    # The annotation alone is checked: bool, int, float, str, a Literal of
    # choices, list[str], dict[str, Any], each "| None" when it may be unset.
    # A validator is a function (key, value) -> None raising ConfigError (see
    # above); _Parse(fn) replaces the type check (unix_socket_mode). The
    # command line gets a --flag for it from the Setting (_daemon/cli.py). Then
    # document it in config.example.toml and docs/configuration.md, with the
    # same default: tests/test_config.py checks both against the field.

    # --- what to serve -------------------------------------------------------
    app: Annotated[str | None, _app_spec] = setting(
        None,
        help="the application, like myproject.asgi:app (or 'app' in the config file)",
        flag=None,
    )
    factory: bool = setting(
        False,
        default_text="off",
        help="MODULE:ATTR is a callable returning the application, called once per worker",
        flag=None,
    )
    app_dir: NonEmptyStr | None = setting(
        None,
        help="directory put first on sys.path before importing the app",
        metavar="DIR",
        default_text="the current directory",
    )
    interface: Interface = setting(
        "auto",
        help=(
            "what the app is: 'auto' takes an async callable of 3 arguments for ASGI and a plain "
            "one of 2 for WSGI, and asks for this flag when it can't tell"
        ),
    )
    app_loop: AppLoop = setting(
        "auto",
        help=(
            "event loop the app runs on: 'auto' = asyncio for Django's ASGI handler, Quart, "
            "Channels and asgiref apps, trio for the rest; 'asyncio' for an app on trio or anyio "
            "that calls an asyncio-only library"
        ),
    )
    wsgi_threads: AtLeastOne = setting(
        16,
        help=(
            "threads running WSGI requests in each worker process: the most WSGI requests in "
            "progress at once; ASGI apps don't use them"
        ),
    )

    # --- where to listen -----------------------------------------------------
    bind: Annotated[list[str], _bind_list] = setting(
        factory=lambda: ["127.0.0.1:4000"],
        help=(
            "address to listen on: unix:PATH, unix:@NAME, HOST:PORT, [V6]:PORT, fd://N, systemd "
            "or systemd:NAME; repeat the flag for several (they replace the file's list)"
        ),
        flag="--bind",
        repeat=True,
        short="-b",
        metavar="BIND",
    )
    backlog: AtLeastOne = setting(
        1024, help="listen() backlog: connections the kernel queues while the server is busy"
    )
    unix_socket_mode: Annotated[int, _Parse(_octal_mode)] = setting(
        0o660,
        help=(
            "permissions of the Unix sockets trioscgi creates, in octal (660 or 0o660), set "
            "before any client can connect"
        ),
        metavar="MODE",
        default_text="660",
    )
    unix_socket_owner: str | None = setting(
        None,
        help="owner (user name or uid) of the Unix sockets trioscgi creates",
        default_text="the server's user",
    )
    unix_socket_group: str | None = setting(
        None,
        help="group (name or gid) of the Unix sockets trioscgi creates",
        default_text="the server's group",
    )
    trusted_peers: Annotated[list[str], _peer_list] = setting(
        factory=lambda: ["127.0.0.1", "::1"],
        help=(
            "peer allowed to connect over TCP (it can forge every header the app sees): an IP "
            "address, a CIDR network or '*' for anyone; repeat the flag for several"
        ),
        flag="--trusted-peer",
        repeat=True,
        metavar="ADDR",
    )

    # --- the wire protocol -----------------------------------------------------
    protocol: ProtocolName = setting(
        "auto",
        help=(
            "wire protocol: scgi, fastcgi, uwsgi, or auto (each connection's first byte "
            "tells them apart, so one socket serves all three)"
        ),
    )
    idle_timeout: Seconds = setting(
        60.0, help="seconds a kept-alive FastCGI connection may wait for its next request"
    )
    fastcgi_max_requests: Annotated[int, _at_least_one, _request_ids] = setting(
        64,
        help=(
            "FastCGI requests one connection may run at once (reported as FCGI_MAX_REQS); 1 = no "
            "multiplexing"
        ),
    )

    # --- the scope -----------------------------------------------------------
    root_path: Annotated[str, _url_prefix] = setting(
        "",
        help=(
            "URL prefix the app is mounted under, like /app, for front-ends that don't send it as"
            " SCRIPT_NAME (nginx's scgi_params); '/' = mounted at the root; '' = the front-end's "
            "SCRIPT_NAME where it means one"
        ),
        metavar="PATH",
    )

    # --- lifespan and shutdown ----------------------------------------------
    lifespan: LifespanMode = setting(
        "auto",
        help=(
            "the ASGI lifespan protocol: auto = if the app supports it, on = required (a failure "
            "exits with 3), off = never"
        ),
    )
    startup_timeout: Seconds = setting(
        60.0,
        help="seconds the app gets to finish lifespan startup; past it the server exits with 3",
    )
    shutdown_timeout: Seconds = setting(
        30.0, help="seconds the app gets for lifespan shutdown before it is cancelled"
    )
    graceful_timeout: Seconds = setting(
        30.0, help="seconds requests in flight get to finish after SIGTERM or SIGINT"
    )

    # --- limits --------------------------------------------------------------
    max_header_size: AtLeastOne = setting(
        65536,
        help=(
            "largest request head in bytes (SCGI's header block, FastCGI's PARAMS); a larger "
            "request gets 431"
        ),
    )
    max_body_size: Annotated[int | None, _non_negative] = setting(
        None,
        help="largest request body in bytes; a larger one gets 413 before it is read",
        default_text="no limit",
    )
    header_timeout: Seconds = setting(
        10.0,
        help=(
            "seconds for a request's whole head (SCGI's header block, FastCGI's first request) to"
            " arrive"
        ),
    )
    read_timeout: Seconds = setting(
        60.0, help="longest wait in seconds between two reads of the request body"
    )
    write_timeout: Seconds = setting(
        60.0, help="longest wait in seconds for the front-end to accept more response bytes"
    )
    drain_timeout: Seconds = setting(
        5.0,
        help=(
            "seconds spent reading and discarding an unread request body after the response, so "
            "that nginx doesn't answer 502"
        ),
    )
    max_connections: AtLeastOne = setting(
        1024,
        help=(
            "connections served at once by each worker process; at the limit trioscgi stops "
            "accepting"
        ),
    )

    # --- WebSocket (docs/websocket.md) --------------------------------------------
    websocket_max_message_size: AtLeastOne = setting(
        16777216,
        help=(
            "largest WebSocket message in bytes (characters for text); a larger one closes the "
            "connection with 1009"
        ),
    )
    websocket_ping_interval: Seconds = setting(
        20.0,
        help=(
            "seconds between the pings that keep an idle WebSocket alive through the front-end's "
            "read timeout; 0 = no pings"
        ),
    )
    websocket_ping_timeout: Seconds = setting(
        20.0,
        help=(
            "seconds a WebSocket peer gets to answer a ping or a close before the connection is cut"
        ),
    )
    websocket_per_message_deflate: bool = setting(
        True, help="offer permessage-deflate compression to WebSocket clients that ask for it"
    )

    # --- processes -----------------------------------------------------------
    workers: AtLeastOne = setting(
        1,
        help=(
            "worker processes: 1 serves in this process; more run under a supervisor that "
            "restarts them and reloads them on SIGHUP"
        ),
        short="-w",
    )
    max_requests: NonNegative = setting(
        0, help="replace a worker after this many requests; 0 = never"
    )
    max_requests_jitter: NonNegative = setting(
        0, help="add 0 to N requests at random to max_requests for each worker"
    )
    worker_timeout: Seconds = setting(
        30.0,
        help=(
            "with workers >= 2: kill and replace a worker whose event loop sent no heartbeat for "
            "this many seconds (blocked, or stopped); 0 = never"
        ),
    )
    pid_file: NonEmptyStr | None = setting(
        None,
        help="write the process id to this file; removed on exit",
        metavar="PATH",
        default_text="none",
    )
    cpu_affinity: Annotated[str, _cpu_list] = setting(
        "",
        help="pin each worker process to one of these CPUs, like 0,1 or 0-3; '' = no pinning",
        metavar="CPUS",
    )

    # --- development: restart on source changes (docs/operations.md) --------
    reload: bool = setting(
        False,
        default_text="off",
        help=(
            "development: restart the app when its source changes, keeping the sockets bound "
            "(needs trioscgi[reload]; one worker only)"
        ),
        flag=None,
    )
    reload_dirs: list[str] = setting(
        factory=list,
        help="with --reload: a directory to watch; repeat the flag for several",
        flag="--reload-dir",
        repeat=True,
        metavar="DIR",
        default_text="app_dir, else the current directory",
    )
    reload_include: list[str] = setting(
        factory=lambda: ["*.py"],
        help=(
            "with --reload: a glob a changed file's name or path must match to restart the app; "
            "repeat the flag for several (they replace the default *.py)"
        ),
        flag="--reload-include",
        repeat=True,
        metavar="GLOB",
    )
    reload_exclude: list[str] = setting(
        factory=list,
        help=(
            "with --reload: a glob of files whose changes are ignored; repeat the flag for several"
        ),
        flag="--reload-exclude",
        repeat=True,
        metavar="GLOB",
        default_text="none",
    )

    # --- metrics (docs/operations.md) -----------------------------------------
    metrics_bind: Annotated[str | None, _metrics_bind] = setting(
        None,
        help=(
            "serve Prometheus metrics at GET /metrics over plain HTTP on HOST:PORT or unix:PATH "
            "(needs trioscgi[metrics]); unset = off"
        ),
        metavar="ADDR",
        default_text="off",
    )

    # --- logging -------------------------------------------------------------
    log_level: Annotated[str, _log_level] = setting(
        "info", help="level of the trioscgi logger: critical, error, warning, info or debug"
    )
    error_log: NonEmptyStr = setting(
        "-",
        help="where the trioscgi logger writes: a file, or '-' for stderr",
        metavar="PATH",
        default_text="'-'",
    )
    access_log: NonEmptyStr | None = setting(
        None,
        help=(
            "where one line per request is written: a file, or '-' for stdout; '' turns off a log"
            " the config file set"
        ),
        metavar="PATH",
        default_text="off",
    )
    access_log_format: Annotated[str, _log_format] = setting(
        '%(h)s "%(r)s" %(s)s %(b)s %(D)s',
        help=(
            "the access log line, a %-format over atoms such as %(h)s client, %(t)s time, %(r)s "
            "request line, %(s)s status, %(b)s bytes, %(D)s microseconds, %({Header}i)s a request"
            " header"
        ),
    )
    logging: dict[str, Any] | None = setting(
        None, help="a [logging] table for logging.config.dictConfig (config file only)", flag=None
    )

    def replace(self, **changes: Any) -> Config:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Check every field; ``serve()`` calls this before binding anything.

        Raises:
            ConfigError: the message names the key, what was expected and the value.
        """
        validate(self)


# ---------------------------------------------------------------------------
# Loading and validation (the daemon's TOML file, the command line, and
# Config objects built in code by embedding programs all go through here).
# ---------------------------------------------------------------------------

# The types alone (Annotated stripped), for the type check and the CLI.
_HINTS: dict[str, Any] = typing.get_type_hints(Config)
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config))
# What the command line says of each field.
SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in dataclasses.fields(Config)}


def _metadata(hint: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return tuple(hint.__metadata__)
    if origin in (typing.Union, types.UnionType):  # NonEmptyStr | None
        return tuple(m for arg in typing.get_args(hint) for m in _metadata(arg))
    return ()


# Each field's Annotated metadata: its validators (and _Parse).
_CHECKS: dict[str, tuple[Any, ...]] = {
    key: _metadata(hint) for key, hint in typing.get_type_hints(Config, include_extras=True).items()
}


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], len(rest) != len(args)
    return hint, False


def _check_type(key: str, value: Any) -> Any:
    """Check ``value`` against the field's annotation; return it normalised."""
    hint, nullable = _strip_optional(_HINTS[key])
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"key {key!r} may not be empty")
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value
        wanted = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"key {key!r} must be one of {wanted}, got {_describe(value)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"key {key!r} must be true or false, got {_describe(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"key {key!r} must be an integer, got {_describe(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"key {key!r} must be a number (seconds), got {_describe(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"key {key!r} must be a string, got {_describe(value)}")
    if origin is list:
        # A lone string is the one-element list (``bind = "unix:/run/app.sock"``).
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"key {key!r} must be an array of strings, got {_describe(value)}")
    if origin is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"key {key!r} must be a table, got {_describe(value)}")
    raise AssertionError(f"no type check for {key!r}: {hint!r}")  # pragma: no cover


def parse_cpu_list(text: str) -> list[int]:
    """CPU numbers from ``"0,2-3"`` (taskset's syntax); ``""`` is none.

    Raises:
        ValueError: not that syntax, or a CPU the machine does not have.
    """
    cpus: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f'{text!r} is not a list of CPU numbers like "0,2-3"')
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise ValueError(f"range {part!r} runs backwards")
        cpus.extend(c for c in range(low, high + 1) if c not in cpus)
    # Checked against the machine, not this process's current affinity: a
    # worker already pinned to one CPU validates the same config.
    count = os.cpu_count() or 1
    outside = [c for c in cpus if c >= count]
    if outside:
        raise ValueError(f"CPU {outside[0]} does not exist here (CPUs 0-{count - 1})")
    return cpus


def check_value(key: str, value: Any) -> Any:
    """Type- and range-check one setting; return it normalised.

    Raises:
        ConfigError: naming ``key``, what was expected and ``value``.
    """
    checks = _CHECKS[key]
    for check in checks:
        if isinstance(check, _Parse):
            return check.parse(value)
    value = _check_type(key, value)
    for check in checks:
        check(key, value)
    return value


def validate(config: Config) -> None:
    """Check every field of ``config`` (also one built in code, not from a file).

    Raises:
        ConfigError: the first problem found, naming the key.
    """
    for key in FIELD_NAMES:
        check_value(key, getattr(config, key))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'y'?)`` for the choice closest to a mistyped ``word``, or ``""``.

    The config file's keys and the command line's flags both use it. A word
    that begins exactly one choice (an abbreviation) suggests that choice.
    """
    choices = list(choices)
    starting = [c for c in choices if c.startswith(word)]
    if len(starting) == 1:
        return f" (did you mean {starting[0]!r}?)"
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key_message(key: str) -> str:
    """``unknown key 'x' (did you mean 'y'?)``."""
    return f"unknown key {key!r}{did_you_mean(key, FIELD_NAMES)}"


def config_from_mapping(data: Mapping[str, Any], *, base: Config | None = None) -> Config:
    """Apply a mapping of settings (a parsed TOML file) over ``base`` (or defaults).

    Raises:
        ConfigError: every unknown key (with the nearest valid key), wrong type and
            bad value, one problem each.
    """
    changes: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in data.items():
        if key not in _HINTS:
            problems.append(unknown_key_message(key))
            continue
        try:
            changes[key] = check_value(key, value)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(*problems)
    return dataclasses.replace(base if base is not None else Config(), **changes)


def load_config(path: str | os.PathLike[str], *, base: Config | None = None) -> Config:
    """Read a TOML config file.

    Flat keys are the :class:`Config` fields; a ``[logging]`` table goes to
    :func:`logging.config.dictConfig`.

    Raises:
        ConfigError: ``"<path>: <problem>"`` for an unreadable file, invalid
            TOML (with its line and column), or each unknown key, wrong type and
            bad value.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{os.fspath(path)}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{os.fspath(path)}: invalid TOML: {exc}") from None
    try:
        return config_from_mapping(data, base=base)
    except ConfigError as exc:
        raise ConfigError(*(f"{os.fspath(path)}: {problem}" for problem in exc.problems)) from None


# --- rendering (``--check-config``) -----------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    return json.dumps(str(value))


def render_config(config: Config) -> str:
    """The effective configuration as TOML that :func:`load_config` reads back."""
    lines = []
    for key in FIELD_NAMES:
        if key == "logging":
            continue
        value = getattr(config, key)
        if value is None:
            lines.append(f"# {key} is not set")
        elif key == "unix_socket_mode":
            lines.append(f"{key} = 0o{value:03o}")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    if config.logging is not None:
        lines.append("")
        lines.append("[logging]")
        for k, v in config.logging.items():
            lines.append(f"{_toml_key(str(k))} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"
