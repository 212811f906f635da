"""Worker side: tell the metadata builders each row's K (see ``patches/README.md``).

Both model runners are covered: V1 (the CPU build; ``VLLM_USE_V2_MODEL_RUNNER=0`` on CUDA)
keeps every request's SamplingParams, so its hook reads them when the step's metadata is
built; V2 (the CUDA default) keeps none, so its hook remembers each request's K when the
request is added (resumed requests are re-added there) and forgets it when removed.
"""

from __future__ import annotations

from vllm.v1.worker.gpu.model_runner import GPUModelRunner as V2ModelRunner
from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from vllm_tova.attention.row_budgets import STEP
from vllm_tova.config import TovaConfig
from vllm_tova.patches.wrap import wrap
from vllm_tova.request_params import row_budget


def apply() -> None:
    wrap(
        GPUModelRunner,
        "_build_attention_metadata",
        "(self, num_tokens, num_reqs, max_query_len, num_tokens_padded=None, num_reqs_padded=None, "
        "ubatch_slices=None, logits_indices=None, use_spec_decode=False, for_cudagraph_capture=False, "
        "num_scheduled_tokens=None, cascade_attn_prefix_lens=None, slot_mappings=None)",
        _v1_build_attention_metadata,
    )
    wrap(V2ModelRunner, "add_requests", "(self, scheduler_output)", _v2_add_requests)
    wrap(V2ModelRunner, "_remove_request", "(self, req_id)", _v2_remove_request)
    wrap(V2ModelRunner, "prepare_attn", "(self, input_batch)", _v2_prepare_attn)
    wrap(V2ModelRunner, "prepare_dummy_attn", "(self, input_batch)", _v2_prepare_dummy_attn)


def _settings(runner) -> TovaConfig:
    settings = getattr(runner, "_tova_settings", None)
    if settings is None:
        settings = TovaConfig.from_additional_config(runner.vllm_config.additional_config)
        runner._tova_settings = settings
    return settings


def _budget(runner, sampling_params) -> int:
    extra = sampling_params.extra_args if sampling_params is not None else None
    return row_budget(extra, _settings(runner), runner.vllm_config.model_config.max_model_len)


def _v1_build_attention_metadata(original, self, num_tokens, num_reqs, *args, **kwargs):
    if _settings(self).enabled:
        req_ids = self.input_batch.req_ids[:num_reqs]
        STEP.set_rows([
            _budget(self, self.requests[r].sampling_params) if r in self.requests else _settings(self).budget
            for r in req_ids
        ])
    return original(self, num_tokens, num_reqs, *args, **kwargs)


def _v2_add_requests(original, self, scheduler_output) -> None:
    original(self, scheduler_output)
    if _settings(self).enabled:
        budgets = self.__dict__.setdefault("_tova_budgets", {})
        for new in scheduler_output.scheduled_new_reqs:
            budgets[new.req_id] = _budget(self, new.sampling_params)


def _v2_remove_request(original, self, req_id: str) -> bool:
    self.__dict__.get("_tova_budgets", {}).pop(req_id, None)
    return original(self, req_id)


def _v2_prepare_attn(original, self, input_batch):
    if _settings(self).enabled:
        budgets = self.__dict__.get("_tova_budgets", {})
        default = _settings(self).budget
        STEP.set_rows([budgets.get(r, default) for r in input_batch.req_ids])
    return original(self, input_batch)


def _v2_prepare_dummy_attn(original, self, input_batch):
    STEP.set_rows([])
    return original(self, input_batch)
