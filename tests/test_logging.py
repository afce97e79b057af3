"""The daemon's logging set-up: error log, access log, [logging] table, reopening files."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from trioscgi import Config
from trioscgi._config import ConfigError
from trioscgi._logging import reopen_logs, setup_logging


@pytest.fixture(autouse=True)
def restore_loggers() -> Iterator[None]:
    """setup_logging() changes process-wide loggers: put them back afterwards."""
    saved = {}
    for name in ("trioscgi", "trioscgi.access", "trioscgi.test"):
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.level, logger.propagate, logger.disabled)
    yield
    for name, (handlers, level, propagate, disabled) in saved.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers[:]:
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled


def test_error_log_file_and_level(tmp_path: Path) -> None:
    log = tmp_path / "error.log"
    setup_logging(Config(error_log=str(log), log_level="warning"), install_sigusr1=False)
    logger = logging.getLogger("trioscgi")
    logger.info("not at info")
    logger.warning("a warning")
    logging.getLogger("trioscgi.test").error("a child logger too")
    text = log.read_text()
    assert "not at info" not in text
    assert "[WARNING] a warning" in text
    assert "[ERROR] a child logger too" in text


def test_access_log_file_has_bare_lines(tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    errors = tmp_path / "error.log"
    setup_logging(
        Config(access_log=str(access), error_log=str(errors), log_level="error"),
        install_sigusr1=False,
    )
    logging.getLogger("trioscgi.access").info("GET / 200")
    assert access.read_text() == "GET / 200\n"
    # Access lines don't leak into the error log, whatever its level.
    assert errors.read_text() == ""


def test_access_log_off_by_default(tmp_path: Path) -> None:
    setup_logging(Config(error_log=str(tmp_path / "error.log")), install_sigusr1=False)
    assert not logging.getLogger("trioscgi.access").isEnabledFor(logging.CRITICAL)


def test_reopen_after_rotation(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    setup_logging(
        Config(access_log=str(log), error_log=str(tmp_path / "e.log")), install_sigusr1=False
    )
    access = logging.getLogger("trioscgi.access")
    access.info("before")
    log.rename(tmp_path / "access.log.1")  # what logrotate does
    access.info("still the old file")
    reopen_logs()
    access.info("after")
    assert (tmp_path / "access.log.1").read_text() == "before\nstill the old file\n"
    assert log.read_text() == "after\n"


def test_unwritable_log_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open log file"):
        setup_logging(
            Config(error_log=str(tmp_path / "missing-dir" / "e.log")), install_sigusr1=False
        )


def test_logging_table_overrides(tmp_path: Path) -> None:
    table_log = tmp_path / "table.log"
    config = Config(
        error_log=str(tmp_path / "error.log"),
        logging={
            "formatters": {"plain": {"format": "T %(levelname)s %(message)s"}},
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "filename": str(table_log),
                    "formatter": "plain",
                }
            },
            "loggers": {"trioscgi": {"handlers": ["file"], "level": "DEBUG"}},
        },
    )
    setup_logging(config, install_sigusr1=False)
    logging.getLogger("trioscgi").debug("from the table")
    assert table_log.read_text() == "T DEBUG from the table\n"


def test_bad_logging_table_is_a_config_error(tmp_path: Path) -> None:
    config = Config(
        error_log=str(tmp_path / "error.log"),
        logging={"handlers": {"x": {"class": "no.such.Handler"}}},
    )
    with pytest.raises(ConfigError, match=r"\[logging\] table"):
        setup_logging(config, install_sigusr1=False)
