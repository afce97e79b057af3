"""Find the application an operator named as ``MODULE:ATTR`` and say clearly why not."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
import types
from typing import Any

# Names an application object is usually bound to, offered first when the
# attribute the operator named does not exist.
_USUAL_NAMES = ("app", "application", "asgi_app", "wsgi_app", "api", "create_app", "make_app")


class AppLoadError(Exception):
    """The application could not be loaded; ``str()`` says what was tried.

    Attributes:
        details: a formatted traceback of the application's own exception
            (its import or its factory failed), or ``""``.
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def split_app_spec(spec: str) -> tuple[str, str]:
    """Split ``"package.module:attr.sub"`` into module and attribute path.

    Raises:
        ValueError: ``spec`` is not of the form ``MODULE:ATTR``.
    """
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(
            f"app must be MODULE:ATTR (for example 'myproject.asgi:app'), got {spec!r}"
        )
    parts = [*module.split("."), *attr.split(".")]
    if not all(p.isidentifier() for p in parts):
        raise ValueError(f"app must be MODULE:ATTR made of Python names, got {spec!r}")
    return module, attr


def load_app(spec: str, *, factory: bool = False, app_dir: str | None = None) -> Any:
    """Import the application named by ``spec`` (``MODULE:ATTR``, ATTR may be dotted).

    Args:
        spec: where the application lives.
        factory: ``ATTR`` is a callable returning the application; call it
            with no arguments.
        app_dir: directory put first on ``sys.path`` before importing
            (default: the current directory, as ``python -m`` would do).

    Returns:
        The application object.

    Raises:
        AppLoadError: the message names what was tried and what went wrong.
    """
    try:
        module_name, attr_path = split_app_spec(spec)
    except ValueError as exc:
        raise AppLoadError(str(exc)) from None

    directory = os.path.abspath(app_dir if app_dir is not None else os.getcwd())
    if directory not in sys.path:
        sys.path.insert(0, directory)

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise AppLoadError(
                f"cannot import app {spec!r}: no module named {missing!r} "
                f"(looked in {directory} and the installed packages; "
                f"use --app-dir to point at the project)"
            ) from None
        raise AppLoadError(
            f"cannot import app {spec!r}: importing module {module_name!r} failed "
            f"inside the module: {exc}",
            traceback.format_exc(),
        ) from None
    except Exception as exc:
        raise AppLoadError(
            f"cannot import app {spec!r}: importing module {module_name!r} raised "
            f"{type(exc).__name__}: {exc}",
            traceback.format_exc(),
        ) from None

    obj: Any = module
    walked = module_name
    for name in attr_path.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            hint = ""
            candidates = _app_candidates(obj)
            if candidates:
                hint = " (candidates: " + ", ".join(repr(c) for c in candidates) + ")"
            if obj is module:
                hint += _where_imported_from(module, directory)
            raise AppLoadError(
                f"cannot load app {spec!r}: {walked!r} has no attribute {name!r}{hint}"
            ) from None
        walked = f"{walked}{'.' if walked != module_name else ':'}{name}"

    if factory:
        if not callable(obj):
            raise AppLoadError(f"app factory {spec!r} is not callable (got {type(obj).__name__})")
        try:
            obj = obj()
        except Exception as exc:
            raise AppLoadError(
                f"app factory {spec!r} raised {type(exc).__name__}: {exc}",
                traceback.format_exc(),
            ) from None
        if inspect.isawaitable(obj):
            # An ``async def`` factory: we load the app before the event loop runs.
            close = getattr(obj, "close", None)
            if close is not None:
                close()
            raise AppLoadError(f"app factory {spec!r} is async; it must return the app directly")

    if not callable(obj):
        raise AppLoadError(
            f"app {spec!r} is not callable (got {type(obj).__name__}); "
            "an ASGI or WSGI application is a callable"
        )
    return obj


def _where_imported_from(module: types.ModuleType, directory: str) -> str:
    """``"; 'stat' was imported from /usr/lib/..., and it shadows ..."``: which file it was.

    A module named like one of Python's own (``stat``, ``time``, ``email``) is
    found before the project's: the standard library module is built in, or
    already imported when the server starts.
    """
    name = module.__name__
    file = getattr(module, "__file__", None)
    origin = f"was imported from {os.path.abspath(file)}" if file else "is built into Python"
    text = f"; {name!r} {origin}"
    if file and os.path.abspath(file).startswith(directory + os.sep):
        return text
    top = name.partition(".")[0]
    yours = [
        path
        for path in (os.path.join(directory, top + ".py"), os.path.join(directory, top))
        if os.path.exists(path)
    ]
    if yours:
        return (
            f"{text}, and it shadows your {yours[0]}: a module named like one of Python's"
            " own can't be imported by that name; rename yours"
        )
    return (
        f"{text}, not from {directory}: if your {top!r} is elsewhere, point --app-dir at"
        " its directory (or rename it if it is named like a module of Python's own)"
    )


def _app_candidates(container: Any, limit: int = 5) -> list[str]:
    """Attributes of ``container`` that look like an application, likeliest first."""
    found: list[str] = []
    try:
        names = sorted(vars(container))
    except TypeError:
        return found
    own_module = getattr(container, "__name__", None)
    for name in sorted(names, key=lambda n: (n not in _USUAL_NAMES, n)):
        if name.startswith("_"):
            continue
        value = getattr(container, name, None)
        if isinstance(value, types.ModuleType) or not callable(value):
            continue
        # Type aliases (``Receive = Callable[...]``) are callable too.
        if type(value).__module__ in ("typing", "types", "collections.abc"):
            continue
        # Functions and classes imported from elsewhere are rarely the app.
        if (inspect.isfunction(value) or inspect.isclass(value)) and getattr(
            value, "__module__", None
        ) != own_module:
            continue
        found.append(name)
        if len(found) >= limit:
            break
    return found
