"""Loading the application an operator named (``trioscgi._importer``), in-process.

Every error is an ``AppLoadError`` whose message names the spec tried and what went wrong.
How the command line reports it (exit code 2, the traceback of an import that failed
inside the module, ``--app-dir``) is in test_cli.py.
"""

from __future__ import annotations

import importlib
import stat
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from trioscgi._importer import AppLoadError, load_app, split_app_spec


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project directory with good and broken application modules.

    load_app() puts the directory on sys.path and imports into sys.modules: both are
    restored after the test, so another test's module of the same name is its own.
    """
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    (tmp_path / "good.py").write_text(
        textwrap.dedent(
            """
            import json
            from os.path import join
            from typing import Callable

            async def app(scope, receive, send):
                pass

            class Holder:
                inner = app

            def make():
                return app

            def make_broken():
                raise RuntimeError("database unreachable")

            class _Pending:
                closed = False
                def __await__(self):
                    yield
                def close(self):
                    _Pending.closed = True

            def make_pending():
                return _Pending()

            def zeta():
                pass

            def _private():
                pass

            Alias = Callable[[], None]
            not_callable = 42
            """
        )
    )
    (tmp_path / "broken_import.py").write_text("import module_that_does_not_exist_h3a\n")
    (tmp_path / "raises.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "web.py").write_text("from good import app as application\n")
    importlib.invalidate_caches()
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def load_error(spec: str, app_dir: Path, *, factory: bool = False) -> AppLoadError:
    with pytest.raises(AppLoadError) as info:
        load_app(spec, factory=factory, app_dir=str(app_dir))
    return info.value


# --- MODULE:ATTR ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "parts"),
    [
        ("a:b", ("a", "b")),
        ("pkg.mod:obj.attr", ("pkg.mod", "obj.attr")),
        ("_a1:B_2", ("_a1", "B_2")),
    ],
)
def test_split_app_spec(spec: str, parts: tuple[str, str]) -> None:
    assert split_app_spec(spec) == parts


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("good", "app must be MODULE:ATTR (for example 'myproject.asgi:app'), got 'good'"),
        (":app", "app must be MODULE:ATTR (for example"),
        ("good:", "app must be MODULE:ATTR (for example"),
        ("my-app:app", "app must be MODULE:ATTR made of Python names, got 'my-app:app'"),
        ("good:app()", "made of Python names"),
        ("good..x:app", "made of Python names"),
        ("a/b:app", "made of Python names"),
    ],
)
def test_split_app_spec_refuses_what_is_not_module_attr(spec: str, expected: str) -> None:
    with pytest.raises(ValueError, match=r"^app must be") as info:
        split_app_spec(spec)
    assert expected in str(info.value)


# --- the forms that load ------------------------------------------------------------------------


def test_load_app_forms(project: Path) -> None:
    good = load_app("good:app", app_dir=str(project))
    assert load_app("good:Holder.inner", app_dir=str(project)) is good
    assert load_app("good:make", factory=True, app_dir=str(project)) is good
    assert load_app("pkg.web:application", app_dir=str(project)) is good
    with pytest.raises(AppLoadError, match=r"no module named 'pkg\.nothing'"):
        load_app("pkg.nothing:app", app_dir=str(project))


def test_app_dir_goes_first_on_sys_path(project: Path) -> None:
    load_app("good:app", app_dir=str(project))
    assert sys.path[0] == str(project)


# --- every error names what was tried ---------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "factory", "expected"),
    [
        ("absent_module_h3a:app", False, "no module named 'absent_module_h3a'"),
        ("pkg.absent_h3a:app", False, "no module named 'pkg.absent_h3a'"),
        ("good:nope", False, "'good' has no attribute 'nope' (candidates: 'app', 'Holder', 'make'"),
        ("good:Holder.nope", False, "'good:Holder' has no attribute 'nope'"),
        ("good:not_callable", False, "is not callable (got int)"),
        ("broken_import:app", False, "failed inside the module: No module named"),
        ("raises:app", False, "raised RuntimeError: boom at import"),
        ("good", False, "app must be MODULE:ATTR"),
        ("good:make_broken", True, "app factory 'good:make_broken' raised RuntimeError: database"),
        ("good:make_pending", True, "is async; it must return the app directly"),
        ("good:not_callable", True, "app factory 'good:not_callable' is not callable (got int)"),
    ],
)
def test_every_error_names_the_spec_and_what_went_wrong(
    project: Path, spec: str, factory: bool, expected: str
) -> None:
    error = load_error(spec, project, factory=factory)
    assert repr(spec) in str(error)
    assert expected in str(error)


def test_the_apps_own_exception_comes_with_its_traceback(project: Path) -> None:
    assert "module_that_does_not_exist_h3a" in load_error("broken_import:app", project).details
    assert "boom at import" in load_error("raises:app", project).details
    assert "database unreachable" in load_error("good:make_broken", project, factory=True).details
    # Our own findings need none.
    assert load_error("absent_module_h3a:app", project).details == ""
    assert load_error("good:nope", project).details == ""


def test_a_missing_module_names_where_it_looked(project: Path) -> None:
    error = load_error("absent_module_h3a:app", project)
    assert f"looked in {project} and the installed packages" in str(error)
    assert "use --app-dir" in str(error)


def test_candidates_are_the_modules_own_callables_usual_names_first(project: Path) -> None:
    # Not json (a module), join (imported), Alias (a type alias), _private, not_callable;
    # five at most (zeta is left out).
    message = str(load_error("good:nope", project))
    assert "(candidates: 'app', 'Holder', 'make', 'make_broken', 'make_pending');" in message


def test_an_async_factory_is_refused_and_its_awaitable_closed(project: Path) -> None:
    load_error("good:make_pending", project, factory=True)
    assert sys.modules["good"]._Pending.closed


def test_an_app_module_named_like_a_stdlib_one_is_named_as_shadowed(project: Path) -> None:
    # The stdlib's stat is imported before the project's stat.py can be.
    (project / "stat.py").write_text("async def app(scope, receive, send):\n    pass\n")
    message = str(load_error("stat:app", project))
    assert "'stat' has no attribute 'app' (candidates: 'S_IFMT'" in message
    assert f"'stat' was imported from {stat.__file__}, and it shadows your {project}/stat.py" in (
        message
    )
    assert "rename yours" in message


def test_a_module_from_elsewhere_names_its_file_and_app_dir(project: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    message = str(load_error("sys:app", elsewhere))
    assert f"'sys' is built into Python, not from {elsewhere}" in message
    assert "point --app-dir at its directory" in message
    # An app module of the project: its file is named, nothing more.
    assert str(load_error("good:nope", project)).endswith(
        f"; 'good' was imported from {project}/good.py"
    )
