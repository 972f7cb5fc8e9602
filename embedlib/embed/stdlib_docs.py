"""Text nobody on the project wrote, shipped with every Python: the standard library's
documentation (module, class and function docstrings, read from the sources with
`ast`, so nothing is imported or run, and the docstrings of its compiled modules).

The demo corpus, the int8 backend's calibration sentences and the fine-tuning demo
pairs come from here. It needs no download and is the same on every run of the same
Python.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
import sysconfig
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa

CLASSIC = {
    "classic/cat-video": "cat video",
    "classic/ml-tutorial": "machine learning tutorial",
    "classic/cheap-shoes": "buy cheap shoes",
}
_SKIP_PACKAGES = {
    "test", "tests", "idlelib", "turtledemo", "tkinter", "lib2to3", "ensurepip", "site-packages",
    "pydoc_data", "__pycache__", "distutils", "venv", "unittest", "msilib", "__phello__",
}  # fmt: skip
_MAX_CHARS = 600


def _first_paragraph(doc: str) -> str:
    para = inspect.cleandoc(doc).split("\n\n", 1)[0]
    return " ".join(para.split())[:_MAX_CHARS]


def _python_docs(
    root: Path, shape: Callable[[str], str] = _first_paragraph
) -> Iterator[tuple[str, str, str]]:
    """(qualified name, kind, shape(docstring)) of the modules, classes and functions."""
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(p in _SKIP_PACKAGES or p.startswith(("_", ".")) for p in rel.parts[:-1]):
            continue
        stem = rel.stem
        if stem.startswith("_") and stem != "__init__":
            continue
        module = ".".join((*rel.parts[:-1], *(() if stem == "__init__" else (stem,))))
        if not module:
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        doc = ast.get_docstring(tree)
        if doc:
            yield module, "module", shape(doc)
        for node in tree.body:
            if isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
            ) and not node.name.startswith("_"):
                doc = ast.get_docstring(node)
                if doc:
                    kind = "class" if isinstance(node, ast.ClassDef) else "function"
                    yield f"{module}.{node.name}", kind, shape(doc)


def _compiled_docs(root: Path) -> Iterator[tuple[str, str, str]]:
    dynload = root / "lib-dynload"
    names = set(sys.builtin_module_names)
    if dynload.is_dir():
        names |= {p.name.split(".", 1)[0] for p in dynload.iterdir() if p.suffix in (".so", ".pyd")}
    for name in sorted(n for n in names if not n.startswith("_")):
        try:
            with warnings.catch_warnings():  # e.g. 'spwd' is deprecated: we only read docs
                warnings.simplefilter("ignore", DeprecationWarning)
                module = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(module, "__file__", "").endswith(".py"):
            continue
        if module.__doc__:
            yield name, "module", _first_paragraph(module.__doc__)
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or not (inspect.isbuiltin(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", name) != name or not obj.__doc__:
                continue
            yield (
                f"{name}.{attr}",
                "class" if inspect.isclass(obj) else "function",
                _first_paragraph(obj.__doc__),
            )


def stdlib_corpus() -> pa.Table:
    """The demo corpus as a table: id, text, kind, module."""
    root = Path(sysconfig.get_paths()["stdlib"])
    rows: dict[str, tuple[str, str]] = {}
    for qualname, kind, doc in (*_python_docs(root), *_compiled_docs(root)):
        if doc and qualname not in rows:
            rows[qualname] = (kind, f"{qualname}: {doc}")
    for doc_id, text in CLASSIC.items():
        rows[doc_id] = ("classic", text)
    ids = sorted(rows)
    return pa.table(
        {
            "id": ids,
            "text": [rows[i][1] for i in ids],
            "kind": [rows[i][0] for i in ids],
            "module": [i.split("/", 1)[0].split(".", 1)[0] for i in ids],
        }
    )


def docstring_pairs(min_words: int = 8) -> pa.Table:
    """(id, anchor, positive) pairs from the standard library's docstrings, for
    contrastive fine-tuning: the summary paragraph is the anchor, the rest of the
    docstring (at least `min_words` words, at most 600 characters) its positive."""
    root = Path(sysconfig.get_paths()["stdlib"])
    rows: dict[str, tuple[str, str]] = {}
    for qualname, _, doc in _python_docs(root, shape=inspect.cleandoc):
        summary, _, rest = doc.partition("\n\n")
        anchor, positive = " ".join(summary.split()), " ".join(rest.split())[:_MAX_CHARS]
        if anchor and len(positive.split()) >= min_words and qualname not in rows:
            rows[qualname] = (anchor, positive)
    ids = sorted(rows)
    return pa.table(
        {
            "id": ids,
            "anchor": [rows[i][0] for i in ids],
            "positive": [rows[i][1] for i in ids],
        }
    )
