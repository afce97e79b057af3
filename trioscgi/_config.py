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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

Lifespan = Literal["auto", "on", "off"]
Interface = Literal["auto", "asgi", "wsgi"]
AppLoop = Literal["auto", "trio", "asyncio"]


@dataclass
class Config:
    """Every setting of trioscgi, with its default.

    The daemon fills it from a TOML file and the command line; an embedding
    program builds it directly. Every key is documented in
    ``config.example.toml`` and ``docs/configuration.md``.
    """

    # --- what to serve -------------------------------------------------------
    app: str | None = None
    factory: bool = False
    app_dir: str | None = None
    interface: Interface = "auto"
    app_loop: AppLoop = "auto"
    wsgi_threads: int = 16

    # --- where to listen -----------------------------------------------------
    bind: list[str] = field(default_factory=lambda: ["127.0.0.1:4000"])
    backlog: int = 1024
    unix_socket_mode: int = 0o660
    unix_socket_owner: str | None = None
    unix_socket_group: str | None = None
    trusted_peers: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])

    # --- the scope -----------------------------------------------------------
    root_path: str = ""

    # --- lifespan and shutdown ----------------------------------------------
    lifespan: Lifespan = "auto"
    startup_timeout: float = 60.0
    shutdown_timeout: float = 30.0
    graceful_timeout: float = 30.0

    # --- limits --------------------------------------------------------------
    max_header_size: int = 65536
    max_body_size: int | None = None
    header_timeout: float = 10.0
    read_timeout: float = 60.0
    write_timeout: float = 60.0
    drain_timeout: float = 5.0
    max_connections: int = 1024

    # --- processes -----------------------------------------------------------
    workers: int = 1
    max_requests: int = 0
    max_requests_jitter: int = 0
    pid_file: str | None = None
    cpu_affinity: str = ""

    # --- logging -------------------------------------------------------------
    log_level: str = "info"
    error_log: str = "-"
    access_log: str | None = None
    access_log_format: str = '%(h)s "%(r)s" %(s)s %(b)s %(D)s'
    logging: dict[str, Any] | None = None

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


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or out of range."""


_HINTS: dict[str, Any] = typing.get_type_hints(Config)
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config))
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


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


def _mode(value: Any) -> int:
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


def _non_negative(key: str, value: Any) -> None:
    if value is not None and (math.isnan(value) or value < 0):
        raise ConfigError(f"key {key!r} must be >= 0, got {value!r}")


def _at_least_one(key: str, value: Any) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"key {key!r} must be >= 1, got {value!r}")


def _check_bind(value: list[str]) -> None:
    if not value:
        raise ConfigError("key 'bind' must name at least one address")
    # Imported here: the listeners module imports this one.
    from ._listeners import parse_bind  # noqa: PLC0415

    for entry in value:
        try:
            parse_bind(entry)
        except ValueError as exc:
            raise ConfigError(f"key 'bind': {exc}") from None


def _check_trusted_peers(value: list[str]) -> None:
    from ._listeners import parse_trusted_peers  # noqa: PLC0415

    try:
        parse_trusted_peers(value)
    except ValueError as exc:
        raise ConfigError(f"key 'trusted_peers': {exc}") from None


def _check_value(key: str, value: Any) -> None:
    """Range and syntax checks beyond the type."""
    if key.endswith("_timeout") or key in ("max_requests", "max_requests_jitter", "max_body_size"):
        _non_negative(key, value)
    elif key in ("workers", "wsgi_threads", "backlog", "max_header_size", "max_connections"):
        _at_least_one(key, value)
    elif key == "bind":
        _check_bind(value)
    elif key == "trusted_peers":
        _check_trusted_peers(value)
    elif key == "log_level":
        if value.lower() not in _LOG_LEVELS:
            wanted = ", ".join(repr(v) for v in _LOG_LEVELS)
            raise ConfigError(f"key 'log_level' must be one of {wanted}, got {value!r}")
    elif key == "root_path":
        # "/" is allowed: "mounted at the root", overriding a SCRIPT_NAME the
        # front-end sends (lighttpd on "/" without fix-root-scriptname).
        if value not in ("", "/") and (not value.startswith("/") or value.endswith("/")):
            raise ConfigError(
                f"key 'root_path' must be empty, '/', or start with '/' and not end with '/' "
                f"(like '/app'), got {value!r}"
            )
    elif key == "app":
        if value is not None:
            from ._importer import split_app_spec  # noqa: PLC0415

            try:
                split_app_spec(value)
            except ValueError as exc:
                raise ConfigError(f"key 'app': {exc}") from None
    elif key in ("error_log", "access_log", "pid_file", "app_dir"):
        if value == "":
            raise ConfigError(f"key {key!r} must not be an empty string")
    elif key == "cpu_affinity":
        try:
            parse_cpu_list(value)
        except ValueError as exc:
            raise ConfigError(f"key 'cpu_affinity': {exc}") from None
    elif key == "access_log_format":
        from ._accesslog import compile_format  # noqa: PLC0415

        try:
            compile_format(value)
        except ValueError as exc:
            raise ConfigError(f"key 'access_log_format': {exc}") from None


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
    if key == "unix_socket_mode":
        return _mode(value)
    value = _check_type(key, value)
    _check_value(key, value)
    return value


def validate(config: Config) -> None:
    """Check every field of ``config`` (also one built in code, not from a file).

    Raises:
        ConfigError: the first problem found, naming the key.
    """
    for key in FIELD_NAMES:
        check_value(key, getattr(config, key))


def unknown_key_message(key: str) -> str:
    """``unknown key 'x' (did you mean 'y'?)``."""
    close = difflib.get_close_matches(key, FIELD_NAMES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}"


def config_from_mapping(data: Mapping[str, Any], *, base: Config | None = None) -> Config:
    """Apply a mapping of settings (a parsed TOML file) over ``base`` (or defaults).

    Raises:
        ConfigError: unknown key (with the nearest valid key), wrong type or bad value.
    """
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _HINTS:
            raise ConfigError(unknown_key_message(key))
        changes[key] = check_value(key, value)
    return dataclasses.replace(base if base is not None else Config(), **changes)


def load_config(path: str | os.PathLike[str], *, base: Config | None = None) -> Config:
    """Read a TOML config file.

    Flat keys are the :class:`Config` fields; a ``[logging]`` table goes to
    :func:`logging.config.dictConfig`.

    Raises:
        ConfigError: ``"<path>: <problem>"`` for an unreadable file, invalid
            TOML (with its line and column), unknown keys, wrong types and bad values.
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
        raise ConfigError(f"{os.fspath(path)}: {exc}") from None


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
