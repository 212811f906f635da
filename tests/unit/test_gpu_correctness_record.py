"""benchmarks/gpu_correctness.py without a GPU: how it reads pytest's output into the record,
and that a run stopped by SIGTERM (a time limit) still records what finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.gpu_correctness import outcomes_by_test

REPO = Path(__file__).resolve().parents[2]

# Shapes copied from a real run's log on an H200 (long lines shortened).
LOG = """\
collecting ... collected 16 items

tests/test_triton_kernels.py::test_decode_matches_torch[dtype0-9-3-64-40-16-1] PASSED
tests/test_triton_kernels.py::test_kernels_in_interpreter SKIPPED (t...)
tests/test_gpu.py::test_large_budget_equals_stock INFO 11-28 17:49:13 [api_utils.py:273] non-default args
(EngineCore pid=4535) ERROR 11-28 17:49:20 [core.py:1330] not an outcome
[gpu] K >= length: 4 prompts x 64 tokens compared with stock vLLM (float32)
PASSED
tests/test_gpu.py::test_matches_reference_and_isolation[v2] \n\
FAILED
tests/test_gpu.py::test_half_precision_agreement[float16] INFO 11-28 17:56:22 [api_utils.py:273] args
Loading weights: 100%|##########| 272/272 [00:00<00:00, 3533.72it/s]
"""


def test_outcomes_follow_each_test_id_through_its_output() -> None:
    assert outcomes_by_test(LOG.splitlines()) == [
        ("tests/test_triton_kernels.py::test_decode_matches_torch[dtype0-9-3-64-40-16-1]", "PASSED"),
        ("tests/test_triton_kernels.py::test_kernels_in_interpreter", "SKIPPED"),
        ("tests/test_gpu.py::test_large_budget_equals_stock", "PASSED"),
        ("tests/test_gpu.py::test_matches_reference_and_isolation[v2]", "FAILED"),
        ("tests/test_gpu.py::test_half_precision_agreement[float16]", "not finished"),
    ]


STUB_TESTS = """
import signal
import sys
import time

def test_quick():
    print("[gpu] quick agreement line")

def test_slow():
    # Like a vLLM engine shutting down: stopping takes a moment.
    signal.signal(signal.SIGTERM, lambda *_: (time.sleep(2), sys.exit(1)))
    print("slow test started", flush=True)
    time.sleep(300)
"""

RUNNER = """
import sys
from pathlib import Path
from benchmarks.gpu_correctness import run_and_record
sys.exit(run_and_record([], tests=["tests/test_stub.py"], results=Path("results")))
"""


def test_sigterm_still_writes_the_record(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_stub.py").write_text(STUB_TESTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        for line in runner.stdout:
            if "slow test started" in line:
                break
        runner.send_signal(signal.SIGTERM)
        # `timeout` signals the runner and then its process group: the second SIGTERM lands
        # while the runner waits for pytest to stop, and must not cut the record off.
        time.sleep(0.5)
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        runner.kill()
    (record,) = (tmp_path / "results").glob("gpu-correctness-*.md")
    text = record.read_text()
    assert "- outcome: STOPPED by SIGTERM" in text
    assert "- `tests/test_stub.py::test_quick` PASSED" in text
    assert "- `tests/test_stub.py::test_slow` not finished" in text
    assert "- quick agreement line" in text
