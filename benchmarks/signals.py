"""SIGTERM as an exception, so a benchmark stopped by ``timeout`` still runs its cleanup."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def _raise_exit_once(signum: int, frame) -> None:
    # The process is stopping from here on: a second SIGTERM must not cut its cleanup short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn the first SIGTERM inside the block into ``SystemExit(128 + SIGTERM)`` and ignore
    any later one for the rest of the process.

    Python's default SIGTERM action ends the process without running ``finally`` blocks or
    ``except`` clauses: a stopped client then orphaned its server (which kept 127 GiB of an
    H200), and a stopped test runner lost its record. ``timeout`` signals both the process
    and its process group, so a second SIGTERM can land during that cleanup, which then has to
    run to its end (the likely reason a runner stopped on an H200 wrote no record). Only the
    main thread can install a handler; elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_exit_once)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is _raise_exit_once:  # not stopped
            signal.signal(signal.SIGTERM, previous)
