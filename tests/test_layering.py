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


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
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
