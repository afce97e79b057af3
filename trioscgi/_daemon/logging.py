"""Logging set-up for the daemon: error log, access log, ``[logging]`` table, reopen on SIGUSR1.

Embedding programs configure logging themselves; only the CLI (and each
worker process) calls :func:`setup_logging`.
"""

from __future__ import annotations

import logging
import logging.config
import math
import signal
import sys
import time
import weakref
from typing import Any, TextIO

from .._config import Config, ConfigError
from .._counters import log_write_error

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


def reopen_logs() -> None:
    """Ask every log file trioscgi opened to reopen before its next line (logrotate).

    Safe to call from a signal handler: it only bumps a counter.
    """
    global _generation
    _generation += 1


# A log file that can't be written (a full disk, a lost mount): one warning
# per this many seconds per process, not a traceback per line.
WRITE_ERROR_INTERVAL = 10.0

# Every file handler of this process, for reopen_now().
_file_handlers: weakref.WeakSet[ReopeningFileHandler] = weakref.WeakSet()


def reopen_now() -> None:
    """Reopen every log file now (the supervisor: it writes too seldom to wait for a line).

    A file deleted to free its space is freed only once every process has
    closed it, the supervisor included.
    """
    reopen_logs()
    for handler in list(_file_handlers):
        handler.acquire()
        try:
            handler.reopen()
        finally:
            handler.release()


class ReopeningFileHandler(logging.FileHandler):
    """A FileHandler that reopens its file after :func:`reopen_logs`, and survives a full disk.

    Costs one integer comparison per record, unlike WatchedFileHandler's
    ``stat()`` per record. A write that fails (``OSError``: ENOSPC, EIO…)
    loses its line, is counted, and is reported at most once per
    ``WRITE_ERROR_INTERVAL``; serving goes on. The stdlib's default would
    print a traceback per record to stderr.
    """

    def __init__(self, filename: str) -> None:
        super().__init__(filename, encoding="utf-8")
        self._generation = _generation
        self._broken = False  # the last write failed
        self._lost = 0  # lines lost since it broke
        self._held = 0  # failures not yet reported
        self._quiet_until = -math.inf
        _file_handlers.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        if self._generation != _generation:
            self.reopen()
        if self.stream is None:
            # A reopen failed (or the handler was closed): try again now.
            try:
                self.stream = self._open()
            except OSError as exc:
                self._failed(exc)
                return
        if not self._broken:
            logging.StreamHandler.emit(self, record)
            return
        self._broken = False
        logging.StreamHandler.emit(self, record)
        if not self._broken:
            lost, self._lost, self._held = self._lost, 0, 0
            self._quiet_until = -math.inf
            self._report(
                logging.INFO,
                "log file %s: writing works again (%d line(s) lost)",
                self.baseFilename,
                lost,
            )

    def reopen(self) -> None:
        """Close the file and open it again by its name; always ends with a stream
        (or none, opened at the next record), never with a closed one."""
        self._generation = _generation
        stream, self.stream = self.stream, None
        if stream is not None:
            try:
                # close() flushes first: on a full disk that flush fails, and
                # the file descriptor is closed all the same.
                stream.close()
            except OSError as exc:
                self._failed(exc)
        try:
            self.stream = self._open()
        except OSError as exc:
            self._failed(exc)

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            self._failed(exc)
        else:
            # Not the file: a record that doesn't format (a programming
            # error); the stdlib's traceback says where.
            super().handleError(record)

    def _failed(self, exc: OSError) -> None:
        log_write_error()
        self._broken = True
        self._lost += 1
        self._held += 1
        now = time.monotonic()
        if now < self._quiet_until:
            return
        self._quiet_until = now + WRITE_ERROR_INTERVAL
        held, self._held = self._held, 0
        if held == self._lost:  # the first report since it broke
            self._report(
                logging.WARNING,
                "can't write to log file %s: %s; its lines are lost until it works again,"
                " serving goes on (this warning comes at most every %g s, and"
                " trioscgi_log_write_errors_total counts the lines): free space or fix"
                " the file, then SIGUSR1",
                self.baseFilename,
                exc,
                WRITE_ERROR_INTERVAL,
            )
        else:
            self._report(
                logging.WARNING,
                "log file %s still fails: %s; %d more line(s) lost (%d since it broke)",
                self.baseFilename,
                exc,
                held,
                self._lost,
            )

    def _report(self, level: int, message: str, *args: object) -> None:
        """Say it on the error log, or on stderr when this handler is the error log."""
        error_log = logging.getLogger("trioscgi")
        if self in error_log.handlers:
            fallback = logging.StreamHandler(sys.stderr)
            fallback.setFormatter(self.formatter)
            fallback.handle(logging.LogRecord(error_log.name, level, "", 0, message, args, None))
        else:
            error_log.log(level, message, *args)


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
