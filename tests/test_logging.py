"""The daemon's logging set-up: error log, access log, [logging] table, reopening files."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_metrics import scrape, service, value  # noqa: F401 (service: a fixture)
from test_supervisor import scgi_get

from trioscgi import Config
from trioscgi._config import ConfigError
from trioscgi._daemon.logging import reopen_logs, setup_logging

# The interval between two warnings of a failing log; a constant of the test
# so that it fails on code that has none.
LOG_ERROR_INTERVAL = 10.0


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


# --- a full disk, through the real process ------------------------------------


@pytest.fixture
def small_fs() -> Iterator[Path]:
    """A 64 KiB tmpfs to fill up (mounting needs root: CI runs the tests as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    where = Path(tempfile.mkdtemp(prefix="tsl-fs-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        where.rmdir()
        pytest.skip(f"can't mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def _fill(fs: Path, leave: int) -> None:
    """Write a file that leaves about ``leave`` bytes free on ``fs``."""
    st = os.statvfs(fs)
    with open(fs / "filler", "wb") as f:
        try:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
        except OSError:
            pass  # full already: fine


def test_full_disk_keeps_serving_warns_once_and_reopens(
    service: object,  # noqa: F811 (the fixture imported above)
    small_fs: Path,
) -> None:
    assert callable(service)
    access = small_fs / "access.log"
    s = service("--access-log", str(access), "--access-log-format", "%(U)s %(s)s", workers=2)
    _fill(small_fs, 8192)
    began = time.monotonic()
    # About 40 KiB of lines: the log fills the file system and then every
    # write fails. Every request must still be answered.
    for i in range(800):
        assert scgi_get(s.sock, f"/{'x' * 40}/{i}")[0] == 200
    elapsed = time.monotonic() - began
    log = s.log_text()
    assert "Logging error" not in log and "Traceback" not in log, log[-3000:]
    # At most one warning per interval per process, each naming the file and errno.
    warnings = [line for line in log.splitlines() if "[WARNING]" in line and str(access) in line]
    assert warnings, log[-3000:]
    assert all("No space left on device" in line for line in warnings), warnings
    per_pid = Counter(line.split("[")[1] for line in warnings)
    assert max(per_pid.values()) <= 1 + elapsed // LOG_ERROR_INTERVAL, warnings
    deadline = time.monotonic() + 30
    while True:
        errors = value(scrape(s.address)[1], "trioscgi_log_write_errors_total")
        if errors > 0:
            break
        assert time.monotonic() < deadline, "trioscgi_log_write_errors_total stays 0"
        time.sleep(0.05)  # the workers report once a second; polling, not timing

    # What an operator does: delete the log (its blocks stay in use while a
    # process holds it open) and send SIGUSR1.
    access.unlink()
    s.proc.send_signal(signal.SIGUSR1)
    # Handled asynchronously: bounded, it is handled within a few requests.
    for i in range(200):
        assert scgi_get(s.sock, f"/after/{i}")[0] == 200
        if access.exists() and "/after/" in access.read_text():
            break
    else:
        raise AssertionError(f"the access log was not reopened\n{s.log_text()[-3000:]}")
    for i in range(20):  # both workers, whichever the kernel picks
        assert scgi_get(s.sock, f"/next/{i}")[0] == 200
    deadline = time.monotonic() + 10
    while access.read_text().count("/next/") < 20:
        assert time.monotonic() < deadline, access.read_text()
        time.sleep(0.02)  # each line is flushed after its response: polling the file
    assert "I/O operation on closed file" not in s.log_text()
