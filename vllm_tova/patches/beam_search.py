"""vLLM's beam search entry points, offline and online (see ``patches/README.md``)."""

from __future__ import annotations

from vllm.entrypoints.generate.beam_search.offline import BeamSearchOfflineMixin
from vllm.entrypoints.generate.beam_search.online import BeamSearchOnlineMixin

from vllm_tova.config import TovaConfig
from vllm_tova.patches.wrap import wrap
from vllm_tova.request_params import check_beam_search


def apply() -> None:
    wrap(
        BeamSearchOfflineMixin,
        "beam_search",
        "(self, prompts, params, lora_request=None, use_tqdm=False, concurrency_limit=None)",
        _offline_beam_search,
    )
    wrap(
        BeamSearchOnlineMixin,
        "beam_search",
        "(self, prompt, request_id, params, lora_request=None, trace_headers=None)",
        _online_beam_search,
    )


def _offline_beam_search(original, self, *args, **kwargs):
    check_beam_search(TovaConfig.from_additional_config(self.llm_engine.vllm_config.additional_config))
    return original(self, *args, **kwargs)


async def _online_beam_search(original, self, *args, **kwargs):
    # An async generator like the original: the error surfaces where the server iterates
    # it, the same place a refused request's ValueError does (answered with 400).
    check_beam_search(TovaConfig.from_additional_config(self.engine_client.vllm_config.additional_config))
    async for output in original(self, *args, **kwargs):
        yield output
