"""``vllm serve`` (the real console script) with bad TOVA flags exits non-zero, before any engine.

The processes run side by side: each only imports vLLM and (at most) builds the config.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.server import VLLM, serve_flags

CASES = {
    "budget-zero": (
        ["--kv-policy", "tova", "--kv-budget", "0"],
        2,
        "argument --kv-budget: must be an integer >= 1, got 0",
    ),
    "budget-text": (
        ["--kv-policy", "tova", "--kv-budget", "lots"],
        2,
        "argument --kv-budget: must be an integer >= 1, got 'lots'",
    ),
    "unknown-policy": (
        ["--kv-policy", "lru", "--kv-budget", "128"],
        2,
        "argument --kv-policy: invalid choice: 'lru'",
    ),
    "budget-below-block": (
        ["--kv-policy", "tova", "--kv-budget", "16"],
        1,
        "--kv-budget / kv_budget=16 is smaller than the KV block size 32; allowed: --kv-budget >= 32",
    ),
    "budget-off-block-grid": (
        ["--kv-policy", "tova", "--kv-budget", "100"],
        1,
        "--kv-budget / kv_budget=100 is not a multiple of the KV block size 32",
    ),
    "chunk-starves-prompts": (
        ["--kv-policy", "tova", "--kv-budget", "128", "--kv-prefill-chunk", "1024"],
        1,
        "kv_prefill_chunk=1024 does not fit a step beside a full batch of decodes",
    ),
    "prefix-caching": (
        ["--kv-policy", "tova", "--kv-budget", "128", "--enable-prefix-caching"],
        1,
        "--enable-prefix-caching cannot be combined with --kv-policy / kv_policy=tova",
    ),
    "budget-without-policy": (
        ["--kv-budget", "128"],
        1,
        "--kv-budget take effect only with an eviction policy; add --kv-policy",
    ),
}


HELP = {"help": ["--help"], "help-group": ["--help=TovaConfig"]}


@pytest.fixture(scope="module")
def results(model_path: Path) -> dict[str, tuple[int, str]]:
    """Every case's exit status and output, and the two help pages', all run side by side."""
    commands = {name: [str(model_path), *serve_flags(), *argv] for name, (argv, _, _) in CASES.items()}
    commands.update(HELP)
    procs = {
        name: subprocess.Popen([VLLM, "serve", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, argv in commands.items()
    }
    out = {}
    for name, proc in procs.items():
        text, _ = proc.communicate(timeout=300)
        out[name] = (proc.returncode, text)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_bad_flag_exits_nonzero_naming_it(results, name: str) -> None:
    _, status, message = CASES[name]
    code, text = results[name]
    assert code == status, text[-3000:]
    assert message in text, text[-3000:]
    assert "EngineCore" not in text  # refused before any engine process started


def test_help_lists_the_flags(results) -> None:
    code, overview = results["help"]
    assert code == 0 and "TovaConfig" in overview and "--kv-budget" in overview  # the group and its description
    code, text = results["help-group"]
    assert code == 0
    for flag in ("--kv-policy {none,tova", "--kv-budget K", "--kv-prefill-chunk C"):
        assert flag in text
