"""Config loading from TOML, validation of every kind of mistake, and rendering."""

from __future__ import annotations

import ast
import dataclasses
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

from trioscgi import Config
from trioscgi._config import (
    FIELD_NAMES,
    ConfigError,
    check_value,
    config_from_mapping,
    load_config,
    render_config,
    validate,
)

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trioscgi.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


def test_defaults_are_valid() -> None:
    validate(Config())
    Config().validate()


def test_load_every_kind_of_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
app = "examples.hello:app"
bind = ["unix:/run/app.sock", "127.0.0.1:4000", "[::1]:4001"]
workers = 4
graceful_timeout = 5          # an integer is fine for a float key
startup_timeout = 2.5
lifespan = "on"
root_path = "/app"
unix_socket_mode = 0o600
trusted_peers = ["10.0.0.0/8", "192.168.1.7"]
access_log = "-"
log_level = "DEBUG"
max_body_size = 1048576
factory = true

[logging]
version = 1
[logging.loggers.trioscgi]
level = "WARNING"
""",
    )
    config = load_config(path)
    assert config.app == "examples.hello:app"
    assert config.bind == ["unix:/run/app.sock", "127.0.0.1:4000", "[::1]:4001"]
    assert config.workers == 4
    assert config.graceful_timeout == 5.0
    assert isinstance(config.graceful_timeout, float)
    assert config.startup_timeout == 2.5
    assert config.lifespan == "on"
    assert config.root_path == "/app"
    assert config.unix_socket_mode == 0o600
    assert config.trusted_peers == ["10.0.0.0/8", "192.168.1.7"]
    assert config.access_log == "-"
    assert config.max_body_size == 1048576
    assert config.factory is True
    assert config.logging == {"version": 1, "loggers": {"trioscgi": {"level": "WARNING"}}}
    # Untouched keys keep their defaults.
    assert config.backlog == Config().backlog


def test_a_lone_string_is_a_one_element_list(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'bind = "unix:/run/app.sock"\n'))
    assert config.bind == ["unix:/run/app.sock"]


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()


def test_unknown_key_names_file_key_and_nearest(tmp_path: Path) -> None:
    message = load_error(tmp_path, "graceful_timout = 3\n")
    assert message.endswith("unknown key 'graceful_timout' (did you mean 'graceful_timeout'?)")


def test_unknown_key_without_a_near_one(tmp_path: Path) -> None:
    message = load_error(tmp_path, "zzzzzz = 1\n")
    assert message.endswith("unknown key 'zzzzzz'")


def test_unknown_key_that_begins_one_key_suggests_it(tmp_path: Path) -> None:
    # The same helper suggests flags on the command line ("--grace").
    message = load_error(tmp_path, "wsgi = 4\n")
    assert message.endswith("unknown key 'wsgi' (did you mean 'wsgi_threads'?)")


def test_unknown_table_is_an_unknown_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[loging]\nversion = 1\n")
    assert "unknown key 'loging' (did you mean 'logging'?)" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('workers = "two"', "key 'workers' must be an integer, got 'two' (a string)"),
        ("workers = 2.5", "key 'workers' must be an integer, got 2.5 (a float)"),
        ("workers = true", "key 'workers' must be an integer, got True (a boolean)"),
        ('graceful_timeout = "5s"', "key 'graceful_timeout' must be a number (seconds), got '5s'"),
        ("root_path = 1", "key 'root_path' must be a string, got 1 (an integer)"),
        ("bind = [1, 2]", "key 'bind' must be an array of strings, got [1, 2] (an array)"),
        ('factory = "yes"', "key 'factory' must be true or false, got 'yes' (a string)"),
        ('logging = "x"', "key 'logging' must be a table, got 'x' (a string)"),
        ('lifespan = "maybe"', "key 'lifespan' must be one of 'auto', 'on', 'off', got 'maybe'"),
        ('interface = "cgi"', "key 'interface' must be one of 'auto', 'asgi', 'wsgi'"),
    ],
)
def test_wrong_type_names_key_expected_type_and_value(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert expected in load_error(tmp_path, text + "\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("workers = 0", "key 'workers' must be >= 1, got 0"),
        ("wsgi_threads = 0", "key 'wsgi_threads' must be >= 1"),
        ("graceful_timeout = -1", "key 'graceful_timeout' must be >= 0, got -1.0"),
        ("startup_timeout = nan", "key 'startup_timeout' must be >= 0, got nan"),
        ("max_requests = -5", "key 'max_requests' must be >= 0"),
        ("max_body_size = -1", "key 'max_body_size' must be >= 0"),
        ('log_level = "verbose"', "key 'log_level' must be one of 'critical'"),
        ('root_path = "app"', "key 'root_path' must be empty, '/', or start with '/'"),
        ('root_path = "/app/"', "key 'root_path' must be empty, '/', or start with '/'"),
        ("bind = []", "key 'bind' must name at least one address"),
        ('bind = ["localhost"]', "key 'bind': invalid bind 'localhost'"),
        ('trusted_peers = ["10.0.0.0/33"]', "key 'trusted_peers': invalid trusted_peers entry"),
        ('trusted_peers = ["example.com"]', "'example.com'"),
        ("unix_socket_mode = 660", "a bare 660 is a decimal number"),
        ('unix_socket_mode = "rw-rw----"', "must be an octal mode"),
        ('unix_socket_mode = "0o1777"', "between 0o000 and 0o777"),
        ('access_log_format = "%(nope)s"', "key 'access_log_format': unknown atom %(nope)s"),
        ('access_log_format = "%(s)s %"', "key 'access_log_format': invalid format"),
        ('app = "just_a_module"', "key 'app': app must be MODULE:ATTR"),
        ('error_log = ""', "key 'error_log' must not be an empty string"),
    ],
)
def test_bad_values(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in load_error(tmp_path, text + "\n")


def test_bad_toml_syntax_gives_the_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, 'workers = 2\nbind = ["unix:/a.sock"\nlog_level = "info"\n')
    assert "invalid TOML" in message
    assert "line 3" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=r"absent\.toml: cannot read: No such file"):
        load_config(path)


@pytest.mark.parametrize(
    ("value", "mode"),
    [("660", 0o660), ("0o640", 0o640), (" 600 ", 0o600), (0o666, 0o666), (0, 0)],
)
def test_unix_socket_mode_spellings(value: Any, mode: int) -> None:
    assert check_value("unix_socket_mode", value) == mode


def test_trusted_peers_star_and_ipv6() -> None:
    assert check_value("trusted_peers", ["*"]) == ["*"]
    assert check_value("trusted_peers", ["::1", "fd00::/8"]) == ["::1", "fd00::/8"]


def test_infinite_timeout_is_allowed() -> None:
    assert math.isinf(check_value("graceful_timeout", math.inf))


def test_validate_rejects_a_config_built_in_code() -> None:
    # An embedder building Config directly gets the same checks as the file.
    with pytest.raises(ConfigError, match="key 'workers' must be >= 1"):
        Config(workers=0).validate()
    with pytest.raises(ConfigError, match="key 'lifespan' must be one of"):
        validate(Config(lifespan="sometimes"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key 'bind' must be an array of strings"):
        validate(Config(bind=[4000]))  # type: ignore[list-item]


def test_config_from_mapping_over_a_base() -> None:
    base = Config(workers=3, root_path="/x")
    config = config_from_mapping({"root_path": "/y"}, base=base)
    assert (config.workers, config.root_path) == (3, "/y")


def test_render_round_trips(tmp_path: Path) -> None:
    config = Config(
        app="pkg.mod:app",
        bind=["unix:/run/a b.sock", "[::1]:4000"],
        unix_socket_mode=0o640,
        root_path="/app",
        graceful_timeout=math.inf,
        access_log="-",
        access_log_format='%(h)s "%(r)s" %({user-agent}i)s',
        logging={"version": 1, "loggers": {"trioscgi": {"level": "DEBUG"}}},
    )
    text = render_config(config)
    assert "unix_socket_mode = 0o640\n" in text
    assert "# pid_file is not set\n" in text
    assert "[logging]\n" in text
    assert load_config(write(tmp_path, text)) == config


def test_render_defaults_round_trips(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, render_config(Config()))) == Config()


def test_every_field_is_checked() -> None:
    # A new Config field without a type check would make validate() crash.
    config = Config()
    for name in FIELD_NAMES:
        check_value(name, getattr(config, name))
    assert {f.name for f in dataclasses.fields(Config)} == set(FIELD_NAMES)


def test_every_field_is_in_the_example_and_the_reference() -> None:
    root = Path(__file__).resolve().parent.parent
    example = (root / "config.example.toml").read_text(encoding="utf-8")
    reference = (root / "docs" / "configuration.md").read_text(encoding="utf-8")
    for name in FIELD_NAMES:
        assert f"{name} =" in example or f"[{name}]" in example, name
        assert f"`{name}`" in reference, name


def test_the_example_file_loads_to_the_defaults() -> None:
    # The example documents the defaults: loading it must change nothing
    # (keys without a default are commented out).
    root = Path(__file__).resolve().parent.parent
    assert load_config(root / "config.example.toml") == Config()


def test_root_path_slash_means_mounted_at_the_root() -> None:
    # "/" overrides a SCRIPT_NAME the front-end sends (lighttpd on "/" without
    # fix-root-scriptname), so it must pass validation.
    Config(root_path="/").validate()


def test_cpu_affinity_lists() -> None:
    from trioscgi._config import parse_cpu_list

    assert parse_cpu_list("") == []
    assert parse_cpu_list("0") == [0]
    assert parse_cpu_list(" 0 , 0-0 ") == [0]
    Config(cpu_affinity="0").validate()
    for bad, why in [
        ("a", "not a list of CPU numbers"),
        ("1-0", "runs backwards"),
        ("0-", "not a list of CPU numbers"),
        ("-1", "not a list of CPU numbers"),
        ("4096", "CPU 4096 does not exist here"),
    ]:
        with pytest.raises(ConfigError, match=why):
            Config(cpu_affinity=bad).validate()


def _package_imports(module: str) -> set[str]:
    """The trioscgi modules ``module`` imports, at the top or inside functions."""
    tree = ast.parse((ROOT / "trioscgi" / f"{module}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module is None:
                found.update(alias.name for alias in node.names)
            else:
                found.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trioscgi."):
            found.add((node.module or "").split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("trioscgi."))
    return found


def test_config_imports_only_leaf_modules() -> None:
    # The configuration checks bind strings, trusted peers, the access-log
    # format and the app spec with parsers that import nothing of the server,
    # so there is no import cycle back into _config: config imports nothing
    # of the server.
    imported = _package_imports("_config")
    assert imported == {"_accesslog", "_addresses", "_importer"}
    for module in imported:
        assert _package_imports(module) == set(), module
    # And the listeners take the parsers from there rather than owning a copy.
    assert "_addresses" in _package_imports("_listeners")


def test_every_timeout_is_checked_non_negative() -> None:
    # A *_timeout key added without its validator would accept -1 silently.
    timeouts = [name for name in FIELD_NAMES if name.endswith("_timeout")]
    assert len(timeouts) >= 7
    for name in timeouts:
        with pytest.raises(ConfigError, match=f"key '{name}' must be >= 0, got -1"):
            check_value(name, -1.0)


def _reference_entries() -> dict[str, str]:
    """docs/configuration.md: each key's italic summary line(s) under its heading."""
    root = Path(__file__).resolve().parent.parent
    text = (root / "docs" / "configuration.md").read_text(encoding="utf-8")
    entries = {}
    for block in text.split("\n#### ")[1:]:
        heading, _, rest = block.partition("\n")
        found = re.match(r"\*(.*?)\*$", rest.lstrip(), re.S | re.M)  # up to a line's last *
        summary = found.group(1).replace("\n", " ") if found else ""
        for key in re.findall(r"`(\w+)`", heading):
            entries[key] = summary
    return entries


