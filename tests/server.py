"""Start a real ``vllm serve`` process (the console script of this environment) for tests."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.server import running_server
from tests.conftest import ENGINE_DEFAULTS

VLLM = str(Path(sys.executable).parent / "vllm")


def serve_flags(**overrides) -> list[str]:
    """The CLI spelling of the tests' engine settings (so offline and served runs match)."""
    settings = {k: v for k, v in ENGINE_DEFAULTS.items() if k != "disable_log_stats"}
    settings.update(overrides)
    flags: list[str] = []
    for key, value in settings.items():
        name = "--" + key.replace("_", "-")
        if value is True:
            flags.append(name)
        elif value is not False:
            flags += [name, str(value)]
    return flags


def run_cli(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``vllm ARGS`` to completion (for flags that must be refused before any engine)."""
    return subprocess.run([VLLM, *args], capture_output=True, text=True, timeout=timeout)


@contextmanager
def vllm_server(model: Path, flags: list[str], log: Path, start_timeout: float = 600) -> Iterator[str]:
    """``vllm serve MODEL FLAGS`` on a loopback port; yields its base URL; always stopped."""
    with running_server([VLLM, "serve", str(model), *flags], log, start_timeout) as url:
        yield url


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return r.read().decode()


def metric(text: str, name: str) -> float | None:
    """Sum of a metric's samples (over labels) in Prometheus text format; None if absent."""
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    ]
    return sum(values) if values else None
