"""A request's deadline, seen by the work it starts in threads.

The server's route sets it (`deadline_in`); a context variable carries it into the
threads `asyncio.to_thread` starts (they run in a copy of the caller's context), where
the searcher checks it between slices of its work (`check_deadline`): a request that
timed out stops working instead of running on unseen after its 504. Outside a request no
deadline is set and the checks cost a lookup.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from embedlib.exceptions import DeadlineExceededError

_DEADLINE: ContextVar[float | None] = ContextVar("embedlib_deadline", default=None)


@contextmanager
def deadline_in(seconds: float) -> Iterator[None]:
    """Work started inside (and in threads started from it) stops `seconds` from now."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_deadline() -> None:
    """DeadlineExceededError once the current request's deadline has passed."""
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceededError("the request ran past its deadline; its work was stopped")
