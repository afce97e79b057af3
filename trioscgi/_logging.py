"""Logging set-up for the daemon: error log, access log, ``[logging]`` table, reopen on SIGUSR1.

Embedding programs configure logging themselves; only the CLI (and each
worker process) calls :func:`setup_logging`.
"""

from __future__ import annotations

import logging
import logging.config
import signal
import sys
from typing import Any, TextIO

from ._config import Config, ConfigError

_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}

# Set by SIGUSR1 (or reopen_logs()); each file handler notices it on its next
# write. A flag rather than reopening inside the signal handler: the handler
# may interrupt a write that holds the stream.
_generation = 0


def counted(n: int, noun: str) -> str:
    """``"1 worker"``, ``"2 workers"``: a count with its noun in the right number."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def reopen_logs() -> None:
    """Ask every log file trioscgi opened to reopen before its next line (logrotate).

    Safe to call from a signal handler: it only bumps a counter.
    """
    global _generation
    _generation += 1


class ReopeningFileHandler(logging.FileHandler):
    """A FileHandler that reopens its file after :func:`reopen_logs`.

    Costs one integer comparison per record, unlike WatchedFileHandler's
    ``stat()`` per record.
    """

    def __init__(self, filename: str) -> None:
        super().__init__(filename, encoding="utf-8")
        self._generation = _generation

    def emit(self, record: logging.LogRecord) -> None:
        if self._generation != _generation:
            self._generation = _generation
            self.acquire()
            try:
                if self.stream is not None:
                    self.stream.close()
                self.stream = self._open()
            except OSError:
                self.handleError(record)
                return
            finally:
                self.release()
        super().emit(record)


def _handler(target: str, default_stream: TextIO) -> logging.Handler:
    if target == "-":
        return logging.StreamHandler(default_stream)
    try:
        return ReopeningFileHandler(target)
    except OSError as exc:
        raise ConfigError(f"cannot open log file {target!r}: {exc.strerror or exc}") from None


def setup_logging(config: Config, *, install_sigusr1: bool = True) -> None:
    """Configure the ``trioscgi`` and ``trioscgi.access`` loggers from ``config``.

    ``error_log`` (path, ``"-"`` = stderr) receives the ``trioscgi`` logger at
    ``log_level``; ``access_log`` (path, ``"-"`` = stdout, unset = off) receives
    ``trioscgi.access``. A ``[logging]`` table is then handed to
    :func:`logging.config.dictConfig` and may override all of this.

    Args:
        config: the settings.
        install_sigusr1: make SIGUSR1 reopen the log files (main thread only).

    Raises:
        ConfigError: a log file cannot be opened or the ``[logging]`` table is invalid.
    """
    error_handler = _handler(config.error_log, sys.stderr)
    error_handler.setFormatter(
        logging.Formatter("%(asctime)s [%(process)d] [%(levelname)s] %(message)s")
    )
    root = logging.getLogger("trioscgi")
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(error_handler)
    root.setLevel(_LEVELS[config.log_level.lower()])
    root.propagate = False

    access = logging.getLogger("trioscgi.access")
    for old in access.handlers[:]:
        access.removeHandler(old)
        old.close()
    if config.access_log is not None:
        access_handler = _handler(config.access_log, sys.stdout)
        access_handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(access_handler)
        access.setLevel(logging.INFO)
        access.disabled = False
    else:
        # Off: AccessLogger.log() returns after one isEnabledFor() check.
        access.setLevel(logging.CRITICAL + 1)
    access.propagate = False

    if config.logging is not None:
        table: dict[str, Any] = {"version": 1, "disable_existing_loggers": False}
        table.update(config.logging)
        try:
            logging.config.dictConfig(table)
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            raise ConfigError(f"[logging] table: {exc}") from None

    if install_sigusr1:
        reopen_on_sigusr1()


def reopen_on_sigusr1() -> None:
    """Make SIGUSR1 reopen the log files until trio takes the signal over.

    SIGUSR1's default action ends the process: logrotate's ``kill -USR1``
    must not kill a process still importing its application.
    """
    signal.signal(signal.SIGUSR1, _on_sigusr1)


def _on_sigusr1(signum: int, frame: object) -> None:
    reopen_logs()
