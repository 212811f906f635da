"""Patch 6: vLLM's beam search entry points (see the index in ``__init__``)."""

from __future__ import annotations

import functools

from vllm.entrypoints.generate.beam_search.offline import BeamSearchOfflineMixin
from vllm.entrypoints.generate.beam_search.online import BeamSearchOnlineMixin

from vllm_tova.config import TovaConfig
from vllm_tova.request_params import check_beam_search

_OFFLINE = BeamSearchOfflineMixin.beam_search
_ONLINE = BeamSearchOnlineMixin.beam_search


def apply() -> None:
    if not getattr(BeamSearchOfflineMixin.beam_search, "_vllm_tova", False):
        BeamSearchOfflineMixin.beam_search = _offline_beam_search
    if not getattr(BeamSearchOnlineMixin.beam_search, "_vllm_tova", False):
        BeamSearchOnlineMixin.beam_search = _online_beam_search


@functools.wraps(_OFFLINE)
def _offline_beam_search(self, *args, **kwargs):
    check_beam_search(TovaConfig.from_additional_config(self.llm_engine.vllm_config.additional_config))
    return _OFFLINE(self, *args, **kwargs)


@functools.wraps(_ONLINE)
async def _online_beam_search(self, *args, **kwargs):
    # An async generator like the original: the error surfaces where the server iterates
    # it, the same place a refused request's ValueError does (answered with 400).
    check_beam_search(TovaConfig.from_additional_config(self.engine_client.vllm_config.additional_config))
    async for output in _ONLINE(self, *args, **kwargs):
        yield output


_offline_beam_search._vllm_tova = True  # type: ignore[attr-defined]
_online_beam_search._vllm_tova = True  # type: ignore[attr-defined]
