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
            found.add(target)
        elif isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix("lightning_otlp").lstrip(".")
                for a in node.names
                if a.name.startswith("lightning_otlp")
            }
    return found


@pytest.mark.parametrize("name", ["defaults", "parsers"])
def test_settings_foundations_import_nothing_of_the_project(name: str) -> None:
    assert _imports(PACKAGE / f"{name}.py") == set()


def test_ids_are_made_in_one_module() -> None:
    """Random ids come from ``ids.py`` only, so their formats are decided once."""
    makers = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "secrets" in path.read_text() and "token_hex" in path.read_text()
    }
    assert makers == {"ids.py"}
