"""SIGTERM as an exception, so a benchmark stopped by ``timeout`` still runs its cleanup."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def _raise_exit(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit(128 + SIGTERM)`` inside the block.

    Python's default SIGTERM action ends the process without running ``finally`` blocks or
    ``except`` clauses: a stopped client then orphaned its server (which kept 127 GiB of an
    H200), and a stopped test runner lost its record. Only the main thread can install a
    handler; elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
