"""A short soak of ``vllm serve --kv-policy tova`` (the checks of ``benchmarks/soak.py``).

Half a minute of load with a dozen streaming clients, after a warm-up that sends every good
prompt and every bad and broken-off kind once: every good text equals the offline engine's,
every bad request gets a 4xx, the server keeps serving, KV usage returns to 0 and RSS stays
within ``soak.RSS_GROWTH_MIB`` (glibc's mmap threshold fixed: ``soak.FIXED_MMAP_THRESHOLD``). The 5-minute, 64-client run is recorded in
benchmarks/results/reliability/.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.soak import Plan, reference_texts, soak, soak_prompts, soak_server
from benchmarks.soak_client import BAD, BROKEN, GOOD
from tests.conftest import ENGINE_DEFAULTS, tova
from tests.server import serve_flags

BUDGET, CHUNK = 128, 256
SHORT, LONG = [9, 47, 95], [600]  # the long prompt is chunked (C=256) and evicts (K=128)
CLIENTS, SECONDS, MAX_REQUESTS = 12, 30.0, 60
# The server's token budget holds one chunk beside a full batch of decodes (256 + 31 <= 300),
# the offline engine's 1,024: chunk-aligned scheduling makes every output independent of it,
# so any output that depends on the budget fails.
SERVER_STEP_TOKENS = 300


def test_short_soak(engines, model_path: Path, austen_ids: list[int], tmp_path: Path) -> None:
    prompts = soak_prompts(austen_ids, SHORT + LONG, [16] * len(SHORT) + [8] * len(LONG))
    references = reference_texts(engines.get(additional_config=tova(BUDGET, CHUNK)), prompts)
    engines.close()  # the server gets the machine to itself
    plan = Plan(str(model_path), prompts, references, len(SHORT), ENGINE_DEFAULTS["max_model_len"], BUDGET)
    flags = serve_flags(max_num_batched_tokens=SERVER_STEP_TOKENS)
    flags += ["--kv-policy", "tova", "--kv-budget", str(BUDGET), "--kv-prefill-chunk", str(CHUNK)]
    with soak_server(str(model_path), flags, tmp_path / "server.log") as (url, proc):
        record = soak(url, proc.pid, plan, CLIENTS, SECONDS, MAX_REQUESTS)
        alive = proc.poll() is None
    summary = {k: record[k] for k in ("requests", "by_kind", "after_probe", "rss_mib")}
    print(f"[soak] {summary}")
    assert alive
    assert record["problems"] == [], record["problems"]
    assert all(record["by_kind"][k]["sent"] >= 1 for k in (GOOD, *BAD, *BROKEN)), record["by_kind"]
    assert record["requests_under_load"] >= CLIENTS, record["requests_under_load"]
