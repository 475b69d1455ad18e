"""Every public class and function of the top layers has a docstring (the API
reference of docs/api.md is made from them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "tagvisor"
DOCUMENTED = [
    *("cli", "api", "guests", "vmm", "arch", "host"),
    *("snapshot", "migration", "cpu", "testbed", "conformance", "lab", "kvm"),
]


def _undocumented(path: Path) -> list[str]:
    missing: list[str] = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                if child.name.startswith("_"):
                    continue
                if ast.get_docstring(child) is None:
                    missing.append(f"{path.relative_to(SRC)}:{child.lineno} {child.name}")
                if isinstance(child, ast.ClassDef):
                    walk(child)

    tree = ast.parse(path.read_text())
    if ast.get_docstring(tree) is None:
        missing.append(f"{path.relative_to(SRC)}: the module")
    walk(tree)
    return missing


@pytest.mark.parametrize("package", DOCUMENTED)
def test_every_public_name_has_a_docstring(package: str) -> None:
    """Scenario: each module of the package, its public classes, their public
    methods and its public functions: none without a docstring."""
    missing = [
        name for path in sorted((SRC / package).rglob("*.py")) for name in _undocumented(path)
    ]
    assert missing == []
