"""CI smoke run of benchmarks/serve_load.py: it starts the OpenAI server (stock, then TOVA)
for a tiny dummy Llama on CPU, streams a few requests through it and stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.serve_load import main, percentile

REPO = Path(__file__).resolve().parents[2]

# A stand-in for the OpenAI server: answers /health, records its pid.
HEALTH_SERVER = """
import http.server, os, sys
from pathlib import Path
Path(sys.argv[1]).write_text(str(os.getpid()))
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
port = int(sys.argv[sys.argv.index("--port") + 1])
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""

# A client that holds the server open until it is signalled.
CLIENT = """
import sys, time
from pathlib import Path
from benchmarks.server import running_server
with running_server([sys.executable, sys.argv[1], sys.argv[2]], Path(sys.argv[3])):
    print("up", flush=True)
    time.sleep(600)
"""


def test_percentile() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 90) == 9.0


def test_serve_load_smoke(tmp_path: Path) -> None:
    rows = main(
        [
            "--model", "tiny-llama", "--prompt-len", "64", "--gen-len", "32",
            "--concurrency", "4", "--num-requests", "8", "--budget", "64", "--prefill-chunk", "32",
            "--kv-pool-tokens", "4096", "--max-num-batched-tokens", "256", "--out-dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert [r["policy"] for r in rows] == ["none", "tova"]
    for row in rows:
        assert row["ok"] == 8 and row["req_s"] > 0
        assert row["gen_tok_s"] > 0
        assert 0 < row["ttft_p50_ms"] <= row["ttft_p99_ms"]
        assert 0 <= row["itl_p50_ms"] <= row["itl_p99_ms"]
        assert 0 < row["tpot_p50_ms"] <= row["tpot_p99_ms"]
    for suffix in (".csv", ".md"):
        assert (tmp_path / f"serve_load-cpu{suffix}").stat().st_size > 0


def test_sigterm_to_the_client_stops_its_server(tmp_path: Path) -> None:
    """`timeout` sends SIGTERM to the benchmark, not to the server in its own session."""
    stub, pid_file = tmp_path / "health_server.py", tmp_path / "server.pid"
    stub.write_text(HEALTH_SERVER)
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(stub), str(pid_file), str(tmp_path / "server.log")],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert client.stdout.readline().strip() == "up"
    server_pid = int(pid_file.read_text())
    try:
        client.send_signal(signal.SIGTERM)
        assert client.wait(timeout=60) == 128 + signal.SIGTERM
        with pytest.raises(ProcessLookupError):
            os.kill(server_pid, 0)
    finally:
        try:
            os.kill(server_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
