"""``InputProcessor._validate_params`` (see ``patches/README.md``)."""

from __future__ import annotations

from vllm.sampling_params import SamplingParams
from vllm.v1.engine.input_processor import InputProcessor

from vllm_tova.patches.wrap import wrap
from vllm_tova.request_params import check_request


def apply() -> None:
    wrap(InputProcessor, "_validate_params", "(self, params, supported_tasks)", _validate_params)


def _validate_params(original, self: InputProcessor, params, supported_tasks) -> None:
    original(self, params, supported_tasks)
    if isinstance(params, SamplingParams):
        check_request(params.extra_args, self.vllm_config)
