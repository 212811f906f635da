"""Run every GPU test and record the run in benchmarks/results/gpu-correctness-<device>.md.

    python -m benchmarks.gpu_correctness [PYTEST ARGS, e.g. -k reference]

Each run is appended to the record as its own section.

Needs a CUDA GPU with vLLM 0.26.0 and this package installed; the tests themselves skip
without CUDA. The record holds the command, device, versions, each test's outcome and the
agreement lines the tests print (prefixed ``[gpu]``).
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import torch
import vllm

from benchmarks.report import append_section, device_slug

TESTS = ["tests/test_triton_kernels.py", "tests/test_gpu.py"]
RESULTS = Path(__file__).parent / "results"


def main() -> int:
    command = [sys.executable, "-m", "pytest", "-v", "-s", "-p", "no:cacheprovider", *TESTS, *sys.argv[1:]]
    # Stream the output as it comes (a run stopped by a time limit still shows how far it got)
    # and keep it for the record.
    lines: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
    returncode = proc.returncode
    outcomes = [line.split(" INFO ")[0] for line in lines if line.startswith("tests/") and "::" in line]
    # A failing assertion's traceback echoes the source of the print: skip quoted markers.
    reports = [line[line.index("[gpu]") + 6 :] for line in lines if "[gpu]" in line and '"[gpu]' not in line]
    summary = next((line for line in reversed(lines) if " passed" in line or " failed" in line), "")
    record = "\n".join(
        [
            f"## Run of {datetime.datetime.now():%Y-%m-%d %H:%M} on {torch.cuda.get_device_name()}",
            "",
            f"- command: `python -m benchmarks.gpu_correctness {' '.join(sys.argv[1:])}`",
            f"- runs: `{' '.join(command[2:])}`",
            f"- vLLM {vllm.__version__}, torch {torch.__version__}",
            f"- outcome: {'PASS' if returncode == 0 else 'FAIL'} ({summary.strip('= ')})",
            "",
            "### Tests",
            *[f"- `{line}`" for line in outcomes],
            "",
            "### Agreement",
            *[f"- {line}" for line in reports],
            "",
        ]
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"gpu-correctness-{device_slug(torch.cuda.get_device_name())}.md"
    append_section(path, "GPU correctness runs", record)
    print(f"wrote {path}")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
