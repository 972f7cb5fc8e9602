"""The package's shape: at most ten modules at the top, no import cycle, and a command
line whose --help imports neither Ray, FAISS nor torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import embedlib

ROOT = Path(embedlib.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each module's embedlib imports at module level (not under TYPE_CHECKING, not in
    functions)."""
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found = [node.module]
                found += [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            deps |= {m for m in found if m in modules and m != name}
        graph[name] = deps
    return graph


def test_at_most_ten_modules_directly_in_the_package():
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= 10, top


def test_no_import_cycle():
    graph = _imports()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for dep in sorted(graph[name]):
            # a package's __init__ is run by importing any of its modules: count it
            visit(dep, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_help_imports_neither_ray_faiss_nor_torch():
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "embedlib.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "usage: embedlib" in out.stdout
    loaded = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert not {"ray", "faiss", "torch", "sentence_transformers"} & loaded
