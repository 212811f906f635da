"""Run every GPU test and record the run in benchmarks/results/correctness/gpu-correctness-<device>.md.

    python -m benchmarks.gpu_correctness [PYTEST ARGS, e.g. -k reference]

Each run is appended to the record as its own section.

Needs a CUDA GPU with vLLM 0.26.0 and this package installed; the tests themselves skip
without CUDA. The record holds the command, commit, device, versions, each test's outcome
and the agreement lines the tests print (prefixed ``[gpu]``). A run stopped by SIGTERM
(``timeout``) still writes its record: the tests that finished, and the one cut off.
"""

from __future__ import annotations

import datetime
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
import vllm

from benchmarks.report import append_section, device_slug, tree_commit
from benchmarks.signals import sigterm_as_exit

TESTS = ["tests/kernels/test_triton_kernels.py", "tests/gpu/test_gpu.py"]
RESULTS = Path(__file__).parent / "results" / "correctness"

# An outcome as pytest -v prints it: the word, maybe a skip reason, maybe the progress.
_OUTCOME = re.compile(r"^(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)(\s+\(.*\))?(\s+\[\s*\d+%\])?$")
_TEST_ID = re.compile(r"^tests/\S+::\S+")


def outcomes_by_test(lines: Sequence[str]) -> list[tuple[str, str]]:
    """(test id, outcome) for each test pytest -v -s started, in order. With -s the tests'
    own output can follow a test's id on its line and sit between the id and its outcome,
    so an outcome alone on a line belongs to the last id seen; a test with none was cut
    off ('not finished')."""
    outcomes: dict[str, str] = {}
    current = None
    for line in lines:
        test_id = _TEST_ID.match(line)
        if test_id:
            current = test_id.group(0)
            after = _OUTCOME.match(line[test_id.end() :].strip())
            outcomes[current] = after.group(1) if after else "not finished"
            continue
        alone = _OUTCOME.match(line.strip())
        if alone and current is not None and outcomes[current] == "not finished":
            outcomes[current] = alone.group(1)
    return list(outcomes.items())


def run_and_record(pytest_args: Sequence[str], tests: Sequence[str] = TESTS, results: Path = RESULTS) -> int:
    command = [sys.executable, "-m", "pytest", "-v", "-s", "-p", "no:cacheprovider", *tests, *pytest_args]
    # Stream the output as it comes and keep it for the record.
    lines: list[str] = []
    stopped = False
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with sigterm_as_exit():
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))  # before printing: a stop may come in between
                print(line, end="", flush=True)
            proc.wait()
    except SystemExit:  # SIGTERM: stop pytest, then still write the record
        stopped = True
        proc.terminate()
        proc.wait()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    # A failing assertion's traceback echoes the source of the print: skip quoted markers.
    reports = [line[line.index("[gpu]") + 6 :] for line in lines if "[gpu]" in line and '"[gpu]' not in line]
    summary = next((line for line in reversed(lines) if " passed" in line or " failed" in line), "")
    if stopped:
        outcome = "STOPPED by SIGTERM (a time limit?) before pytest finished"
    else:
        outcome = f"{'PASS' if proc.returncode == 0 else 'FAIL'} ({summary.strip('= ')})"
    record = "\n".join(
        [
            f"## Run of {datetime.datetime.now():%Y-%m-%d %H:%M} on {device}",
            "",
            f"- command: `python -m benchmarks.gpu_correctness {' '.join(pytest_args)}`",
            f"- runs: `{' '.join(command[2:])}`",
            f"- commit: {tree_commit()}",
            f"- vLLM {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}",
            f"- outcome: {outcome}",
            "",
            "### Tests",
            *[f"- `{test}` {result}" for test, result in outcomes_by_test(lines)],
            "",
            "### Agreement",
            *[f"- {line}" for line in reports],
            "",
        ]
    )
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"gpu-correctness-{device_slug(device)}.md"
    append_section(path, "GPU correctness runs", record)
    print(f"wrote {path}", flush=True)
    return 128 + signal.SIGTERM if stopped else proc.returncode


def main() -> int:
    return run_and_record(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
