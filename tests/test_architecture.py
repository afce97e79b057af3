"""The house's rules, held: trioscgi's imports run down the layers and never in a circle.

The layer table lives in one place, docs/architecture.md (the block after the
``layers`` marker); this test reads it from there. Every import counts: at the top of
a module, inside a function, under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "trioscgi"
DOC = ROOT / "docs" / "architecture.md"
MARKER = "<!-- layers: tests/test_architecture.py reads the next block -->"


def read_layers(doc: Path = DOC) -> list[tuple[str, list[str]]]:
    """The layers, top to bottom: ``(name, [module prefix, ...])``."""
    text = doc.read_text(encoding="utf-8")
    after = text.split(MARKER, 1)[1]
    block = after.split("```", 2)[1]
    layers = []
    for line in block.splitlines()[1:]:  # the first line is the fence's language
        if not line.strip():
            continue
        name, _, prefixes = line.partition(":")
        layers.append((name.strip(), prefixes.split()))
    return layers


def module_names(package: Path) -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The package's modules that ``name`` imports, each with the line of its first import."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    top = name.split(".", maxsplit=1)[0]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target != name:
            found.setdefault(target, line)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == top:
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            if source.split(".")[0] != top:
                continue
            for alias in node.names:
                # ``from . import scgi``: the module scgi, not the package that holds it.
                submodule = f"{source}.{alias.name}"
                add(submodule if submodule in modules else source, node.lineno)
    return found


def layer_of(module: str, layers: list[tuple[str, list[str]]]) -> int | None:
    """The index of the layer whose longest prefix names ``module`` (``None``: none does).

    A prefix holds its submodules, except the package itself (``trioscgi``: its
    ``__init__`` alone), so that a module left out of the table is reported, not filed
    under the top layer.
    """
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            nested = "." in prefix and module.startswith(prefix + ".")
            named = module == prefix or nested
            if named and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: each strongly connected group of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def problems(package: Path, layers: list[tuple[str, list[str]]]) -> list[str]:
    """Every breach of the rules in ``package``, as lines a reader can act on."""
    modules = module_names(package)
    graph: dict[str, set[str]] = {}
    found = []
    for name, path in modules.items():
        mine = layer_of(name, layers)
        if mine is None:
            found.append(f"{name}: in no layer of docs/architecture.md")
        targets = imports(name, path, modules)
        graph[name] = set(targets)
        for target, line in sorted(targets.items()):
            theirs = layer_of(target, layers)
            if mine is not None and theirs is not None and theirs < mine:
                found.append(
                    f"{path.relative_to(package.parent)}:{line}: {name} ({layers[mine][0]})"
                    f" imports {target} ({layers[theirs][0]}), a layer above it"
                )
    found.extend("import circle: " + " <-> ".join(group) for group in cycles(graph))
    return found


def test_the_layer_table_is_readable() -> None:
    layers = read_layers()
    names = [name for name, _ in layers]
    assert names[0] == "entry" and "daemon" in names and names[-1] == "leaves", names
    assert all(prefixes for _, prefixes in layers)


def test_imports_run_down_the_layers_and_never_in_a_circle() -> None:
    assert problems(PACKAGE, read_layers()) == []


def test_the_hot_path_imports_no_metrics_exposition_and_no_daemon() -> None:
    # The layer rule already forbids it; said once more by name, since this is the rule
    # a careless "just import the counter from _daemon.metrics" would break.
    modules = module_names(PACKAGE)
    for name, path in modules.items():
        if name.startswith(("trioscgi._wire", "trioscgi._asgi", "trioscgi._server")):
            for target in imports(name, path, modules):
                assert not target.startswith("trioscgi._daemon"), (name, target)


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path: Path) -> None:
    # The checker itself, on a package made to break both rules.
    package = tmp_path / "trioscgi"
    (package / "_low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "_low" / "__init__.py").write_text("")
    (package / "_low" / "a.py").write_text("def f():\n    from .b import g\n")
    (package / "_low" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n"
        "from .. import _high\n"
    )
    (package / "_high.py").write_text("from ._low import a\n")
    (package / "_stray.py").write_text("")
    layers = [("entry", ["trioscgi"]), ("high", ["trioscgi._high"]), ("low", ["trioscgi._low"])]
    found = problems(package, layers)
    assert any("trioscgi._low.b (low) imports trioscgi._high (high)" in line for line in found)
    assert "import circle: trioscgi._high <-> trioscgi._low.a <-> trioscgi._low.b" in found
    assert "trioscgi._stray: in no layer of docs/architecture.md" in found
