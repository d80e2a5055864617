"""The import graph: which modules may import which."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "lightning_otlp"


def _imports(path: Path) -> set[str]:
    """The project modules a file imports anywhere in it, as dotted names below the package."""
    module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("lightning_otlp"):
                target = node.module.removeprefix("lightning_otlp").lstrip(".")
            else:
                continue
            # ``from . import views`` names a module; ``from .x import y`` names x (``_graph``
            # drops what is not a module).
            found |= {f"{target}.{alias.name}".lstrip(".") for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix("lightning_otlp").lstrip(".")
                for a in node.names
                if a.name.startswith("lightning_otlp")
            }
    return found


@pytest.mark.parametrize("name", ["defaults", "parsers"])
def test_settings_foundations_import_nothing_of_the_project(name: str) -> None:
    assert _graph()[name] == set()


def test_ids_are_made_in_one_module() -> None:
    """Random ids come from ``ids.py`` only, so their formats are decided once."""
    makers = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "secrets" in path.read_text() and "token_hex" in path.read_text()
    }
    assert makers == {"ids.py"}


def _graph() -> dict[str, set[str]]:
    modules = {
        ".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for target in _imports(path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles() -> None:
    """Counting every import, lazy and type-only ones too: each is an arrow a reader follows."""
    assert _circles(_graph()) == []


def test_no_store_imports_the_forwarder_or_the_wiring() -> None:
    graph = _graph()
    for name, targets in graph.items():
        if name.startswith("store"):
            assert not {t for t in targets if t.startswith(("forward", "wiring"))}, name