def test_the_example_and_the_reference_state_the_fields_defaults() -> None:
    # Config's fields are the one declaration of each setting: the example file and
    # the reference must name every key with the field's default (and flag).
    from trioscgi._daemon.cli import build_parser

    root = Path(__file__).resolve().parent.parent
    example = (root / "config.example.toml").read_text(encoding="utf-8")
    entries = _reference_entries()
    flags = {a.dest: a.option_strings for a in build_parser()._actions}
    defaults = Config()
    for name in FIELD_NAMES:
        default = getattr(defaults, name)
        assert name in entries, f"docs/configuration.md has no '#### `{name}`' entry"
        summary = entries[name]
        stated = re.search(r"default `([^`]*)`", summary)
        if default is None:
            assert stated is None, (name, summary)
            # Unset by default: only a commented-out example, or a [table].
            assert not re.search(rf"^{name} =", example, re.M), name
            assert re.search(rf"^# {name} =|^\[{name}\]|^# \[{name}\]", example, re.M), name
            continue
        assert stated is not None, f"{name}: no default `...` in {summary!r}"
        assert tomllib.loads(f"v = {stated.group(1)}")["v"] == default, (name, stated.group(1))
        # In the example, set to its default (test_the_example_file_loads_to_the_defaults
        # checks the value).
        assert re.search(rf"^{name} = ", example, re.M), f"config.example.toml: no {name} ="
        for flag in flags.get(name, []):
            if flag.startswith("--"):
                assert f"`{flag}" in summary, (name, flag, summary)
