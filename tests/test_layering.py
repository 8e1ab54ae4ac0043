"""Imports go one way: encoder <- indexer <- search; encoder needs torch alone (no faiss, SQL or web)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "encoder": {"indexer", "search", "faiss", "sqlalchemy", "fastapi", "starlette", "uvicorn", "pydantic_settings"},
    "indexer": {"search", "fastapi", "starlette", "uvicorn"},
}


def _parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """`ast.parse`, tried again on CPython 3.11's spurious "AST constructor recursion depth
    mismatch" SystemError (python/cpython#106905, pytest-dev/pytest#10763: reported from threaded
    programs; the depth it checks is interpreter-wide state, and the test process still runs
    threads of earlier tests' servers and Ray). Seen once in a fresh-clone run of `.ci/run`, on
    indexer/segments.py, which parses cleanly on its own: not a property of the code under test."""
    for attempt in range(5):
        try:
            return ast.parse(source, filename=filename)
        except SystemError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def _imported_roots(path: Path) -> set[str]:
    tree = _parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_goes_the_wrong_way(package: str) -> None:
    bad = {
        f"{p.relative_to(REPO)} imports {', '.join(sorted(_imported_roots(p) & FORBIDDEN[package]))}"
        for p in sorted((REPO / package).rglob("*.py"))
        if _imported_roots(p) & FORBIDDEN[package]
    }
    assert not bad, bad


def test_every_encoder_module_loads_without_faiss_sql_or_web() -> None:
    modules = sorted(p.stem for p in (REPO / "encoder").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module('encoder.' + m)\n"
        "print(sorted({'faiss', 'sqlalchemy', 'fastapi', 'indexer', 'search'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules that `path` imports when it runs (at the top or inside a function),
    less ``if TYPE_CHECKING:`` blocks, which hold imports for annotations only."""
    name = _module_name(path)
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:  # `from pkg import submodule` imports the submodule
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            visit(child)

    visit(_parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in modules and m != name}


def test_no_import_cycle_anywhere() -> None:
    """No module reaches itself through imports, eager or lazy (a lazy import that goes back is
    a cycle waiting for the first call that triggers it)."""
    paths = [p for pkg in ("encoder", "indexer", "search") for p in sorted((REPO / pkg).rglob("*.py"))]
    modules = {_module_name(p) for p in paths}
    graph = {_module_name(p): _runtime_imports(p, modules) for p in paths}
    # A package's __init__ importing its own submodules is how a package exports; a submodule
    # importing its package back is the cycle.
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            visit(dep, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())
