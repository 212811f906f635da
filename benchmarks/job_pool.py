"""Run command lines side by side, a fixed number at a time, under an optional deadline.

Each job is its own process group with its output in a log file; at the deadline the ones
still running are stopped (SIGTERM to the group, then SIGKILL), so a benchmark cut short
still reports what finished.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Job:
    name: str
    argv: list[str]
    log: Path


@dataclass(frozen=True)
class Outcome:
    """returncode None: stopped at the deadline, or never started before it."""

    job: Job
    returncode: int | None
    seconds: float


def _stop_all(procs: Sequence[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM every job's process group, then SIGKILL the groups still alive after ``grace``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        if all(proc.poll() is not None for proc in procs):
            return


def run_jobs(
    jobs: Sequence[Job],
    parallel: int,
    deadline: float | None = None,
    env: Mapping[str, str] | None = None,
    on_done: Callable[[Outcome], None] | None = None,
    stagger: float = 0.0,
) -> list[Outcome]:
    """Start jobs in order, at most ``parallel`` at once and ``stagger`` seconds apart (engines
    starting at the same instant contend for the same ports and imports); ``deadline`` is a
    time.monotonic()."""
    pending, running, done = list(jobs), [], []
    last_start = -float("inf")

    def finish(outcome: Outcome) -> None:
        done.append(outcome)
        if on_done:
            on_done(outcome)

    while pending or running:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            _stop_all([proc for _, proc, _, _ in running])
            for job, proc, started, log in running:
                log.close()
                finish(Outcome(job, None, now - started))
            for job in pending:
                finish(Outcome(job, None, 0.0))
            break
        while pending and len(running) < parallel and time.monotonic() - last_start >= stagger:
            last_start = time.monotonic()
            job = pending.pop(0)
            log = job.log.open("w")
            proc = subprocess.Popen(
                job.argv, stdout=log, stderr=subprocess.STDOUT, env=dict(env or os.environ), start_new_session=True
            )
            running.append((job, proc, time.monotonic(), log))
        still = []
        for job, proc, started, log in running:
            if proc.poll() is None:
                still.append((job, proc, started, log))
            else:
                log.close()
                finish(Outcome(job, proc.returncode, time.monotonic() - started))
        running = still
        time.sleep(min(0.5, stagger) if stagger else 0.5)
    return done
