"""The registry: complete however it is reached, and no import cycle inside encoder."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from encoder import create_model, list_models

REPO = Path(__file__).resolve().parents[2]
ENCODER = REPO / "encoder"
KINDS = list_models()  # through the package: every model file imported first


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node below `tree`, less ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def _encoder_imports(path: Path) -> set[str]:
    """Modules of encoder that `path` imports when it runs, at the top or inside a function."""
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from . import x / from .x import y
                names = [node.module] if node.module else [a.name for a in node.names]
            elif node.module and node.module.split(".")[0] == "encoder":
                names = [node.module.split(".")[1]] if "." in node.module else [a.name for a in node.names]
            else:
                continue
            found |= {n.split(".")[0] for n in names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("encoder.")}
    modules = {p.stem for p in ENCODER.glob("*.py")}
    return (found & modules) - {path.stem}


def test_no_import_cycle_inside_encoder() -> None:
    graph = {p.stem: _encoder_imports(p) for p in ENCODER.glob("*.py") if p.stem != "__init__"}
    assert "variants" not in graph["model"] and "model" not in graph["registry"]
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


@pytest.mark.parametrize(
    "code",
    [
        "import encoder; print(','.join(encoder.list_models()))",
        "from encoder import create_model, list_models; create_model('vae'); print(','.join(list_models()))",
        "from encoder import ModelConfig, register; from encoder import list_models; print(','.join(list_models()))",
        "from encoder.checkpoint import load_model; from encoder.registry import list_models;"
        " print(','.join(list_models()))",
    ],
)
def test_every_kind_is_registered_however_the_registry_is_reached(code: str) -> None:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().split(",") == KINDS, out.stderr


def test_an_unknown_name_fails_with_every_known_name() -> None:
    assert {"conv", "dense", "vae", "cvae", "vqvae"} <= set(KINDS)
    with pytest.raises(ValueError, match="unknown model kind 'nope'; known: " + ", ".join(KINDS)):
        create_model("nope")
