"""Force the preemptions that admission cannot rule out, to test the replay path."""

from __future__ import annotations

from vllm import LLM, SamplingParams
from vllm.sampling_params import RequestOutputKind

from vllm_tova.dev.runs import read_metrics


def run_preempting_once(
    llm: LLM, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
) -> tuple[list[list[int]], int]:
    """Tokens per prompt, and how many running requests were preempted mid-run.

    Once a request has decoded a few tokens (longer prompts are still in prefill then),
    every running request is preempted, as ``reset_prefix_cache(reset_running_requests=True)``
    does; each then re-prefills and replays its generated tokens. vLLM's preemption counter
    leaves these out (it counts the scheduler's own), so the running gauge just before is read.
    """
    engine = llm.llm_engine
    per_request = params if isinstance(params, list) else [params] * len(prompts)
    for i, (prompt, p) in enumerate(zip(prompts, per_request, strict=True)):
        p = p.clone()  # LLM.generate leaves FINAL_ONLY in params it ran; progress must be seen
        p.output_kind = RequestOutputKind.CUMULATIVE
        engine.add_request(f"preempt-{i}", {"prompt_token_ids": prompt}, p)
    done: dict[int, list[int]] = {}
    preempted = 0
    while engine.has_unfinished_requests():
        outputs = engine.step()
        for out in outputs:
            if out.finished:
                done[int(out.request_id.rsplit("-", 1)[1])] = list(out.outputs[0].token_ids)
        if not preempted and any(len(o.outputs[0].token_ids) >= 4 for o in outputs if not o.finished):
            preempted = int(read_metrics(llm, ("vllm:num_requests_running",))["vllm:num_requests_running"])
            assert llm.reset_prefix_cache(reset_running_requests=True)
    return [done[i] for i in range(len(prompts))], preempted
