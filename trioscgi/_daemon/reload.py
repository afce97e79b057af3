"""``--reload``: a watcher process that tells the supervisor when the app's source changes.

The watcher is a process of its own, not a thread of the supervisor: the
supervisor forks workers, and a fork from a process that runs other threads
(watchfiles runs one in Rust) may copy a lock some thread holds. The watcher
writes one line per batch of changes to a pipe the supervisor selects on;
the supervisor then replaces the worker as on SIGHUP, so the listening
sockets stay bound and the old worker serves until the new one is ready.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._config import Config, ConfigError

__all__ = ["check_reload", "reload_dirs", "watch_forever"]

# One line per batch on the pipe: below PIPE_BUF (4096 on Linux), so that a
# line is written whole.
_MAX_LINE = 1000
# How often (ms) the watcher wakes with no change to see if its parent is gone.
# Its first wake-up also tells the supervisor that the watch is in place.
_PARENT_CHECK_MS = 500


def check_reload(config: Config) -> None:
    """The checks ``reload = true`` needs beyond each key's own.

    Raises:
        ConfigError: workers > 1, or watchfiles is not installed.
    """
    if not config.reload:
        return
    if config.workers > 1:
        raise ConfigError(
            f"--reload runs one worker process, but workers = {config.workers}: "
            "drop one of them (reload is for development; SIGHUP reloads workers in production)"
        )
    if importlib.util.find_spec("watchfiles") is None:
        raise ConfigError("--reload needs the watchfiles package: pip install 'trioscgi[reload]'")


def reload_dirs(config: Config) -> list[str]:
    """The directories to watch: ``reload_dirs``, else ``app_dir``, else the current one."""
    dirs = config.reload_dirs or [config.app_dir or "."]
    return [str(Path(d).resolve()) for d in dirs]


class _Filter:
    """Which changed paths count: watchfiles' default ignores, then include/exclude globs.

    A pattern matches the file name (``*.py``) or the whole path
    (``*/templates/*``); exclusion wins.
    """

    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        from watchfiles import DefaultFilter  # noqa: PLC0415

        self.default = DefaultFilter()
        self.include = list(include)
        self.exclude = list(exclude)

    def _matches(self, patterns: list[str], path: str) -> bool:
        name = os.path.basename(path)
        return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns)

    def __call__(self, change: Any, path: str) -> bool:
        if not self.default(change, path):
            return False
        if self._matches(self.exclude, path):
            return False
        return self._matches(self.include, path)


def watch_forever(config: Config, write_fd: int) -> None:  # pragma: no cover - child process
    """In the watcher process: write a line naming a changed file per batch of changes.

    The first line is empty: the watch is in place (changes from then on are
    seen), which is what ``--reload: watching`` in the log means.

    Returns when the supervisor is gone (its pid is no longer our parent, or
    the pipe is closed).
    """
    import watchfiles  # noqa: PLC0415

    parent = os.getppid()
    # The supervisor alone decides on Ctrl-C (which signals the whole group).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    watch_filter = _Filter(config.reload_include, config.reload_exclude)
    first = True
    for changes in watchfiles.watch(
        *reload_dirs(config),
        watch_filter=watch_filter,
        rust_timeout=_PARENT_CHECK_MS,
        yield_on_timeout=True,
        raise_interrupt=False,
    ):
        if os.getppid() != parent:
            return
        lines = [b""] if first else []
        first = False
        if changes:
            path = sorted(p for _, p in changes)[0]
            more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
            text = (path + more).encode("utf-8", "replace")[:_MAX_LINE].replace(b"\n", b"?")
            lines.append(text)
        try:
            for line in lines:
                os.write(write_fd, line + b"\n")
        except OSError:  # EPIPE: the supervisor is gone
            return
