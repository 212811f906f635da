"""Start a real ``vllm serve`` process (the console script of this environment) for tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.server import VLLM, cli_flags, metric, running_server, scrape  # noqa: F401 (re-exported)
from tests.conftest import ENGINE_DEFAULTS


def serve_flags(**overrides) -> list[str]:
    """The CLI spelling of the tests' engine settings (so offline and served runs match)."""
    settings = {k: v for k, v in ENGINE_DEFAULTS.items() if k != "disable_log_stats"}
    settings.update(overrides)
    return cli_flags(settings)


def run_cli(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``vllm ARGS`` to completion (for flags that must be refused before any engine)."""
    return subprocess.run([VLLM, *args], capture_output=True, text=True, timeout=timeout)


@contextmanager
def vllm_server(model: Path, flags: list[str], log: Path, start_timeout: float = 600) -> Iterator[str]:
    """``vllm serve MODEL FLAGS`` on a loopback port; yields its base URL; always stopped."""
    with running_server([VLLM, "serve", str(model), *flags], log, start_timeout) as url:
        yield url
