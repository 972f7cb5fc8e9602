"""Optional parts of embedlib and the packages they need.

`pip install embedlib` embeds, indexes, serves, updates and queries. The other uses need
an extra: `words` (gensim), `maps` (matplotlib, plotly, umap-learn), `recommend`
(implicit, scipy), `train` (sentence-transformers' training stack), `s3`, `gcs`, or
`all`. Their modules import those packages through `optional_import`, which says which
extra to install when one is missing.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from embedlib.exceptions import MissingExtraError


def optional_import(module: str, extra: str, *, what: str) -> ModuleType:
    """`importlib.import_module(module)`, or MissingExtraError naming the extra that
    brings it (`what` says what needed it)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise MissingExtraError(
            f"{what} needs the {extra!r} extra ({e.name} is not installed): "
            f"pip install 'embedlib[{extra}]'"
        ) from e


def lazy_exports(
    package: str, names: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's `__getattr__` and `__dir__` (PEP 562) for `names` (name -> the module
    that defines it): each module is imported on first use, so importing the package
    imports none of them."""
    namespace = sys.modules[package].__dict__

    def getattr_(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *names})

    return getattr_, dir_
