"""Start vLLM's OpenAI server on loopback, wait until it is healthy, and always stop it.

The server runs as ``python -m vllm.entrypoints.openai.api_server`` (the same server as
``vllm serve``, without depending on the console script) in its own process group, so
stopping it also stops its EngineCore and worker processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.signals import sigterm_as_exit


def scrape(url: str) -> str:
    """The server's ``/metrics`` page (Prometheus text format)."""
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM to the server's own process group (it started it), then SIGKILL if needed."""
    if proc.poll() is not None:
        return
    pgid = os.getpgid(proc.pid)
    os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        proc.wait()


VLLM = str(Path(sys.executable).parent / "vllm")


def cli_flags(settings: dict) -> list[str]:
    """Engine keyword arguments spelled as ``vllm serve`` flags (True: a bare flag; False: none)."""
    flags: list[str] = []
    for key, value in settings.items():
        name = "--" + key.replace("_", "-")
        if value is True:
            flags.append(name)
        elif value is not False:
            flags += [name, str(value)]
    return flags


@contextmanager
def running_server(command: list[str], log_path: Path, startup_timeout: float = 600.0) -> Iterator[str]:
    """Run ``COMMAND --host 127.0.0.1 --port PORT`` (an OpenAI-compatible vLLM server) and yield
    its base URL once ``/health`` answers; logs go to ``log_path``; always stopped, also when
    this process gets SIGTERM."""
    with server_process(command, log_path, startup_timeout) as (url, _):
        yield url


@contextmanager
def server_process(
    command: list[str], log_path: Path, startup_timeout: float = 600.0
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``running_server`` that also yields the server's process (whose tree holds the engine),
    for callers that watch it: is it alive, how much memory does it hold."""
    # The server has its own session (so stopping it reaches its workers), so a SIGTERM to
    # this client (``timeout``, a job scheduler) does not reach it: the finally must run.
    with sigterm_as_exit():
        yield from _serve(command, log_path, startup_timeout)


def _serve(command: list[str], log_path: Path, startup_timeout: float) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while not _healthy(url):
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"server not healthy after {startup_timeout:.0f} s:\n{log_path.read_text()[-4000:]}"
                )
            time.sleep(1.0)
        yield url, proc
    finally:
        _stop(proc)


@contextmanager
def openai_server(
    model: str, args: list[str], log_path: Path, startup_timeout: float = 600.0
) -> Iterator[str]:
    """The server module (``vllm serve`` without the console script) for ``model``."""
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, *args]
    with running_server(command, log_path, startup_timeout) as url:
        yield url
