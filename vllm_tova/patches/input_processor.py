"""Patch 4: ``InputProcessor._validate_params`` (see the index in ``__init__``)."""

from __future__ import annotations

import functools

from vllm.sampling_params import SamplingParams
from vllm.v1.engine.input_processor import InputProcessor

from vllm_tova.config import TovaConfig
from vllm_tova.request_params import check_extra_args

_ORIGINAL = InputProcessor._validate_params


def apply() -> None:
    if not getattr(InputProcessor._validate_params, "_vllm_tova", False):
        InputProcessor._validate_params = _validate_params


@functools.wraps(_ORIGINAL)
def _validate_params(self: InputProcessor, params, supported_tasks) -> None:
    _ORIGINAL(self, params, supported_tasks)
    if isinstance(params, SamplingParams):
        settings = TovaConfig.from_additional_config(self.vllm_config.additional_config)
        check_extra_args(params.extra_args, settings)


_validate_params._vllm_tova = True  # type: ignore[attr-defined]
