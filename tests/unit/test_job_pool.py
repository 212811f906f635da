"""benchmarks/job_pool.py with trivial commands: jobs run at most N at once, in order, and a
deadline stops what is still running (no engine)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from benchmarks.job_pool import Job, run_jobs


def _job(tmp_path: Path, name: str, code: str) -> Job:
    return Job(name, [sys.executable, "-c", code], tmp_path / f"{name}.log")


def test_jobs_report_their_exit_status_and_output(tmp_path: Path) -> None:
    jobs = [_job(tmp_path, "ok", "print('hello')"), _job(tmp_path, "bad", "raise SystemExit(3)")]
    outcomes = {o.job.name: o.returncode for o in run_jobs(jobs, parallel=2)}
    assert outcomes == {"ok": 0, "bad": 3}
    assert (tmp_path / "ok.log").read_text() == "hello\n"


def test_parallel_limit_and_deadline(tmp_path: Path) -> None:
    """Two sleepers at once: the third never starts before the deadline; all are stopped."""
    sleep = "import time; time.sleep(30)"
    jobs = [_job(tmp_path, f"s{i}", sleep) for i in range(3)]
    start = time.monotonic()
    outcomes = run_jobs(jobs, parallel=2, deadline=start + 2)
    assert time.monotonic() - start < 20  # stopped, not waited for
    assert [o.returncode for o in outcomes] == [None, None, None]
    assert sorted(o.job.name for o in outcomes if o.seconds > 1) == ["s0", "s1"]
    assert not (tmp_path / "s2.log").exists()
