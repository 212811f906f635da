"""``vllm serve --kv-policy tova`` as a real process: outputs, streaming, load, /metrics, errors.

One server for the module (engine start is the slow part); the offline runs share one engine
through the session's ``engines`` fixture (tests/conftest.py), idle while the server runs.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
from vllm import SamplingParams
from vllm.sampling_params import BeamSearchParams

from tests.conftest import tova
from tests.equivalence import evictions, generate_logged, replay_log
from tests.server import metric, scrape, serve_flags, vllm_server

BUDGET, CHUNK, MAX_TOKENS, NUM_LAYERS = 128, 256, 16, 30
BLOCK_CAP = 4  # ceil(128 / 32)
SERVER_MAX = 256  # --kv-budget-max of the server (the offline engine keeps the default, 128)
SMALL = 64  # a per-request budget under both maxima


@pytest.fixture(scope="module")
def prompts(austen_ids: list[int]) -> list[list[int]]:
    """32 token-id prompts of 40..660 tokens: most exceed K, so TOVA evicts."""
    return [austen_ids[1000 * i : 1000 * i + 40 + 20 * i] for i in range(32)]


def test_offline_per_request_budget_over_the_maximum_is_refused(engines, prompts) -> None:
    """Runs first, on the engine the ``offline`` fixture then reuses (same settings)."""
    llm = engines.get(additional_config=tova(BUDGET, CHUNK))
    params = SamplingParams(max_tokens=2, extra_args={"kv_budget": 2 * BUDGET})
    with pytest.raises(
        ValueError, match=r"'kv_budget'=256 exceeds this server's maximum --kv-budget-max / kv_budget_max=128"
    ):
        llm.generate([{"prompt_token_ids": prompts[0]}], params, use_tqdm=False)
    misspelled = SamplingParams(max_tokens=2, extra_args={"kv_budgte": BUDGET})
    with pytest.raises(ValueError, match=r"key 'kv_budgte' is not a vllm-tova setting; did you mean 'kv_budget'\?"):
        llm.generate([{"prompt_token_ids": prompts[0]}], misspelled, use_tqdm=False)
    with pytest.raises(ValueError, match=r"beam search .* cannot be combined with --kv-policy / kv_policy=tova"):
        llm.beam_search([{"prompt_token_ids": prompts[0]}], BeamSearchParams(beam_width=2, max_tokens=2))
    same = SamplingParams(temperature=0, max_tokens=2, extra_args={"kv_budget": BUDGET})
    out = llm.generate([{"prompt_token_ids": prompts[0]}], same, use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 2


@pytest.fixture(scope="module")
def offline_everything(engines, prompts) -> tuple[list[tuple[str, int]], str]:
    """The prompts in one batch through the offline ``LLM`` API (same settings): per prompt,
    its text and the entries its workers actually dropped, counted from their eviction log;
    and prompt 7's text at its own budget ``SMALL``."""
    llm = engines.get(additional_config=tova(BUDGET, CHUNK))
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    runs = []
    for p, (out, (log,)) in zip(prompts, generate_logged(llm, prompts, params)):
        passes = replay_log(log, len(p), CHUNK, BUDGET, MAX_TOKENS, NUM_LAYERS)
        runs.append((out.text, evictions(passes, len(p), CHUNK)))
    small = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, extra_args={"kv_budget": SMALL})
    (out,) = llm.generate([{"prompt_token_ids": prompts[7]}], small, use_tqdm=False)
    return runs, out.outputs[0].text


@pytest.fixture(scope="module")
def offline_runs(offline_everything) -> list[tuple[str, int]]:
    return offline_everything[0]


@pytest.fixture(scope="module")
def offline(offline_runs) -> list[str]:
    return [text for text, _ in offline_runs]


@pytest.fixture(scope="module")
def server(offline, model_path: Path, tmp_path_factory) -> tuple[str, Path]:
    log = tmp_path_factory.mktemp("serve") / "server.log"
    flags = serve_flags(seed=0) + [
        "--kv-policy", "tova", "--kv-budget", str(BUDGET), "--kv-prefill-chunk", str(CHUNK),
        "--kv-budget-max", str(SERVER_MAX),
    ]  # fmt: skip
    with vllm_server(model_path, flags, log) as url:
        yield url, log


@pytest.fixture(scope="module")
def client(server, model_path: Path) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused")


def _complete(client: openai.OpenAI, model: str, prompt: list[int], **extra):
    return client.completions.create(
        model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
        extra_body={"ignore_eos": True, **extra},
    )  # fmt: skip


def test_startup_log_names_policy_budget_cap_and_gain(server) -> None:
    text = server[1].read_text()
    assert "vllm-tova: policy=tova budget=128 prefill_chunk=256 block_size=32 -> at most 4 KV blocks" in text
    assert "up to 16.0x more sequences per KV pool" in text  # 2048-token sequence: 64 blocks


def test_single_completion_equals_offline(client, model_path, prompts, offline) -> None:
    out = _complete(client, str(model_path), prompts[20])
    assert out.choices[0].text == offline[20]
    assert out.usage.completion_tokens == MAX_TOKENS


