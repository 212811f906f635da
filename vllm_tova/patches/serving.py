"""``BaseServing._log_inputs`` of the OpenAI server (see ``patches/README.md``).

The engine checks a request's ``kv_*`` settings when the request is added, and for a
streamed response that happens only once the stream has begun: the client would get 200 and
an error event. The OpenAI handlers call ``_log_inputs`` right after building a request's
``SamplingParams`` and before creating its generator (completions and chat alike), so the
same check there turns a bad setting into a 400 for streamed requests too.
"""

from __future__ import annotations

from vllm.entrypoints.serve.engine.serving import BaseServing
from vllm.sampling_params import SamplingParams

from vllm_tova.patches.wrap import wrap
from vllm_tova.request_params import check_request


def apply() -> None:
    wrap(BaseServing, "_log_inputs", "(self, request_id, inputs, params, lora_request)", _log_inputs)


def _log_inputs(original, self: BaseServing, request_id, inputs, params, lora_request) -> None:
    engine_client = getattr(self, "engine_client", None)  # handlers that serve generation
    if isinstance(params, SamplingParams) and engine_client is not None:
        check_request(params.extra_args, engine_client.vllm_config)
    original(self, request_id, inputs, params, lora_request)
