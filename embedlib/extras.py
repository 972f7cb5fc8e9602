"""Optional parts of embedlib and the packages they need.

`pip install embedlib` embeds, indexes, serves, updates and queries. The other uses need
an extra: `words` (gensim), `maps` (matplotlib, plotly, umap-learn), `recommend`
(implicit, scipy), `train` (sentence-transformers' training stack), `s3`, `gcs`, or
`all`. Their modules import those packages through `optional_import`, which says which
extra to install when one is missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

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
