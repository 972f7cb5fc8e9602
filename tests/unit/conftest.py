"""The unit tier: the query path, fusion, filters, planning, the lock, the contract and
the package layout, driven by fakes. No model, no Ray, no server: seconds. Every test
here is marked `unit`; `make test` runs them first."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.unit)