def test_streaming_equals_offline(client, model_path, prompts, offline) -> None:
    stream = client.completions.create(
        model=str(model_path), prompt=prompts[31], max_tokens=MAX_TOKENS, temperature=0,
        stream=True, extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = [c.choices[0].text for c in stream if c.choices]
    assert len(chunks) > 1
    assert "".join(chunks) == offline[31]


def test_32_concurrent_equal_offline_and_metrics_track_them(
    server, model_path, prompts, offline, offline_runs
) -> None:
    url = server[0]
    peaks = {"running": 0.0, "blocks": 0.0}
    done = threading.Event()

    def watch() -> None:  # scrape /metrics while the batch runs
        while not done.is_set():
            text = scrape(url)
            peaks["running"] = max(peaks["running"], metric(text, "vllm_tova:running_sequences") or 0)
            peaks["blocks"] = max(peaks["blocks"], metric(text, "vllm_tova:kv_blocks_per_sequence") or 0)
            time.sleep(0.2)

    async def run_all():
        aclient = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")
        calls = [
            aclient.completions.create(
                model=str(model_path), prompt=p, max_tokens=MAX_TOKENS, temperature=0,
                extra_body={"ignore_eos": True},
            )  # fmt: skip
            for p in prompts
        ]
        return await asyncio.gather(*calls)

    before = scrape(url)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        results = asyncio.run(run_all())
    finally:
        done.set()
        watcher.join()
    assert [r.choices[0].text for r in results] == offline

    # The scheduler counts evictions from token counts; the workers' own eviction logs of the
    # offline batch say what was dropped.
    expected = sum(dropped for _, dropped in offline_runs)
    assert expected > 0
    start = metric(before, "vllm_tova:evicted_tokens_total")
    deadline = time.monotonic() + 10
    while (evicted := metric(scrape(url), "vllm_tova:evicted_tokens_total") - start) != expected:
        assert time.monotonic() < deadline, f"evicted {evicted} != expected {expected}"
        time.sleep(0.2)

    assert peaks["running"] > 1, peaks
    assert 0 < peaks["blocks"] <= BLOCK_CAP, peaks
    final = scrape(url)
    assert metric(final, "vllm_tova:kv_block_cap") == BLOCK_CAP
    assert metric(final, "vllm:num_requests_running") is not None  # vLLM's own series still there


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"max_tokens": -3}, "max_tokens"),
        ({"vllm_xargs": {"kv_budget": 512}}, "'kv_budget'=512 exceeds this server's maximum --kv-budget-max / kv_budget_max=256"),
        ({"vllm_xargs": {"kv_budget": 80}}, "'kv_budget'=80 is not a multiple of the KV block size 32"),
        ({"vllm_xargs": {"kv_policy": "none"}}, "Start the server with --kv-budget-max 2048"),
        ({"vllm_xargs": {"kv_policy": "h2o"}}, "Policies do not mix in one engine"),
        ({"vllm_xargs": {"kv_prefil_chunk": 64}}, "did you mean 'kv_prefill_chunk'?"),
        ({"use_beam_search": True, "n": 2}, "beam search (use_beam_search / LLM.beam_search) cannot be combined"),
    ],
)
def test_bad_request_gets_4xx_and_server_keeps_serving(server, model_path, prompts, offline, extra, message):
    url = server[0]
    body = {"model": str(model_path), "prompt": prompts[3], "max_tokens": MAX_TOKENS, "temperature": 0}
    status, reply = _post(url, {**body, **extra})
    assert 400 <= status < 500, reply
    assert message in json.dumps(reply), reply
    status, reply = _post(url, {**body, "ignore_eos": True})
    assert status == 200 and reply["choices"][0]["text"] == offline[3]


@pytest.mark.parametrize("xargs", [{"kv_budget": 512}, {"kv_policy": "none"}])
def test_streamed_bad_request_gets_400_before_the_stream(server, model_path, prompts, xargs):
    """A streamed request is refused with a 400 too, not a 200 whose stream carries the error."""
    body = {"model": str(model_path), "prompt": prompts[3], "max_tokens": MAX_TOKENS, "stream": True}
    req = urllib.request.Request(
        server[0] + "/v1/completions", json.dumps({**body, "vllm_xargs": xargs}).encode(),
        {"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=120).read()
    assert refused.value.code == 400
    assert "kv_budget_max=256" in refused.value.read().decode()


def test_restating_the_server_budget_per_request_is_accepted(server, model_path, prompts, offline):
    body = {"model": str(model_path), "prompt": prompts[5], "max_tokens": MAX_TOKENS, "temperature": 0}
    status, reply = _post(server[0], {**body, "ignore_eos": True, "vllm_xargs": {"kv_budget": BUDGET}})
    assert status == 200 and reply["choices"][0]["text"] == offline[5]


def test_per_request_budget_equals_offline_and_is_metered(server, model_path, prompts, offline_everything):
    """A request's own kv_budget over HTTP gives what it gives offline, and /metrics reports
    the blocks of its budget class."""
    body = {"model": str(model_path), "prompt": prompts[7], "max_tokens": MAX_TOKENS, "temperature": 0}
    status, reply = _post(server[0], {**body, "ignore_eos": True, "vllm_xargs": {"kv_budget": SMALL}})
    assert status == 200 and reply["choices"][0]["text"] == offline_everything[1]
    assert offline_everything[1] != offline_everything[0][7][0]  # K=64 differs from K=128 here
    assert 'budget_class="64"' in scrape(server[0])
